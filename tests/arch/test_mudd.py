"""MUDDFormer: exactly vanilla at init with the V and R streams, and its budget. ``SETTINGS``: the
switch settings the shared contract checks too."""

import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import MUDDFormer, Vanilla

SETTINGS = {"mudd-vr": lambda: MUDDFormer(streams="vr")}


def _mudd_params(streams=4, expand_last=True):
    total = 0
    for i in range(L):
        C, n = (1 if i == L - 1 else streams), i + 2
        hid = C * n * (4 if i == L - 1 and expand_last else 1)
        hid = (hid // 64 + 1) * 64
        total += D * hid + hid * C * n + C * n
    return total


def test_value_and_residual_streams_only_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["mudd-vr"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(MUDDFormer).num_params() - base.num_params() == _mudd_params(4)
    assert tiny_gpt(SETTINGS["mudd-vr"]).num_params() - base.num_params() == _mudd_params(2)
    assert tiny_gpt(MUDDFormer).flops_per_token(T) > base.flops_per_token(T)
