"""Bit-exact references for the reader refactor: logits and every parameter gradient of
each architecture and switch, for one seed and batch, in float32 on the CPU.

``python tests/reference/numerics.py`` writes ``numerics.json`` (run at commit 7555359, before the
refactor, with this file copied into that tree); ``tests/test_reference_numerics.py`` recomputes every case with the current code and
requires the same bits. Tensors are stored as SHA-256 of their bytes plus float64 sums, so a
mismatch reports the size of the difference without shipping the tensors. A platform probe (plain
torch kernels only, ``probe``) is stored too: on a CPU whose kernels round differently the test
recomputes the references with this file at 7555359 on that CPU (tests/test_reference_numerics.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import LayerwiseAttentionShortcuts as LAS
from lit_vattn.arch import SkipLayerAttention as SLA
from lit_vattn.arch import Vanilla
from lit_vattn.arch import VerticalAttention as VA

CFG = dict(n_layer=4, n_head=4, d_model=32, max_seq_len=16, mlp_hidden=48)
V = 61
# every switch of every architecture takes each of its values at least once
CASES = {
    "vanilla": (lambda: Vanilla(), {}),
    "vanilla-tied": (lambda: Vanilla(), dict(tie_embeddings=True)),
    "va": (lambda: VA(), {}),
    "va-qk-residual-mixed": (lambda: VA(weights="qk", qk_heads=2, qk_dim=8, sources="residual", readout="mixed"), {}),
    "va-keep-previous-nonorm": (lambda: VA(keep_residual=True, init="previous", norm="none", previous_logit=2.0), {}),
    "va-qk-keep-nonorm-mixed": (lambda: VA(weights="qk", keep_residual=True, norm="none", readout="mixed"), {}),
    "las": (lambda: LAS(), {}),
    "las-all-depthemb-noself": (
        lambda: LAS(layers=[0, 1, 2], depth_embedding=True, keep_self=False, feature_dim=16),
        {},
    ),
    "las-self-depthemb": (lambda: LAS(layers=[0, 2], depth_embedding=True), {}),
    "las-oracle": (lambda: LAS(), dict(attn_backend="oracle")),
    "las-merge": (lambda: LAS(layers=[0, 1]), dict(attn_backend="merge")),
    "sla": (lambda: SLA(), {}),
    "sla-concat": (lambda: SLA(mode="concat", n_skip_heads=2), {}),
    "sla-concat-oracle": (lambda: SLA(mode="concat"), dict(attn_backend="oracle")),
    "sla-absolute": (lambda: SLA(skip_layers=[2, 3], source=0, source_mode="absolute"), {}),
    "sla-distance2": (lambda: SLA(n_skip_layers=2, source=2, n_skip_heads=1), {}),
}


def _digest(t: torch.Tensor) -> dict:
    t = t.detach().contiguous().float()
    return {
        "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
        "sum": float(t.double().sum()),
        "abs_sum": float(t.double().abs().sum()),
        "shape": list(t.shape),
    }


def probe() -> dict:
    """Plain torch kernels (no code of this repository): matmul, SDPA and RMSNorm, and the forward
    and backward of a small embedding -> RMSNorm -> SiLU MLP -> causal SDPA -> tied readout ->
    cross-entropy net at the cases' shapes. A CPU whose kernels round differently changes at least
    one digest, and the references are recomputed on it. The first three alone missed a CPU (an AVX-512
    EPYC) on which every case's gradients moved in the last bits."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 64, generator=g), torch.randn(64, 29, generator=g)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    out = {
        "matmul": _digest(a @ b),
        "sdpa": _digest(F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        "rmsnorm": _digest(torch.nn.RMSNorm(64)(a)),
    }
    d, hid, n_head = CFG["d_model"], CFG["mlp_hidden"], CFG["n_head"]
    emb = (0.02 * torch.randn(V, d, generator=g)).requires_grad_()
    w1 = (0.1 * torch.randn(d, hid, generator=g)).requires_grad_()
    w2 = (0.1 * torch.randn(hid, d, generator=g)).requires_grad_()
    x = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(1))
    h = emb[x[:, :-1]]  # (B, T, D)
    h = h + F.silu(F.rms_norm(h, (d,)) @ w1) @ w2
    heads = F.rms_norm(h, (d,)).view(2, 12, n_head, d // n_head).transpose(1, 2)  # (B, H, T, Dh)
    h = h + F.scaled_dot_product_attention(heads, heads, heads, is_causal=True).transpose(1, 2).reshape(2, 12, d)
    logits = F.rms_norm(h, (d,)) @ emb.T  # (B, T, V)
    F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").backward()
    out.update(
        net_logits=_digest(logits),
        net_grad_emb=_digest(emb.grad),
        net_grad_w1=_digest(w1.grad),
        net_grad_w2=_digest(w2.grad),
    )
    return out


def compute(name: str) -> dict:
    make, extra = CASES[name]
    torch.manual_seed(0)
    net = GPT(GPTConfig(**{**CFG, **extra}), V, make())
    x = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(1))
    logits = net(x[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").backward()
    return {
        "logits": _digest(logits),
        "grads": {n: _digest(p.grad) for n, p in net.named_parameters() if p.grad is not None},
        "params": {n: _digest(p) for n, p in net.named_parameters()},
    }


if __name__ == "__main__":
    out = {"torch": torch.__version__, "probe": probe(), "cases": {n: compute(n) for n in CASES}}
    path = Path(__file__).with_name("numerics.json")
    path.write_text(json.dumps(out, indent=1, sort_keys=True))
    print(f"{path}: {len(CASES)} cases")
