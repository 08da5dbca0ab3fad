"""LIMe: exactly vanilla at init without noise, why it may mix post-RoPE keys, its budget, and its
routers' own parameter group. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import CFG, H, L, V, tiny_gpt

from lit_vattn import GPTConfig
from lit_vattn.arch import LIMe, Vanilla
from lit_vattn.model.rope import apply_rope, rope_table

SETTINGS = {"lime-no-noise": lambda: LIMe(init_noise=False)}


def test_without_init_noise_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["lime-no-noise"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_mixing_rotated_keys_equals_rotating_mixed_keys():
    """Why LIMe may mix post-RoPE keys: RoPE rotates every head at a position by the same angle."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 6, 10, 16, generator=g)  # (B, heads of two layers, T, d)
    R = torch.randn(3, 6, generator=g)
    cos, sin = rope_table(10, 16, 10000.0)
    mix = lambda t: torch.einsum("hj,bjtd->bhtd", R, t)  # noqa: E731
    torch.testing.assert_close(mix(apply_rope(k, cos, sin)), apply_rope(mix(k), cos, sin), atol=1e-5, rtol=1e-5)


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(LIMe).num_params() - base.num_params() == sum(H * (l + 1) * H for l in range(1, L))
    assert tiny_gpt(LIMe).flops_per_token(T) > base.flops_per_token(T)


def test_router_parameters_get_their_own_group():
    from lit_vattn.train.module import LanguageModel

    lm = LanguageModel(config=GPTConfig(**CFG), arch=LIMe(), vocab_size=V, lr=1e-3, mix_lr_mult=2.0)
    routers = {id(p) for p in lm.net.arch.parameters()}
    (g,) = [g for g in lm.param_groups() if {id(p) for p in g["params"]} == routers]
    assert g["lr"] == pytest.approx(1e-3 * 2.0 * 10.0) and g["weight_decay"] == 0.0
