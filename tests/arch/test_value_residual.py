"""Value residual (and SVFormer, its shared-value form): budgets, SVFormer ignoring later layers'
value projections, composition with VA but not with LIMe, and the switches it refuses.
``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, H, L, V, assert_causal, tiny_gpt

from lit_vattn.arch import Composed, LIMe, ValueResidual, Vanilla, VerticalAttention

SETTINGS = {
    "value-residual-static": lambda: ValueResidual(mix="static"),
    "value-residual-token": lambda: ValueResidual(mix="token"),
    "svformer": lambda: ValueResidual(share=True),
    "value-residual-token-block-norm": lambda: ValueResidual(mix="token", gate_input="block_norm"),
}


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    extra = {n: tiny_gpt(make).num_params() - base.num_params() for n, make in SETTINGS.items()}
    assert tiny_gpt(ValueResidual).num_params() == base.num_params() and extra["svformer"] == 0
    assert extra["value-residual-static"] == (L - 1) * H
    assert extra["value-residual-token"] == (L - 1) * (D * H + H)
    for make in (ValueResidual, SETTINGS["svformer"]):
        assert tiny_gpt(make).flops_per_token(T) == base.flops_per_token(T)  # weighted sums only: no matmul
    assert tiny_gpt(SETTINGS["value-residual-token"]).flops_per_token(T) > base.flops_per_token(T)


def test_svformer_is_not_vanilla_at_init_and_its_later_layers_ignore_their_own_value_projection():
    x = torch.randint(0, V, (2, 16))
    net = tiny_gpt(SETTINGS["svformer"])
    ref = net(x)
    assert not torch.allclose(ref, tiny_gpt(Vanilla)(x), atol=1e-3)
    with torch.no_grad():
        net.blocks[2].attn.qkv.weight[2 * D :].normal_()  # layer 2's V rows
    torch.testing.assert_close(net(x), ref)
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight[2 * D :].normal_()  # layer 0's V rows feed every layer
    assert not torch.allclose(net(x), ref)


def test_composes_with_vertical_attention_and_not_with_lime():
    net = tiny_gpt(lambda: [VerticalAttention(), ValueResidual(mix="static")])
    assert isinstance(net.arch, Composed)
    assert_causal(net, V)
    with pytest.raises(ValueError, match="LIMe and ValueResidual both override the 'qkv' hook"):
        tiny_gpt(lambda: [LIMe(), ValueResidual()])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ValueResidual(lam=1.5), r"ValueResidual.lam=1.5 must lie strictly between 0 and 1"),
        (lambda: ValueResidual(share=True, mix="static"), "SVFormer"),
        (lambda: ValueResidual(gate_input="block_norm"), "gate_input=block_norm is the token gate's input"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt(make)


def test_block_norm_token_gate_equals_x_transformers_mixing_with_gradients():
    """Parity with x-transformers 2.31.10 (the ``parity`` extra): its ``Attention.to_value_residual_mix``
    (Linear, sigmoid) on the attention's normalised input, applied as ``v1.lerp(v, mix)``. Weight
    mapping: our to_gate[l-1] = minus its Linear (weight and bias), since our lambda weighs v1."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    from lit_vattn.model.memory import DepthMemory

    net = tiny_gpt(SETTINGS["value-residual-token-block-norm"])
    arch, H = net.arch, net.cfg.n_head
    gen = torch.Generator().manual_seed(14)
    for l in range(1, L):
        ref = xt.Attention(D, heads=H, causal=True, learned_value_residual_mix=True)
        lin = ref.to_value_residual_mix[0]
        with torch.no_grad():
            arch.to_gate[l - 1].weight.copy_(-lin.weight)
            arch.to_gate[l - 1].bias.copy_(-lin.bias)
        xn = torch.randn(2, 5, D, generator=gen)
        v1 = torch.randn(2, H, 5, D // H, generator=gen, requires_grad=True)
        v = torch.randn(2, H, 5, D // H, generator=gen, requires_grad=True)
        want = v1.lerp(v, ref.to_value_residual_mix(xn))
        mem = DepthMemory(x0=xn, normed=[{} for _ in range(l)] + [{"attn": xn}])
        arch.slot(mem)["v1"] = v1
        got = arch.qkv(l, v, v, v, mem)[2]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        w = torch.randn(got.shape, generator=gen)
        (want * w).sum().backward()
        grads = v1.grad.clone(), v.grad.clone()
        v1.grad = v.grad = None
        (got * w).sum().backward()
        torch.testing.assert_close((v1.grad, v.grad), grads, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(arch.to_gate[l - 1].weight.grad, -lin.weight.grad, atol=1e-5, rtol=1e-5)
        arch.zero_grad()
