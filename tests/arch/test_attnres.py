"""Attention Residuals: uniform weights at init, block size one is the full form, its budget, and
the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import AttentionResiduals, Vanilla

SETTINGS = {"attnres-block": lambda: AttentionResiduals(block_size=2)}


def test_start_uniform_and_block_size_one_is_full():
    net = tiny_gpt(AttentionResiduals)
    net.arch.record_maps = True
    x = torch.randint(0, V, (2, 16))
    full = net(x)
    w = net.arch.depth_map()["weights"].values
    for k in range(2 * L + 1):  # sub-layer k reads x0 and the k outputs before it, uniformly
        torch.testing.assert_close(w[k, : k + 1], torch.full((k + 1,), 1.0 / (k + 1)))
        assert w[k, k + 1 :].abs().sum() == 0
    torch.testing.assert_close(tiny_gpt(lambda: AttentionResiduals(block_size=1))(x), full)


def test_block_form_is_not_vanilla_at_init():
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(tiny_gpt(SETTINGS["attnres-block"])(x), tiny_gpt(Vanilla)(x), atol=1e-3)


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    for make in (AttentionResiduals, SETTINGS["attnres-block"]):
        assert tiny_gpt(make).num_params() - base.num_params() == 2 * D * (2 * L + 1)
    assert tiny_gpt(AttentionResiduals).flops_per_token(T) > base.flops_per_token(T)


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"AttentionResiduals.block_size=0 must be >= 1"):
        tiny_gpt(lambda: AttentionResiduals(block_size=0))
