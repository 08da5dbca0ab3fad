"""Attention Residuals (AttnRes), Full and Block.

Kimi Team (Moonshot AI). "Attention Residuals". 2026, https://arxiv.org/abs/2603.15031 ; pseudocode
of the paper. ``tests/arch/test_attnres.py`` holds Full and Block equal (every mixture, the readout,
the pseudo-queries' gradients) to ``paper_forward`` of the ``flash-attn-res`` package (0.1.12,
``experimental/torch.py``, transcribed: the package needs Triton and a GPU).

There is no running residual sum: the input of every sub-layer (attention and MLP separately,
sub-layer l) is a softmax attention over depth with one learned pseudo-query w_l per sub-layer and
RMS-normalised keys:

    sources   v_0 = x0,  v_i = raw output of sub-layer i (a or m, not a running sum)
    Full      alpha_{i->l} = softmax_i( w_l . RMSNorm_l(v_i) ) ;  h_l = sum_{i<l} alpha_{i->l} v_i
    Block(S)  sources = [b_0 = x0, completed block sums b_1.., the current partial sum], where a
              block is S consecutive sub-layers whose outputs are added up (S = 1 is Full)
    readout   one more pseudo-query over all sources gives what the final norm reads

Init w_l = 0: every sub-layer starts from the uniform average of its sources, NOT the vanilla
residual sum (as the paper). Parameters: two D-vectors per sub-layer and the readout (w_l and the
RMSNorm gain).

The key normalisation is computed once per source: w_l . (g_l * v_i / rms(v_i)) =
(w_l * g_l) . (v_i / rms(v_i)), so each source is normalised once whatever the number of readers.

Reader hooks: ``inputs`` (every sub-layer), ``update`` (record the output), ``readout``; the
logit lens reads the mixtures h_l, which are what the sub-layers consume.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="Attention Residuals",
    paper="[Kimi Team 2026](https://arxiv.org/abs/2603.15031)",
    reads="a softmax over all earlier sub-layer outputs replaces the residual sum",
    exact_at_init=False,
    controls=("attnres-block",),
)
class AttentionResiduals(Arch):
    name = "attnres"

    def __init__(self, block_size: Optional[int] = None):
        """
        Args:
            block_size: S: sub-layers per block for Block AttnRes (2 = one transformer block);
                null = Full AttnRes (every sub-layer output is its own source).
        """
        super().__init__()
        self.block_size = block_size

    def validate(self, cfg: GPTConfig) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"AttentionResiduals.block_size={self.block_size} must be >= 1 (or null for Full)")

    def bind(self, cfg: GPTConfig) -> "AttentionResiduals":
        super().bind(cfg)
        n, D = 2 * cfg.n_layer + 1, cfg.d_model  # every sub-layer and the readout
        self.query = nn.Parameter(torch.zeros(n, D))  # pseudo-queries w_l
        self.key_norm = nn.Parameter(torch.ones(n, D))  # RMSNorm_l gains
        self.query.depth_mix = self.key_norm.depth_mix = True
        self.register_buffer("map_sum", torch.zeros(n, n), persistent=False)
        self.register_buffer("map_count", torch.zeros(()), persistent=False)
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.query.zero_()
        self.key_norm.fill_(1.0)

    def _normed(self, v: Tensor) -> Tensor:
        return v * torch.rsqrt(v.float().pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps).to(v.dtype)

    def _sources(self, mem: DepthMemory) -> tuple[list[Tensor], list[Tensor]]:
        """(values, normalised keys) in depth order: completed blocks, then the partial sum."""
        slot = self.slot(mem)
        vals, keys = list(slot["blocks"]), list(slot["block_keys"])
        if slot["partial"] is not None:
            vals.append(slot["partial"])
            keys.append(self._normed(slot["partial"]))
        return vals, keys

    def _attend(self, k: int, mem: DepthMemory) -> Tensor:
        vals, keys = self._sources(mem)
        w = (self.query[k] * self.key_norm[k]).to(vals[0].dtype)[:, None]  # (D, 1)
        # (D, 1) rather than (D,): a matrix product, which the FLOP counter sees (a matrix-vector
        # product it does not count)
        logits = torch.cat([key @ w for key in keys], -1)  # (B, T, n)
        alpha = logits.float().softmax(-1).to(vals[0].dtype)
        if self.record_maps:
            self._record(k, alpha)
        h = alpha[..., 0:1] * vals[0]
        for i in range(1, len(vals)):
            h = h + alpha[..., i : i + 1] * vals[i]
        return h  # (B, T, D)

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory) -> Tensor:
        if l == 0 and s == "attn":
            slot = self.slot(mem)
            slot.update(blocks=[mem.x0], block_keys=[self._normed(mem.x0)], partial=None, done=0)
        return self._attend(2 * l + (s == "mlp"), mem)

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        slot = self.slot(mem)
        slot["partial"] = out if slot["partial"] is None else slot["partial"] + out
        slot["done"] += 1
        if slot["done"] % (self.block_size or 1) == 0:  # the block is complete: it becomes a source
            slot["blocks"].append(slot["partial"])
            slot["block_keys"].append(self._normed(slot["partial"]))
            slot["partial"] = None
        return stream  # unused: every sub-layer reads its own mixture

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return self._attend(2 * self.cfg.n_layer, mem)

    def lens_states(self, mem: DepthMemory, out: Tensor) -> list[tuple[str, Tensor]]:
        """Each sub-layer's mixture (what it consumes), then the readout mixture."""
        return [
            (f"in{l}{'' if s == 'attn' else '.mlp'}", d[s]) for l, d in enumerate(mem.inputs) for s in ("attn", "mlp")
        ] + [("readout", out)]

    @torch.no_grad()
    def _record(self, k: int, alpha: Tensor) -> None:
        self.map_sum[k, : alpha.shape[-1]] += alpha.float().reshape(-1, alpha.shape[-1]).mean(0)
        if k == 0:
            self.map_count += 1

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'weights': (2L + 1, sources), row k = mean softmax weight sub-layer k (the last row: the
        readout) gives each source (x0 first; with blocks, completed blocks then the partial sum).
        Uniform before anything is recorded (the pseudo-queries start at zero and the weights
        depend on the input)."""
        n = 2 * self.cfg.n_layer + 1
        if self.map_count > 0:
            m = self.map_sum / self.map_count
        else:
            m = torch.zeros(n, n)
            for k in range(n):
                S = self.block_size or 1
                count = 1 + k // S + (k % S > 0)
                m[k, :count] = 1.0 / count
        rows = [f"block {k // 2} {('attn', 'mlp')[k % 2]}" for k in range(n - 1)] + ["readout"]
        cols = ["x0"] + [f"src{j}" for j in range(1, n)]
        return {"weights": DepthMap(m.cpu(), rows, cols, "depth-attention weight")}
