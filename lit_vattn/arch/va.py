"""Vertical Attention (VA).

Kojima, Iwasawa, Yokota, Miyao, Suzuki, Matsuo. "Vertical Attention: Automatic Exploration of
Inter-Layer Connections in Transformer-based Language Models". ICLR 2026 submission #24363,
https://openreview.net/forum?id=A6uabXKiXc

Before every block a small attention over depth mixes the outputs of all earlier layers (the
embedding included) into that block's input, with softmax weights and per-source normalisation.
The paper's method section was not available to us; what its reviews settle is the default, every
open point is a switch (the README's Vertical Attention section lists the readings):

    sources  o_0 = x0,  o_j = block j's output (a_j + m_j)  or  its residual state h_j   (sources=)
    weights  alpha_{l,j} = softmax_j(s_{l,j}),  s = free logits  or  logits + q(o_{l-1}) . k(o_j)   (weights=)
    input    z_l = sum_j alpha_{l,j} * o_j / RMS(o_j)   (or LayerNorm(o_j), or o_j)   (norm=)
             (+ h_{l-1} if keep_residual)
    readout  final norm of h_L, or of one more mixture over all L+1 sources        (readout=)

Not identity at init: with uniform init every layer starts from the average of its normalised
sources; "previous" init only puts most of the weight on the latest source.

Reader hooks: ``inputs`` (block l's attention reads the mixture z_l), ``update`` (records the
block's source), ``readout``. The logit lens reads the mixtures z_l, the states the blocks consume.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


def _rms(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


@register(
    title="Vertical Attention",
    paper="[Kojima et al., ICLR 2026 submission](https://openreview.net/forum?id=A6uabXKiXc)",
    reads="all earlier layers' outputs, softmax-mixed into each block's input",
    exact_at_init=False,
    seed=True,
    controls=("va-frozen", "va-nonorm", "va-previous", "elc-bert", "elc-bert-code", "va-unet"),
    default_controls=("elc-bert",),
    order=1,
)
class VerticalAttention(Arch):
    name = "va"

    def __init__(
        self,
        weights: Literal["logits", "qk"] = "logits",
        norm: Literal["rms", "layernorm", "none"] = "rms",
        sources: Literal["outputs", "residual"] = "outputs",
        keep_residual: bool = False,
        init: Literal["uniform", "previous"] = "uniform",
        readout: Literal["plain", "mixed"] = "plain",
        qk_heads: int = 1,
        qk_dim: int = 16,
        previous_logit: float = 4.0,
        pattern: Literal["dense", "unet"] = "dense",
    ):
        """
        Args:
            weights: "logits" = one learned logit per (layer, source), input independent (the
                reviewers' reading); "qk" = those logits plus a per-token query-key score over depth.
            norm: Normalise each source to unit RMS before mixing ("rms"), with a LayerNorm without
                affine parameters ("layernorm": ELC-BERT's normalised variant), or not ("none").
            sources: What is mixed: each block's output a + m ("outputs", ELC-BERT style) or the
                residual state after each block ("residual").
            keep_residual: Add the mixture to the ordinary residual stream instead of replacing it.
            init: "uniform" = all sources equal at step 0; "previous" = most weight on the latest.
            readout: "plain" = final norm of the last residual state; "mixed" = one more VA row
                mixing all L + 1 sources for the head.
            qk_heads: Heads of the query-key form; each head mixes its own slice of channels.
            qk_dim: Query/key width per head of the query-key form.
            previous_logit: Logit of the latest source under init="previous" (others 0).
            pattern: Which sources a block may read: "dense" = every earlier one (VA); "unet" = the
                fixed U-Net skip pattern the paper compares VA with: block l of the upper half reads
                the output of block L-1-l (its mirror in the lower half) on top of the residual
                stream, the lower half reads nothing more (needs keep_residual=true).
        """
        super().__init__()
        self.weights, self.norm, self.sources = weights, norm, sources
        self.keep_residual, self.init, self.readout_mode = keep_residual, init, readout
        self.qk_heads, self.qk_dim, self.previous_logit = qk_heads, qk_dim, previous_logit
        self.pattern = pattern

    def validate(self, cfg: GPTConfig) -> None:
        if cfg.n_layer < 1:
            raise ValueError("VerticalAttention needs at least one layer (config.n_layer >= 1)")
        if self.pattern not in ("dense", "unet"):
            raise ValueError(f"VerticalAttention.pattern={self.pattern!r}: choose 'dense' or 'unet'")
        unet_ok = self.keep_residual and self.readout_mode == "plain" and self.weights == "logits" and cfg.n_layer >= 2
        if self.pattern == "unet" and not unet_ok:
            raise ValueError(
                "VerticalAttention.pattern=unet adds fixed skips to the residual stream: it needs keep_residual=true, "
                "readout=plain, weights=logits and at least 2 layers"
            )
        if self.weights == "qk" and (self.qk_heads < 1 or cfg.d_model % self.qk_heads or self.qk_dim < 1):
            raise ValueError(
                f"VerticalAttention.qk_heads={self.qk_heads} must be >= 1 and divide d_model={cfg.d_model}; qk_dim={self.qk_dim} must be >= 1"
            )

    def bind(self, cfg: GPTConfig) -> "VerticalAttention":
        super().bind(cfg)
        L, D = cfg.n_layer, cfg.d_model
        self.rows = L + (self.readout_mode == "mixed")
        if self.pattern == "dense":  # a fixed pattern has no weights to learn
            self.logits = nn.Parameter(torch.zeros(self.rows, L + 1))  # row l reads sources 0..l
            self.logits.depth_mix = True
        if self.weights == "qk":
            self.q = nn.Linear(D, self.qk_heads * self.qk_dim, bias=False)
            self.k = nn.Linear(D, self.qk_heads * self.qk_dim, bias=False)
            self.q.weight.depth_mix = self.k.weight.depth_mix = True
        self.register_buffer("map_sum", torch.zeros(self.rows, L + 1), persistent=False)
        self.register_buffer("map_count", torch.zeros(()), persistent=False)
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.pattern == "unet":
            return
        self.logits.zero_()
        if self.init == "previous":
            for l in range(self.rows):
                self.logits[l, l] = self.previous_logit
        if self.weights == "qk":
            nn.init.zeros_(self.q.weight)  # starts as the static logits
            nn.init.normal_(self.k.weight, 0.0, 1.0 / math.sqrt(self.cfg.d_model))

    def _normed(self, x: Tensor) -> Tensor:
        if self.norm == "layernorm":
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-6)
        return _rms(x) if self.norm == "rms" else x

    def skip_source(self, row: int) -> Optional[int]:
        """pattern=unet: the one source block ``row`` reads (the output of its mirror block L-1-row,
        source index L - row), or None for the lower half."""
        L = self.cfg.n_layer
        return L - row if 2 * row >= L and L - row <= row else None

    def _mix(self, row: int, sources: list[Tensor]) -> Tensor:
        n = len(sources)  # row + 1 sources, each (B, T, D)
        static = self.logits[row, :n]
        if self.weights == "logits":
            alpha = static.softmax(-1).to(sources[0].dtype)  # (n,)
            if self.record_maps:
                self._record(row, alpha.float().expand(1, n))
            # an explicit weighted sum, not einsum over a stacked copy: compiled, it is one fused
            # kernel reading each source once (einsum became a slow batched GEMV on CUDA)
            z = alpha[0] * sources[0]
            for j in range(1, n):
                z = z + alpha[j] * sources[j]
            return z  # (B, T, D)
        src = torch.stack(sources)  # (n, B, T, D)
        Hq, dk = self.qk_heads, self.qk_dim
        q = self.q(src[-1]).unflatten(-1, (Hq, dk))  # (B, T, Hq, dk), from the latest source
        k = self.k(src).unflatten(-1, (Hq, dk))  # (n, B, T, Hq, dk)
        s = torch.einsum("bthe,nbthe->bthn", q, k) / math.sqrt(dk) + static  # (B, T, Hq, n)
        alpha = s.float().softmax(-1).to(src.dtype)
        if self.record_maps:
            self._record(row, alpha.flatten(0, 2))
        v = src.unflatten(-1, (Hq, -1))  # (n, B, T, Hq, D/Hq)
        return torch.einsum("bthn,nbthc->bthc", alpha, v).flatten(-2)

    @torch.no_grad()
    def _record(self, row: int, alpha: Tensor) -> None:
        self.map_sum[row, : alpha.shape[-1]] += alpha.float().mean(0)
        if row == 0:
            self.map_count += 1

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory) -> Tensor:
        if s != "attn":
            return stream  # the MLP reads z_l + a_l, as in the plain block
        sources = self.slot(mem).setdefault("sources", [])
        if l == 0:
            sources[:] = [self._normed(mem.x0)]
            if self.keep_residual:
                return stream
        if self.pattern == "unet":  # a fixed skip: the mirror block's normalised output, weight 1
            j = self.skip_source(l)
            return stream if j is None else stream + sources[j]
        z = self._mix(l, sources)  # (B, T, D)
        return stream + z if self.keep_residual else z

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        if s == "attn":
            return super().update(l, s, stream, out, mem)
        delta = mem.outputs[l]["attn"] + out  # block output a_l + m_l, (B, T, D)
        h = mem.inputs[l]["attn"] + delta
        self.slot(mem)["sources"].append(self._normed(delta if self.sources == "outputs" else h))
        return h

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return self._mix(self.cfg.n_layer, self.slot(mem)["sources"]) if self.readout_mode == "mixed" else stream

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'weights': (rows, L + 1), row l = the weights block l gives sources x0, o_1, ...;
        with record_maps on, the per-token weights averaged over what was recorded."""
        if self.pattern == "unet":
            m = torch.zeros(self.rows, self.cfg.n_layer + 1)
            for r in range(self.rows):
                if self.skip_source(r) is not None:
                    m[r, self.skip_source(r)] = 1.0
        elif self.map_count > 0:
            m = self.map_sum / self.map_count
        else:
            m = torch.zeros_like(self.logits)
            for r in range(self.rows):
                m[r, : r + 1] = self.logits[r, : r + 1].softmax(-1)
        rows = [f"block {r}" for r in range(self.cfg.n_layer)] + (["readout"] if self.rows > self.cfg.n_layer else [])
        cols = ["x0"] + [f"o{j}" for j in range(1, self.cfg.n_layer + 1)]
        return {"weights": DepthMap(m.cpu(), rows, cols, "depth-attention weight")}
