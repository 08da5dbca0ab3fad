"""Attention kernels: the plain causal case and attention over keys concatenated from several sources.

Several architectures attend over keys/values gathered from more than one layer (SLA's concat mode,
LAS's final layer). Every source holds the same T token positions, so the keys are laid out as m
blocks of T and the only correct mask is block-causal: key ``kv`` is visible to query ``q`` iff
``kv % T <= q``. Neither built-in causal flag gives that: SDPA's ``is_causal`` is top-left aligned
(query t sees only the first block's prefix) and FlashAttention's is bottom-right aligned (query t
sees the future of every earlier block).

Backends (``backend`` argument):
- ``"oracle"``: explicit boolean mask, float32, SDPA math kernel. Slow; the reference every fast
  path is tested against, forward and backward.
- ``"sdpa"``: explicit boolean mask in the input dtype through SDPA (CPU default; memory-efficient
  kernel on CUDA).
- ``"flex"``: FlexAttention with a BlockMask built once per (T, m, device) and cached; compiled on
  CUDA (the default there), eager on CPU (used by the equivalence tests).
- ``"merge"``: every source is a plain causal attention (all sources hold the same positions), so
  one flash call per source gives an output and its log-sum-exp, and the outputs are merged with
  weights exp(lse_i - lse). The backward runs the flash backward once per source with the *merged*
  output and log-sum-exp, which yields exactly the gradients of the concatenated softmax (the trick
  ring attention uses), so nothing per source is kept for backward. CUDA needs fp16/bf16 inputs
  (the flash kernel); on the CPU it uses PyTorch's CPU flash kernel.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "oracle", "sdpa", "flex", "merge")
# torch 2.11 traced the merge's autograd.Function on CPU tensors (aot_eager) into wrong gradients;
# 2.13 is the first version seen correct (results/cuda-tests-h100.txt; tests/model/test_attention.py)
MERGE_CPU_COMPILE_MIN_TORCH = "2.13"
# the merge calls private aten flash-attention ops, whose signatures may change in any release: it runs
# on the torch versions its tests passed on, and says so on a newer one (the other backends run on any)
MERGE_TESTED_BELOW_TORCH = "2.14"


def causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain causal self-attention; q, k, v: (B, H, T, d). SDPA picks flash/cuDNN on CUDA.

    Decoding (``KVCache``): q may hold only the last t <= T positions, (B, H, t, d); they are
    aligned to the end of the keys (query i sits at position T - t + i)."""
    t, T = q.shape[2], k.shape[2]
    if t == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if t == 1:  # the newest position sees every key
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(T, 1, q.device, t))


def block_causal_mask(T: int, m: int, device: torch.device, t: Optional[int] = None) -> Tensor:
    """(t, m*T) bool, True = visible: key j is visible to query i iff j % T <= i + T - t (the t
    queries are the last t of the T positions; t = T, the default, is the whole sequence). Cached
    per shape in eager mode; a compiled graph builds it once inside the graph (dynamo does not
    trace through a cache)."""
    if torch.compiler.is_compiling():
        return _block_causal_mask(T, m, device, t)
    return _cached_block_causal_mask(T, m, device, t)


def _block_causal_mask(T: int, m: int, device: torch.device, t: Optional[int]) -> Tensor:
    t = T if t is None else t
    q = torch.arange(T - t, T, device=device)[:, None]
    kv = torch.arange(m * T, device=device)[None, :]
    return (kv % T) <= q


_cached_block_causal_mask = lru_cache(maxsize=64)(_block_causal_mask)


def multi_source(q: Tensor, ks: list[Tensor], vs: list[Tensor], backend: str = "auto") -> Tensor:
    """Attention of q over the concatenation of several (k, v) sources at the same positions.

    q: (B, H, T, d); each k, v: (B, H, T, d). Returns (B, H, T, d) in q's dtype. Decoding
    (``KVCache``): q may hold only the last t of the T positions, aligned to the end of each source
    (inference only: one masked SDPA call).
    """
    if len(ks) != len(vs) or not ks:
        raise ValueError(f"multi_source needs as many key as value sources (got {len(ks)} and {len(vs)})")
    t, T = q.shape[2], ks[0].shape[2]
    if t != T:
        if backend == "oracle":
            return oracle(q, ks, vs).to(q.dtype)
        mask = block_causal_mask(T, len(ks), q.device, t)
        return F.scaled_dot_product_attention(q, torch.cat(ks, dim=2), torch.cat(vs, dim=2), attn_mask=mask)
    if len(ks) == 1:
        return causal(q, ks[0], vs[0]) if backend != "oracle" else oracle(q, ks, vs).to(q.dtype)
    if backend == "auto":
        backend = "flex" if q.is_cuda else "sdpa"
    if backend == "oracle":
        return oracle(q, ks, vs).to(q.dtype)
    if backend == "merge":
        if torch.__version__ >= MERGE_TESTED_BELOW_TORCH:
            raise RuntimeError(
                f"attn_backend='merge' calls private flash-attention ops of torch, tested up to torch < "
                f"{MERGE_TESTED_BELOW_TORCH}; this is torch {torch.__version__}: use attn_backend 'flex' (GPU) or 'sdpa' "
                f"(same attention, tested on every torch), or install torch<{MERGE_TESTED_BELOW_TORCH} for 'merge'"
            )
        if not q.is_cuda and torch.compiler.is_compiling() and torch.__version__ < MERGE_CPU_COMPILE_MIN_TORCH:
            raise RuntimeError(  # a known-broken combination, refused rather than trained wrong
                f"attn_backend='merge' on the CPU inside torch.compile gives wrong gradients with torch {torch.__version__} "
                f"(seen on 2.11, correct from {MERGE_CPU_COMPILE_MIN_TORCH}): use attn_backend 'sdpa' on the CPU or compile=false"
            )
        return _MergedCausal.apply(q, *ks, *vs)
    k, v = torch.cat(ks, dim=2), torch.cat(vs, dim=2)  # (B, H, m*T, d)
    T, m = q.shape[2], len(ks)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(T, m, q.device))
    if backend == "flex":
        return _flex(q, k, v, _flex_block_mask(T, m, q.device))
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def oracle(q: Tensor, ks: list[Tensor], vs: list[Tensor]) -> Tensor:
    """The reference: float32, explicit boolean block-causal mask, SDPA math kernel."""
    k, v = torch.cat(ks, dim=2).float(), torch.cat(vs, dim=2).float()
    mask = block_causal_mask(ks[0].shape[2], len(ks), q.device, q.shape[2])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask)


