"""mHC against the authors' released code (DeepSeek-V4's hyper-connection modules in ``transformers``):
the same weights give the same mixing weights, branch input, stream update, readout and gradients;
its stream mixing is doubly stochastic; the switches it refuses. ``SETTINGS``: the switch settings
the shared contract checks too."""

import pytest
import torch
from helpers import D, L, tiny_gpt

from lit_vattn.arch import ManifoldHyperConnections
from lit_vattn.arch.mhc import sinkhorn
from lit_vattn.model.memory import DepthMemory

SETTINGS = {"mhc-n2-sum-readout": lambda: ManifoldHyperConnections(n=2, readout="sum")}

dsv4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")


def _reference(n: int, eps: float, norm_eps: float):
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config

    cfg = DeepseekV4Config(hidden_size=D, hc_mult=n, hc_sinkhorn_iters=20, hc_eps=eps, rms_norm_eps=norm_eps)
    return dsv4.DeepseekV4HyperConnection(cfg), dsv4.DeepseekV4HyperHead(cfg)


def _trained_like(net):
    """Weights away from the init, so that every term of the formulas is live."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for p in net.arch.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return net


def test_each_sub_layer_equals_the_released_module_with_gradients():
    """Weight mapping: our ``fn[k]``, ``base[k]``, ``scale[k]`` are the release's ``fn``, ``base``,
    ``scale`` of sub-layer k (k = 2 l + [mlp]); the head's ``head_fn``, ``head_base``, ``head_scale``
    are its ``hc_fn``, ``hc_base``, ``hc_scale``. The stream update is the release's decoder-layer line
    ``post.unsqueeze(-1) * out.unsqueeze(-2) + comb.transpose(-1, -2) @ hidden``."""
    net = _trained_like(tiny_gpt(ManifoldHyperConnections))
    arch = net.arch
    ref, head = _reference(arch.n, arch.eps, arch.cfg.norm_eps)
    g = torch.Generator().manual_seed(8)
    for k in range(2 * L):
        with torch.no_grad():
            ref.fn.copy_(arch.fn[k])
            ref.base.copy_(arch.base[k])
            ref.scale.copy_(arch.scale[k])
        H = torch.randn(2, 5, arch.n, D, generator=g, requires_grad=True)
        out = torch.randn(2, 5, D, generator=g)
        post, comb, collapsed = ref(H)
        ref_new = post.unsqueeze(-1) * out.unsqueeze(-2) + comb.transpose(-1, -2) @ H

        H2 = H.detach().clone().requires_grad_()
        ours_in, ours_new = _ours(arch, k, H2, out)
        torch.testing.assert_close(ours_in, collapsed, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_new, ref_new, atol=1e-5, rtol=1e-5)

        w = torch.randn(ref_new.shape, generator=g)
        (ref_new * w).sum().add((collapsed * w[..., 0, :]).sum()).backward()
        (ours_new * w).sum().add((ours_in * w[..., 0, :]).sum()).backward()
        torch.testing.assert_close(H2.grad, H.grad, atol=1e-4, rtol=1e-4)
        for ours_p, ref_p in ((arch.fn, ref.fn), (arch.base, ref.base), (arch.scale, ref.scale)):
            torch.testing.assert_close(ours_p.grad[k], ref_p.grad, atol=1e-4, rtol=1e-4)
            ref_p.grad = None
        arch.zero_grad()

    with torch.no_grad():
        head.hc_fn.copy_(arch.head_fn)
        head.hc_base.copy_(arch.head_base)
        head.hc_scale.copy_(arch.head_scale)
    H = torch.randn(2, 5, arch.n, D, generator=g)
    torch.testing.assert_close(arch.readout(H, None), head(H), atol=1e-5, rtol=1e-5)


def _ours(arch, k, H, out):
    """Sub-layer k's branch input and stream update, through the reader's hooks."""
    mem = DepthMemory(H[..., 0, :])
    l, s = divmod(k, 2)
    sub = ("attn", "mlp")[s]
    x = arch.inputs(l, sub, H, mem)
    return x, arch.update(l, sub, H, out, mem)


def test_the_stream_mixing_is_doubly_stochastic_in_every_sub_layer():
    """Columns sum to 1 exactly (Sinkhorn ends on them) and rows to within the finite iterations' gap,
    which more iterations close; the branch weights are positive and the output gains in (0, 2)."""
    net = tiny_gpt(ManifoldHyperConnections)
    H = torch.randn(3, 7, net.arch.n, D, generator=torch.Generator().manual_seed(9))
    for k in range(2 * L):
        pre, post, res = net.arch.connections(k, H)
        ones = torch.ones(res.shape[:-1])
        torch.testing.assert_close(res.sum(-2), ones, atol=1e-5, rtol=0)
        torch.testing.assert_close(res.sum(-1), ones, atol=1e-4, rtol=0)
        assert (res > 0).all() and (pre > 0).all() and (post > 0).all() and (post < 2).all()
    # logits spread over +-10: the row gap left by 20 iterations shrinks with more
    logits = 10 * torch.randn(50, 4, 4, generator=torch.Generator().manual_seed(1))
    gap = {t: (sinkhorn(logits, t, 1e-6).sum(-1) - 1).abs().max().item() for t in (5, 20, 200)}
    torch.testing.assert_close(sinkhorn(logits, 20, 1e-6).sum(-2), torch.ones(50, 4), atol=1e-5, rtol=0)
    assert gap[200] < gap[20] / 10 < gap[5] / 10, gap


def test_budget_against_hyper_connections():
    from lit_vattn.arch import HyperConnections, Vanilla

    base, n = tiny_gpt(Vanilla).num_params(), 4
    extra = tiny_gpt(ManifoldHyperConnections).num_params() - base
    assert extra == 2 * L * ((2 + n) * n * (n * D + 1) + 3) + n * (n * D + 1) + 1
    assert tiny_gpt(ManifoldHyperConnections).flops_per_token(32) > tiny_gpt(HyperConnections).flops_per_token(32)
    assert tiny_gpt(SETTINGS["mhc-n2-sum-readout"]).num_params() - base == 2 * L * ((2 + 2) * 2 * (2 * D + 1) + 3)


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"ManifoldHyperConnections.n=0 must be >= 1"):
        tiny_gpt(lambda: ManifoldHyperConnections(n=0))
    with pytest.raises(ValueError, match=r"sinkhorn_iters=0 must be >= 1"):
        tiny_gpt(lambda: ManifoldHyperConnections(sinkhorn_iters=0))
    with pytest.raises(ValueError, match=r"readout='mean': choose 'head' or 'sum'"):
        tiny_gpt(lambda: ManifoldHyperConnections(readout="mean"))
