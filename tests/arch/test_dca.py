"""DeepCrossAttention: exactly vanilla at init with k=1, k covering every output is full DCA, its
budget, and the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import DeepCrossAttention, Vanilla

SETTINGS = {"dca-k1": lambda: DeepCrossAttention(k=1)}


def test_k1_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["dca-k1"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_k_covering_every_output_is_full_dca():
    x = torch.randint(0, V, (2, 16))
    net_k = tiny_gpt(lambda: DeepCrossAttention(k=L))
    assert net_k.num_params() == tiny_gpt(DeepCrossAttention).num_params()
    torch.testing.assert_close(net_k(x), tiny_gpt(DeepCrossAttention)(x))


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    extra = tiny_gpt(DeepCrossAttention).num_params() - base.num_params()
    assert extra == sum(3 * D + 3 * (l + 1) for l in range(L)) + D + (L + 1)
    assert tiny_gpt(DeepCrossAttention).flops_per_token(T) > base.flops_per_token(T)


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"DeepCrossAttention.k=0 must be >= 1"):
        tiny_gpt(lambda: DeepCrossAttention(k=0))
