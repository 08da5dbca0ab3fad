"""DeepCrossAttention: exactly vanilla at init with k=1, k covering every output is full DCA, its
budget, and the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import DeepCrossAttention, Vanilla
from lit_vattn.model.memory import DepthMemory

SETTINGS = {
    "dca-k1": lambda: DeepCrossAttention(k=1),
    "dca-dimwise": lambda: DeepCrossAttention(grn="dimwise"),
}


def test_k1_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["dca-k1"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_dimwise_starts_near_vanilla_and_its_projection_learns():
    """W ~ N(0, 1e-2) as in the port: near the residual sum at init, and W gets a gradient (a zero W
    would sit at the ReLU's kink)."""
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    net = tiny_gpt(SETTINGS["dca-dimwise"])
    torch.testing.assert_close(net(x), tiny_gpt(Vanilla)(x), atol=0.2, rtol=0)
    net(x, targets=x).backward()
    assert all(W.grad.abs().sum() > 0 for W in net.arch.proj)


def test_dimwise_grn_equals_lucidrains_port_with_gradients():
    """Parity with ``deep-cross-attention`` 0.1.1 (lucidrains; the ``parity`` extra): its ``GRN`` over
    the stacked sources, weights mapped proj[l] -> to_aggregate[1].weight.T and bias[l] (S, O, D) ->
    bias (O, S, D); its RMSNorm's learned gain stays at its init (ones: ours has none) and its eps is
    float32's machine eps, which the model's norm_eps is set to here."""
    port = pytest.importorskip("deep_cross_attention.dca_gpt")
    net = tiny_gpt(SETTINGS["dca-dimwise"], norm_eps=torch.finfo(torch.float32).eps)
    arch = net.arch
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in arch.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    for l in range(L + 1):
        S, O = arch.bias[l].shape[:2]
        ref = port.GRN(D, num_layers=S, num_outputs=O)
        with torch.no_grad():
            ref.to_aggregate[1].weight.copy_(arch.proj[l].T)
            ref.bias.copy_(arch.bias[l].transpose(0, 1))
        ys = torch.randn(S, 2, 5, D, generator=gen, requires_grad=True)
        want = ref(ys)
        want = want.unsqueeze(0) if O == 1 else want  # (O, B, T, D)
        ys2 = ys.detach().clone().requires_grad_()
        mem = DepthMemory(x0=ys2[0])
        arch.slot(mem)["ys"] = list(ys2.unbind(0))
        got = torch.stack(arch._grn(l, mem))  # (O, B, T, D)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        w = torch.randn(got.shape, generator=gen)
        (want * w).sum().backward()
        (got * w).sum().backward()
        torch.testing.assert_close(ys2.grad, ys.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.proj[l].grad, ref.to_aggregate[1].weight.grad.T, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.bias[l].grad, ref.bias.grad.transpose(0, 1), atol=1e-4, rtol=1e-4)
        arch.zero_grad()


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
