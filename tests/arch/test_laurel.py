"""LAuReL: exactly vanilla at init in its low-rank and previous-activation forms, its budget and
FLOPs, and the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import LAuReL, Vanilla

SETTINGS = {
    "laurel-rw-lr-pa": lambda: LAuReL(previous=2),
    "laurel-lr-only": lambda: LAuReL(weights=False, rank=8),
    "laurel-gemma3n": lambda: LAuReL(weights=False, rank=8, form="gemma3n"),
}


@pytest.mark.parametrize("name", [n for n in SETTINGS if n != "laurel-gemma3n"])
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
        (lambda: LAuReL(form="gemma3n"), r"form=gemma3n is the low-rank path alone: set weights: false"),
        (lambda: LAuReL(form="gemma"), r"LAuReL.form='gemma': choose 'paper' or 'gemma3n'"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt(make)


def test_gemma3n_form_equals_transformers_laurel_block_and_its_merge():
    """Parity with Gemma 3n's production code (``transformers``' ``Gemma3nTextLaurelBlock``), weights
    mapped A[l] -> linear_left.weight, B[l] -> linear_right.weight, gain[l] -> post_laurel_norm.weight;
    the merge is its decoder layer's ``(attn_gated + laurel_output) / sqrt(2)`` with attn_gated = x + a
    (Gemma's own post-attention norm is not part of LAuReL). Gradients through both agree too."""
    g3n = pytest.importorskip("transformers.models.gemma3n.modeling_gemma3n")
    from transformers.models.gemma3n.configuration_gemma3n import Gemma3nTextConfig

    from lit_vattn.model.memory import DepthMemory

    net = tiny_gpt(SETTINGS["laurel-gemma3n"])
    arch = net.arch
    cfg = Gemma3nTextConfig(hidden_size=D, laurel_rank=8, rms_norm_eps=arch.cfg.norm_eps)
    gen = torch.Generator().manual_seed(12)
    for l in range(L):
        ref = g3n.Gemma3nTextLaurelBlock(cfg)
        with torch.no_grad():
            arch.gain[l].add_(0.1 * torch.randn(D, generator=gen))
            ref.linear_left.weight.copy_(arch.A[l])
            ref.linear_right.weight.copy_(arch.B[l])
            ref.post_laurel_norm.weight.copy_(arch.gain[l])
        x, a = torch.randn(2, 5, D, generator=gen), torch.randn(2, 5, D, generator=gen)
        xn = torch.randn(2, 5, D, generator=gen, requires_grad=True)
        want = (x + a + ref(xn)) / 2**0.5
        mem = DepthMemory(x0=x, normed=[{} for _ in range(l)] + [{"attn": xn}])
        got = arch.update(l, "attn", x, a, mem)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        w = torch.randn(got.shape, generator=gen)
        (want * w).sum().backward()
        (got * w).sum().backward()
        torch.testing.assert_close(arch.A.grad[l], ref.linear_left.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.B.grad[l], ref.linear_right.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.gain.grad[l], ref.post_laurel_norm.weight.grad, atol=1e-4, rtol=1e-4)
        arch.zero_grad()
    # the MLP's residual is the plain one
    y = torch.randn(2, 5, D)
    torch.testing.assert_close(arch.update(0, "mlp", y, y, None), 2 * y)