def _source_probs(q: Tensor, ks: list[Tensor]) -> Tensor:
    """The block-causal attention probabilities in float32, split by source: (B, H, T, m, T)."""
    T, m = q.shape[2], len(ks)
    k = torch.cat(ks, dim=2).float()
    s = (q.float() @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, m*T)
    s = s.masked_fill(~block_causal_mask(T, m, q.device), float("-inf"))
    return s.softmax(-1).unflatten(-1, (m, T))


def source_mass(q: Tensor, ks: list[Tensor]) -> Tensor:
    """Attention probability mass each source receives, (B, H, T, m): for analysis, not training."""
    return _source_probs(q, ks).sum(-1)


def source_outputs(q: Tensor, ks: list[Tensor], vs: list[Tensor]) -> Tensor:
    """Each source's part of the attention output, (B, H, T, m, d) in float32, summing over m to
    the output: sum_p a[t, (s, p)] v[s, p]. For analysis (a source's share of what the layer
    writes, which attention mass alone does not tell: values of different sources differ in size)."""
    p = _source_probs(q, ks)
    return torch.stack([p[..., i, :] @ v.float() for i, v in enumerate(vs)], dim=3)


# FlexAttention -----------------------------------------------------------------------------------

_compiled_flex = None


def _flex(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if not q.is_cuda or torch.compiler.is_compiling():  # inside a compiled model: the outer compile owns it
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:  # one compiled instance for the process, as torchtitan does
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


_block_masks: dict = {}


def _flex_block_mask(T: int, m: int, device: torch.device):
    """BlockMask for ``kv % T <= q``, built once per (T, m, device) and reused by every layer/step."""
    key = (T, m, str(device))
    if key not in _block_masks:
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx % T) <= q_idx

        _block_masks[key] = create_block_mask(mask_mod, None, None, T, m * T, device=str(device))
    return _block_masks[key]


# One flash call per source, merged by log-sum-exp -------------------------------------------------


def _flash_forward(q: Tensor, k: Tensor, v: Tensor):
    """Causal flash attention returning (out, lse (B, H, T) float32, what its backward needs)."""
    if q.is_cuda:
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"attn_backend='merge' on CUDA runs the flash kernel, which needs fp16/bf16 inputs (got {q.dtype}); "
                "train with precision bf16-mixed or choose attn_backend 'flex'"
            )
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, True
        )
        return out, lse, ([cum_q, cum_k, seed, offset], (max_q, max_k))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
    return out, lse, ([], ())


def _flash_backward(g: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, aux: list, sizes: tuple):
    if not q.is_cuda:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(g, q, k, v, out, lse, 0.0, True)
    cum_q, cum_k, seed, offset = aux
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        g, q, k, v, out, lse, cum_q, cum_k, *sizes, 0.0, True, seed, offset
    )


class _MergedCausal(torch.autograd.Function):
    """softmax over the concatenated sources == sum_i exp(lse_i - lse) * softmax over source i."""

    @staticmethod
    def forward(ctx, q: Tensor, *kvs: Tensor) -> Tensor:
        m = len(kvs) // 2
        ks, vs = kvs[:m], kvs[m:]
        outs, lses = [], []
        for k, v in zip(ks, vs):
            o, lse_i, (aux, sizes) = _flash_forward(q, k, v)  # (B, H, T, d), (B, H, T)
            outs.append(o)
            lses.append(lse_i)
        lse = torch.stack(lses).logsumexp(0)  # (B, H, T)
        out = sum((lse_i - lse).exp().unsqueeze(-1) * o.float() for o, lse_i in zip(outs, lses)).to(q.dtype)
        # with dropout 0 the RNG state in aux is unused and every call's sizes are (T, T): any call's will do
        ctx.m, ctx.sizes = m, sizes
        ctx.save_for_backward(q, *ks, *vs, out, lse, *aux)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        q, *rest = ctx.saved_tensors
        m = ctx.m
        ks, vs, out, lse, aux = rest[:m], rest[m : 2 * m], rest[2 * m], rest[2 * m + 1], rest[2 * m + 2 :]
        g = g.contiguous()
        dq, dks, dvs = torch.zeros_like(q, dtype=torch.float32), [], []
        for k, v in zip(ks, vs):
            # P_i = exp(S_i - lse) is source i's share of the merged softmax, and rowsum(dO * O) uses
            # the merged O: the flash backward then gives exactly this source's gradients.
            dq_i, dk, dv = _flash_backward(g, q, k, v, out, lse, list(aux), ctx.sizes)
            dq += dq_i.float()
            dks.append(dk)
            dvs.append(dv)
        return (dq.to(q.dtype), *dks, *dvs)
