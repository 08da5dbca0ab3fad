"""MUDDFormer: multiway dynamic dense connections.

Xiao, Meng, Zhang, Li. "MUDDFormer: Breaking Residual Bottlenecks in Transformers via Multiway
Dynamic Dense Connections". ICML 2025, https://arxiv.org/abs/2502.12170 ; reference code
github.com/Caiyun-AI/MUDDFormer (``pytorch/muddformer/modeling_muddformer.py``; init from the JAX
version ``jax/MaxText/layers/llama2.py``).

After every block i (0-based) a small MLP on that block's output state X_{i+1} gives per-token
weights over all states so far, X_0 = x0, X_1, ..., X_{i+1}, for C = 4 streams (query, key, value
and residual inputs of the next block):

    w    = W2_i GELU(W1_i RMSNorm(X_{i+1})) + b_i              (B, T, C, i+2)   RMSNorm without gain
    X^c  = sum_j w[..., c, j] X_j                              c in {q, k, v, r}, each (B, T, D)
    block i+1:  a = Attn(N(X^q), N(X^k), N(X^v)) ;  X_{i+2} = X^r + a + MLP(N(X^r + a))
    after the last block C = 1 (the residual stream only), whose X^r is what the final norm reads

Hidden width of W1_i: C (i+2), rounded as the reference (``round64``: (h // 64 + 1) * 64; x4 before
rounding after the last block). Init (JAX reference): W2 = 0, b_i = [0, ..., 0, 1] for every stream,
W1 normal with std 1/sqrt(D): every stream reads only the latest state, so the model is exactly
the vanilla decoder at step 0 (tested: equal logits). ``streams="vr"`` mixes only the value and
residual inputs (queries and keys read X^r), the setting of the modded-nanogpt record.

Pre-attention norms: ``sepln=False`` (default) gives the Q, K and V inputs one shared RMSNorm, the
reference's ``stack_hidden`` path (``self.attention_norm(x[:3])`` on the stacked mixtures);
``sepln=True`` gives each its own gain (``attention_norms``, blocks 1..L-1), as the released model's
``config.json`` sets. Tested against a transcription of the reference's forward for both. Not part
of the method and kept from our base decoder: the reference's QK-norm and its per-layer MLP widths.

Reader hooks: ``inputs`` (separate Q/K/V inputs, ``AttnInputs``), ``update`` (store X_{i+1},
compute the next mixtures), ``readout``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, AttnInputs, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


def _round64(h: int) -> int:
    return (h // 64 + 1) * 64  # as the reference (always adds a block of 64)


@register(
    title="MUDDFormer",
    paper="[Xiao et al., ICML 2025](https://arxiv.org/abs/2502.12170)",
    reads="per-token dense mixes of all earlier states, separate for Q, K, V and residual",
    exact_at_init=True,
    controls=("mudd-sepln",),
)
class MUDDFormer(Arch):
    name = "mudd"

    def __init__(
        self,
        streams: Literal["qkvr", "vr"] = "qkvr",
        expand_last: bool = True,
        round64: bool = True,
        sepln: bool = False,
    ):
        """
        Args:
            streams: "qkvr" = separate query, key, value and residual mixtures (the paper);
                "vr" = only value and residual (queries and keys read the residual mixture).
            expand_last: 4x the hidden width of the dense connection after the last block.
            round64: Round hidden widths up as the reference code.
            sepln: Separate RMSNorm gains for the mixed K and V inputs of blocks 1..L-1 (the
                block's own norm serves Q), as the released model; False = one shared norm.
        """
        super().__init__()
        self.streams, self.expand_last, self.round64, self.sepln = streams, expand_last, round64, sepln

    def bind(self, cfg: GPTConfig) -> "MUDDFormer":
        super().bind(cfg)
        L, D = cfg.n_layer, cfg.d_model
        self.C = len(self.streams)
        self.w1, self.w2, self.bias = nn.ModuleList(), nn.ModuleList(), nn.ParameterList()
        for i in range(L):
            C = 1 if i == L - 1 else self.C
            n = i + 2  # states X_0..X_{i+1}
            hid = C * n * (4 if i == L - 1 and self.expand_last else 1)
            hid = _round64(hid) if self.round64 else hid
            self.w1.append(nn.Linear(D, hid, bias=False))
            self.w2.append(nn.Linear(hid, C * n, bias=False))
            self.bias.append(nn.Parameter(torch.zeros(C, n)))
        for p in self.parameters():
            p.depth_mix = True
        # norm gains train like the block's own (no depth-mix lr), so they are made after the flag
        mixed = ("k", "v") if self.streams == "qkvr" else ("v",)
        self.norms = nn.ModuleList(
            nn.ModuleDict({c: nn.RMSNorm(D, eps=cfg.norm_eps) for c in mixed})
            for _ in range(L - 1 if self.sepln else 0)
        )
        self.register_buffer("map_sum", torch.zeros(L, self.C, L + 1), persistent=False)
        self.register_buffer("map_count", torch.zeros(()), persistent=False)
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        D = self.cfg.d_model
        for w1, w2, b in zip(self.w1, self.w2, self.bias):
            nn.init.normal_(w1.weight, 0.0, 1.0 / math.sqrt(D))
            nn.init.zeros_(w2.weight)
            b.zero_()
            b[:, -1] = 1.0  # current-only: vanilla at init
        for norms in self.norms:
            for n in norms.values():
                n.reset_parameters()

    def _mix(self, i: int, states: list[Tensor]) -> list[Tensor]:
        """The C mixtures after block i, each (B, T, D)."""
        x = states[-1]
        h = F.rms_norm(x, (x.shape[-1],), eps=self.cfg.norm_eps)  # no gain, as the reference
        w = self.w2[i](F.gelu(self.w1[i](h)))  # (B, T, C n)
        C, n = self.bias[i].shape
        w = w.unflatten(-1, (C, n)) + self.bias[i].to(w.dtype)  # (B, T, C, n)
        if self.record_maps:
            self._record(i, w)
        out = []
        for c in range(C):
            z = w[..., c, 0:1] * states[0]
            for j in range(1, n):
                z = z + w[..., c, j : j + 1] * states[j]
            out.append(z)  # (B, T, D)
        return out

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory):
        if s != "attn" or l == 0:
            return stream
        mixed = self.slot(mem)["mixed"]
        norms = dict(self.norms[l - 1].items()) if self.sepln else {}
        if self.streams == "qkvr":
            q, k, v, r = mixed
            return AttnInputs(r, q, k, v, norms.get("k"), norms.get("v"))
        v, r = mixed
        return AttnInputs(r, r, r, v, None, norms.get("v"))

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        x = super().update(l, s, stream, out, mem)  # attn: X^r + a ; mlp: X_{l+1} = X^r + a + m
        if s == "attn":
            return x
        slot = self.slot(mem)
        states = slot.setdefault("states", [])
        if l == 0:
            states[:] = [mem.x0]
        states.append(x)
        slot["mixed"] = self._mix(l, states)
        return slot["mixed"][-1]  # the residual mixture X^r is the stream the next block adds to

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return stream  # after the last block C = 1: already the residual mixture

    @torch.no_grad()
    def _record(self, i: int, w: Tensor) -> None:
        C, n = w.shape[-2:]
        first = self.C - C  # after the last block the one stream is the residual (the last column)
        self.map_sum[i, first:, :n] += w.float().reshape(-1, C, n).mean(0)
        if i == 0:
            self.map_count += 1

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """One map per stream: (L, L + 1), row i = the mean weight the input after block i gives
        X_0..X_{i+1} (the static bias when nothing was recorded; the last row is the readout,
        residual stream only)."""
        L = self.cfg.n_layer
        if self.map_count > 0:
            m = self.map_sum / self.map_count
        else:
            m = torch.zeros(L, self.C, L + 1)
            for i, b in enumerate(self.bias):
                m[i, self.C - b.shape[0] :, : b.shape[1]] = b.float()
        rows = [f"block {i + 1} in" for i in range(L - 1)] + ["readout"]
        cols = ["x0"] + [f"X{j}" for j in range(1, L + 1)]
        return {
            f"weights_{c}": DepthMap(m[:, ci].cpu(), rows, cols, f"dense weight ({c} input)")
            for ci, c in enumerate(self.streams)
        }
