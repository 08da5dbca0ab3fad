"""MUDDFormer: equal to the authors' forward, exactly vanilla at init with the V and R streams, and
its budget. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import MUDDFormer, Vanilla
from lit_vattn.model.memory import DepthMemory

SETTINGS = {"mudd-vr": lambda: MUDDFormer(streams="vr"), "mudd-sepln": lambda: MUDDFormer(sepln=True)}


def _mudd_params(streams=4, expand_last=True, sepln=False):
    total = 2 * D * (L - 1) if sepln else 0  # the K and V inputs' own norm gains
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
    assert tiny_gpt(SETTINGS["mudd-sepln"]).num_params() - base.num_params() == _mudd_params(4, sepln=True)
    assert tiny_gpt(MUDDFormer).flops_per_token(T) > base.flops_per_token(T)


def _rms_noscale(x, eps):
    """The reference's ``RMSnormNoscale``."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def _reference_forward(net, idx, sepln: bool):
    """Caiyun-AI/MUDDFormer ``pytorch/muddformer/modeling_muddformer.py`` at
    fc067b2 (``MUDDFormer.forward``, ``TransformerBlock.forward``, ``MultiwayDynamicDenseBlock``),
    transcribed with ``dense_type="qkvr"``, ``dynamic_dense=dense=True``: the package is not on PyPI
    and its model class needs its own checkpoint layout, so the arithmetic is copied, not imported
    (einops' ``B T (C L) -> C B T L`` is ``unflatten``). Its attention and MLP are replaced by our
    block's (the depth connection is what is compared; the reference's QK-norm and per-layer MLP
    widths belong to its base model). Weights mapped: ``dynamic_dense[i].w1/w2`` = ``w1[i]/w2[i]``,
    ``dense_bs[i]`` = ``bias[i]``, ``attention_norms`` = (block ``norm1``, ``norms[l-1]["k"]``,
    ``norms[l-1]["v"]``) with ``sepln``, else ``attention_norm`` = ``norm1`` applied to the stacked
    mixtures (its ``stack_hidden`` path)."""
    arch, eps = net.arch, net.cfg.norm_eps
    T = idx.shape[1]
    rope = (net.rope_cos[:T], net.rope_sin[:T])
    x = net.embed(idx)
    hiddens = [x]
    for i, block in enumerate(net.blocks):
        mem = DepthMemory(x0=hiddens[0])
        if i == 0:
            res = x
            xq = xk = xv = block.norm1(x)
        else:
            res = x[-1]
            if sepln:
                norms = (block.norm1, arch.norms[i - 1]["k"], arch.norms[i - 1]["v"])
                xq, xk, xv = (n(t) for n, t in zip(norms, x[:3]))
            else:
                xq, xk, xv = block.norm1(torch.stack(x[:3]))
        attn_out = block.attn(xq, xk, xv, i, rope, Vanilla().bind(net.cfg), mem)
        h = res + attn_out
        x = h + block.mlp(block.norm2(h))
        hiddens.append(x)
        C = arch.bias[i].shape[0]
        dw = arch.w2[i](torch.nn.functional.gelu(arch.w1[i](_rms_noscale(x, eps))))  # B T (C L)
        dw = dw.unflatten(-1, (C, i + 2)).permute(2, 0, 1, 3)  # C B T L
        dw = dw + arch.bias[i][:, None, None, :]
        x = tuple(sum(dw[c, :, :, j, None] * hiddens[j] for j in range(i + 2)) for c in range(C))
    x = x[0]
    return net.head(net.norm(x))[..., : net.vocab_size]


@pytest.mark.parametrize("sepln", [False, True])
def test_equals_the_authors_forward_with_gradients(sepln):
    """Logits and the gradients of every dense-connection weight and norm gain equal the reference's
    (float64), with every weight moved off its init so that each stream reads every state."""
    net = tiny_gpt(lambda: MUDDFormer(sepln=sepln)).double()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    idx = torch.randint(0, V, (2, 12), generator=gen)
    w = torch.randn(2, 12, V, generator=gen, dtype=torch.float64)
    params = list(net.arch.parameters()) + [b.norm1.weight for b in net.blocks]
    got = net(idx)
    g_got = torch.autograd.grad((got * w).sum(), params)
    want = _reference_forward(net, idx, sepln)
    g_want = torch.autograd.grad((want * w).sum(), params)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
