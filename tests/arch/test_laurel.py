"""LAuReL: exactly vanilla at init in its low-rank and previous-activation forms, its budget and
FLOPs, and the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import LAuReL, Vanilla

SETTINGS = {
    "laurel-rw-lr-pa": lambda: LAuReL(previous=2),
    "laurel-lr-only": lambda: LAuReL(weights=False, rank=8),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_exactly_vanilla_at_init(name):
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS[name])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    extra = tiny_gpt(LAuReL).num_params() - base.num_params()
    assert extra == 2 * L * (2 + 2 * 16 * D)
    assert tiny_gpt(SETTINGS["laurel-rw-lr-pa"]).num_params() - base.num_params() == extra + 2 * L * 2
    # the low-rank maps: 2 matmuls of D x r per sub-layer, 6 FLOPs per multiply-add in training
    assert tiny_gpt(LAuReL).flops_per_token(T) - base.flops_per_token(T) == 2 * L * 6 * 2 * D * 16


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LAuReL(weights=False, rank=0), "is the vanilla decoder"),
        (lambda: LAuReL(rank=65), r"LAuReL.rank=65 must lie in \[0, d_model=64\]"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt(make)
