"""DeepCrossAttention (DCA): input-dependent mixtures of earlier outputs feeding Q, K and V.

Heddes, Javanmard, Axiotis, Fu, Bateni, Mirrokni. "DeepCrossAttention: Supercharging Transformer
Residual Connections". ICML 2025, https://arxiv.org/abs/2502.06785 ; structure checked against
the unofficial ports lucidrains/deep-cross-attention and Yuan-ManX/DeepCrossAttention-PyTorch (no
official code).

The model stores every block's output y_j (without the identity term), y_0 = x0. A generalised
residual network (GRN) turns the stack of stored outputs into O mixtures, with per-token,
per-source, per-output weights:

    g     = ReLU( RMSNorm(Y_s) W + b )                 (B, T, S, O)   W: D -> O, b: (S, O)
    out_o = sum_s g[..., s, o] Y_s                     (B, T, D)
    block l:  (q_in, k_in, v_in) = GRN_l(y_0..y_{l})   (O = 3)
              a = Attn(N(q_in), N(k_in), N(v_in)) ;  f = MLP(N(q_in + a)) ;  y_{l+1} = a + f
    readout:  GRN_final(y_0..y_L) with O = 1, then the final norm and head

k-DCA (``k``): the GRN reads only the first k and the last k stored outputs plus the sum of the
ones between them (the sum keeps it a generalisation of the residual), so its cost does not grow
with depth.

Init (``init``): "ones" = W = 0, b = 1: every mixture is x0 + sum_j y_j, the ordinary residual
stream, so the model is exactly the vanilla decoder at step 0 (tested: equal logits); the paper
presents DCA as a generalisation of the residual sum. "last" = b one-hot on the latest output
(Yuan-ManX's port: starts by reading only y_l, without the residual; not vanilla).

Static weights (``grn``): "scalar" = b is one number per source and output, inside the ReLU (above);
"dimwise" = lucidrains' current port (``deep_cross_attention/dca_gpt.py``, ``GRN``, "GRNv3"): the
static part is a per-dimension bias added after the ReLU, b: (S, O, D),

    out_o = sum_s (ReLU(RMSNorm(Y_s) W)[..., o] + b[s, o]) * Y_s

initialised to ones (or one-hot on the latest source with ``init: last``) and W ~ N(0, 1e-2) as in
the port (a zero W gets no gradient through the ReLU): close to, not exactly, the residual sum at init. ``tests/arch/test_dca.py`` holds the dimwise GRN equal to the port's ``GRN`` (outputs
and gradients); the port's k-DCA (first and last k sources, no sum of the middle) and its learned
RMSNorm gain in the GRN are not taken.

Reader hooks: ``inputs`` (separate Q/K/V inputs, ``AttnInputs``), ``update`` (store y), ``readout``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, AttnInputs, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="DeepCrossAttention",
    paper="[Heddes et al., ICML 2025](https://arxiv.org/abs/2502.06785)",
    reads="learned input-dependent mixes of earlier block outputs for Q, K and V",
    exact_at_init=True,
    controls=("dca-dimwise",),
)
class DeepCrossAttention(Arch):
    name = "dca"

    def __init__(
        self,
        k: Optional[int] = None,
        init: Literal["ones", "last"] = "ones",
        grn: Literal["scalar", "dimwise"] = "scalar",
    ):
        """
        Args:
            k: k-DCA: the GRN reads the first k and last k stored outputs and the sum of the rest;
                null = every stored output.
            init: "ones" = static weights 1 (the residual sum: vanilla at init); "last" = one-hot on
                the most recent output (an unofficial port's init).
            grn: "scalar" = one static weight per source and output inside the ReLU; "dimwise" =
                lucidrains' port: a per-dimension static weight added after the ReLU.
        """
        super().__init__()
        self.k, self.init, self.grn = k, init, grn

    def validate(self, cfg: GPTConfig) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"DeepCrossAttention.k={self.k} must be >= 1 (or null for all outputs)")
        if self.grn not in ("scalar", "dimwise"):
            raise ValueError(f"DeepCrossAttention.grn={self.grn!r}: choose 'scalar' or 'dimwise'")

    def n_sources(self, l: int) -> int:
        """GRN inputs of block l (reading y_0..y_l); l = n_layer is the readout."""
        n = l + 1
        return n if self.k is None or n <= 2 * self.k + 1 else 2 * self.k + 1

    def bind(self, cfg: GPTConfig) -> "DeepCrossAttention":
        super().bind(cfg)
        L, D = cfg.n_layer, cfg.d_model
        outs = [3] * L + [1]
        self.proj = nn.ParameterList(nn.Parameter(torch.zeros(D, o)) for o in outs)  # W: D -> O
        per = (D,) if self.grn == "dimwise" else ()  # (S, O) or (S, O, D)
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(self.n_sources(l), o, *per)) for l, o in enumerate(outs))
        for p in self.parameters():
            p.depth_mix = True
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for W, b in zip(self.proj, self.bias):
            if self.grn == "dimwise":  # the port's init: a zero W would sit at the ReLU's kink, with no gradient
                nn.init.normal_(W, std=1e-2)
            else:
                W.zero_()
            if self.init == "ones":
                b.fill_(1.0)
            else:
                b.zero_()
                b[-1] = 1.0

    def _stack(self, ys: list[Tensor]) -> list[Tensor]:
        if self.k is None or len(ys) <= 2 * self.k + 1:
            return ys
        middle = ys[self.k]
        for y in ys[self.k + 1 : len(ys) - self.k]:
            middle = middle + y
        return ys[: self.k] + [middle] + ys[len(ys) - self.k :]

    def _grn(self, l: int, mem: DepthMemory) -> list[Tensor]:
        src = self._stack(self.slot(mem)["ys"])  # S tensors (B, T, D)
        W, b = self.proj[l].to(src[0].dtype), self.bias[l].to(src[0].dtype)
        out = []
        dimwise = self.grn == "dimwise"  # else the scalar static weights sit inside the ReLU
        gates = [
            F.relu(F.rms_norm(y, (y.shape[-1],), eps=self.cfg.norm_eps) @ W + (0 if dimwise else b[s]))
            for s, y in enumerate(src)
        ]  # S x (B, T, O)
        if self.record_maps:  # the weight each source gets: the gate, plus the mean static weight when dimwise
            self._record(l, torch.stack(gates, -2) + (b.mean(-1) if dimwise else 0))
        for o in range(W.shape[1]):
            z = 0
            for s, y in enumerate(src):
                g = gates[s][..., o : o + 1]  # (B, T, 1)
                z = z + (g + b[s, o] if dimwise else g) * y  # (B, T, D)
            out.append(z)
        return out

    def inputs(self, l: int, s: str, stream: Tensor, mem: DepthMemory):
        if s != "attn":
            return stream  # q_in + a, the ordinary MLP input of the block
        if l == 0:
            self.slot(mem)["ys"] = [mem.x0]
        q, k, v = self._grn(l, mem)
        return AttnInputs(q, q, k, v)  # the block's residual base is q_in

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        if s == "mlp":
            self.slot(mem)["ys"].append(mem.outputs[l]["attn"] + out)  # y_{l+1} = a + f, (B, T, D)
        return super().update(l, s, stream, out, mem)

    def readout(self, stream: Tensor, mem: DepthMemory) -> Tensor:
        return self._grn(self.cfg.n_layer, mem)[0]

    @torch.no_grad()
    def _record(self, l: int, g: Tensor) -> None:
        if not hasattr(self, "_map"):
            self._map = {}
        m = g.float().reshape(-1, *g.shape[-2:]).mean(0)  # (S, O)
        prev = self._map.get(l)
        self._map[l] = (m, 1) if prev is None else (prev[0] + m, prev[1] + 1)

    def reset_maps(self) -> None:
        self._map = {}

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """One map per input (q, k, v; the readout row in each): (L + 1, max sources), row l = the
        mean GRN weight block l gives each stored output (the static bias when nothing was recorded)."""
        L = self.cfg.n_layer
        S = max(self.n_sources(l) for l in range(L + 1))
        rec = getattr(self, "_map", {})
        maps = {}
        for o, name in enumerate("qkv"):
            m = torch.zeros(L + 1, S)
            for l in range(L + 1):
                oo = min(o, self.bias[l].shape[1] - 1)  # the readout has one output
                static = self.bias[l][:, oo].float()
                static = static.mean(-1) if self.grn == "dimwise" else F.relu(static)  # (S,)
                w = rec[l][0][:, oo] / rec[l][1] if l in rec else static
                m[l, : w.shape[0]] = w.cpu()
            cols = ["y0"] + [f"y{j}" for j in range(1, S)] if self.k is None else [f"src{j}" for j in range(S)]
            maps[f"weights_{name}"] = DepthMap(
                m, [f"block {l}" for l in range(L)] + ["readout"], cols, f"GRN weight ({name} input)"
            )
        return maps
