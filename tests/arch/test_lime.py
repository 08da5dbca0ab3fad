"""LIMe: exactly vanilla at init without noise, why it may mix post-RoPE keys, its budget, and its
routers' own parameter group. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
import torch.nn.functional as F
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


def _reference_routed_kv(hidden: list, kv_weights: list, routers: list, H: int, cos, sin):
    """corl-team/lime ``src/lm/lime.py`` at 424281209236fc4e461d3e32160df26245f6ba4c, transcribed: the
    part of ``LIMeAttention.forward`` that makes the K/V a layer attends (its own ``kv_proj_weight``
    applied to the normalised input, the ``kv_buffer`` of every layer's heads, ``StaticRouter.forward``
    or ``FirstLayerRouter``, the split into K and V, ``apply_rotary_pos_emb`` on K). The package is
    not on PyPI and builds on transformers' Llama internals, so the arithmetic is copied, not imported;
    einops' ``(bt) (kv h) -> h (bt kv)`` is spelled with view/permute."""
    out, buffer = [], None
    for layer, (x, w) in enumerate(zip(hidden, kv_weights)):
        B, T, D = x.shape
        Hd = D // H
        cur = torch.mm(x.reshape(-1, D), w.t())  # (B T) (2 Hd H)
        cur = cur.view(B * T, 2 * Hd, H).permute(2, 0, 1).reshape(H, B * T * 2 * Hd)  # h (bt kv)
        buffer = cur if buffer is None else torch.cat([buffer, cur], dim=0)
        kv = buffer[:H] if layer == 0 else routers[layer - 1].mm(buffer)  # FirstLayerRouter / StaticRouter
        kv = kv.view(H, B, T, 2 * Hd).permute(1, 0, 2, 3)
        k, v = kv[..., :Hd], kv[..., Hd:]
        c, s = torch.cat([cos, cos], -1)[:T], torch.cat([sin, sin], -1)[:T]  # transformers' (T, Hd) tables
        out.append((k * c + _rotate_half(k) * s, v))
    return out


def _rotate_half(t):
    """transformers' ``rotate_half`` (what its ``apply_rotary_pos_emb`` uses)."""
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def _reference_kv_weight(qkv_weight, D: int, H: int):
    """Our fused (3D, D) qkv weight's K and V rows in the reference's ``kv_proj_weight`` layout:
    output feature j * H + h is dimension j of head h's [K | V] (2 Hd of them)."""
    Hd = D // H
    k = qkv_weight[D : 2 * D].view(H, Hd, D)
    v = qkv_weight[2 * D :].view(H, Hd, D)
    return torch.cat([k, v], dim=1).permute(1, 0, 2).reshape(2 * Hd * H, D)  # (kv h) rows


def test_routed_keys_and_values_equal_the_reference_code_with_gradients():
    """Every layer's attended K/V equal the reference implementation's from the same normalised
    inputs, K/V weights and routers (perturbed away from the init, as after training), and so do the
    gradients of the routers and of the K/V weights; float64 (K and the gradients to float32: our
    RoPE rotates in float32)."""
    from lit_vattn.model.memory import DepthMemory

    net = tiny_gpt(LIMe).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for R in net.arch.routers:
            R.add_(0.3 * torch.randn(R.shape, generator=g, dtype=R.dtype))
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, mem = net.hidden_states(x, return_memory=True)
    hidden = [mem.normed[l]["attn"] for l in range(net.cfg.n_layer)]  # what each layer's K/V read, (B, T, D)
    D, Hn = net.cfg.d_model, net.cfg.n_head

    def ours():  # the decoder's own-K/V step, then the reader's qkv hook, layer by layer
        m = DepthMemory(x0=mem.x0, rope=mem.rope)
        out = []
        for l, (h, b) in enumerate(zip(hidden, net.blocks)):
            _, k, v = F.linear(h, b.attn.qkv.weight).chunk(3, dim=-1)
            k, v = apply_rope(b.attn.split_heads(k), *mem.rope), b.attn.split_heads(v)
            out.append(net.arch.qkv(l, None, k, v, m)[1:])
        return out

    def reference():
        weights = [_reference_kv_weight(b.attn.qkv.weight, D, Hn) for b in net.blocks]
        return _reference_routed_kv(hidden, weights, list(net.arch.routers), Hn, *mem.rope)

    a, b = ours(), reference()
    for (k, v), (rk, rv) in zip(a, b):
        torch.testing.assert_close(v, rv, atol=1e-10, rtol=1e-10)
        # K only to float32: the decoder's RoPE rotates in float32 whatever the dtype (bf16-safe)
        torch.testing.assert_close(k, rk, atol=1e-6, rtol=1e-6)
    params = [*net.arch.routers, *(blk.attn.qkv.weight for blk in net.blocks)]
    wts = [(torch.randn_like(k), torch.randn_like(v)) for k, v in a]

    def grads(kvs):
        total = sum((k * wk).sum() + (v * wv).sum() for (k, v), (wk, wv) in zip(kvs, wts))
        return torch.autograd.grad(total, params)

    for ga, gb in zip(grads(ours()), grads(reference())):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)
