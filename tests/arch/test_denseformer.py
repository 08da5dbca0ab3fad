"""DenseFormer: exactly vanilla at init with dilation, the reference's dilation groups, its budget,
and the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import L, V, tiny_gpt

from lit_vattn.arch import DenseFormer, Vanilla

SETTINGS = {"denseformer-k2-p2": lambda: DenseFormer(dilation=2, period=2)}


def test_dilated_and_periodic_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["denseformer-k2-p2"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_dilation_groups_follow_the_reference():
    df = tiny_gpt(SETTINGS["denseformer-k2-p2"]).arch
    assert df.averaged == [2, 4]  # period 2: after blocks 2 and 4 (1-based)
    assert df.group(3) == [1, 3] and df.group(4) == [0, 2, 4]
    assert tiny_gpt(DenseFormer).arch.group(3) == [0, 1, 2, 3]


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(DenseFormer).num_params() - base.num_params() == L * (L + 3) // 2  # sum_i (i + 1) scalars
    # after block 2: X0, X2; after block 4: X0, X2, X4
    assert tiny_gpt(SETTINGS["denseformer-k2-p2"]).num_params() - base.num_params() == 2 + 3
    assert tiny_gpt(DenseFormer).flops_per_token(T) == base.flops_per_token(T)  # weighted sums only: no matmul


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"DenseFormer.dilation=0 and period=1 must be >= 1"):
        tiny_gpt(lambda: DenseFormer(dilation=0))
