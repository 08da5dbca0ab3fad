"""Value residual learning (ResFormer) and single-value sharing (SVFormer).

Zhou, Hu, Chen, Yu, Guo, Xia. "Value Residual Learning For Alleviating Attention Concentration In
Transformers". ACL 2025, https://arxiv.org/abs/2410.17897 ; reference code
github.com/Zcchill/Value-Residual-Learning (``modeling_llama_resformer.py``).

Every layer after the first mixes the first layer's values into its own, before attention:

    V_1 = value heads of layer 1 (cached)
    ResFormer  V_n <- lambda * V_1 + (1 - lambda) * V_n         n = 2..L   (per head h: lambda_{n,h})
    SVFormer   V_n <- V_1                                          (all layers share layer 1's values)

    mix="fixed"   lambda = 0.5 (the reference code)
    mix="static"  lambda_{n,h} = sigmoid(w_{n,h}), learned, one per layer and head; starts at ``lam``
    mix="token"   lambda_{n,h}(t) = sigmoid(W_n RMSNorm(x_n(t)) + b_n), per token and head, from the
                  layer's input (the learned gate of x-transformers); starts at ``lam`` (W_n = 0)

``gate_input: block_norm`` is x-transformers' gate (``Attention.to_value_residual_mix``: a sigmoid of a
linear map of the attention's normalised input, applied as ``v1.lerp(v, mix)``, i.e. lambda = 1 - mix);
``tests/arch/test_value_residual.py`` holds ours equal to that module with W = -W', b = -b'. Its init
differs: x-transformers' default Linear init against ours W = 0, b = logit(lam).

The values are mixed after the projection, so RoPE (on keys only) is unaffected; the mix is per
position, so causality is the ordinary mask's. Not identity at init: lambda starts at ``lam``.

SVFormer computes and discards the value projection of layers 2..L (the fused QKV matmul is kept
for speed, so its measured FLOPs include them; a deployment would drop those rows and half the
value cache).

Reader hooks: ``qkv`` only, so it composes with any reader that mixes the block inputs (e.g.
Vertical Attention) or routes attention (``attend``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="Value residual (ResFormer)",
    paper="[Zhou et al., ACL 2025](https://arxiv.org/abs/2410.17897)",
    reads="the first layer's values, mixed into every later layer's values",
    exact_at_init=False,
    controls=("value-residual-learned", "svformer"),
)
class ValueResidual(Arch):
    name = "value-residual"

    def __init__(
        self,
        mix: Literal["fixed", "static", "token"] = "fixed",
        lam: float = 0.5,
        share: bool = False,
        gate_input: Literal["rms", "block_norm"] = "rms",
    ):
        """
        Args:
            mix: "fixed" lambda (the reference code), "static" = a learned lambda per layer and head,
                "token" = a learned per-token, per-head sigmoid gate of the layer input.
            lam: lambda for "fixed", the initial lambda for the learned forms (0 < lam < 1).
            share: SVFormer: every later layer uses layer 1's values outright (mix and lam unused).
            gate_input: what the "token" gate reads: "rms" = the layer's residual input through an
                RMSNorm without gain; "block_norm" = the attention's own normalised input (the
                block's norm, with its gain), as x-transformers' gate does.
        """
        super().__init__()
        self.mix, self.lam, self.share, self.gate_input = mix, lam, share, gate_input

    def validate(self, cfg: GPTConfig) -> None:
        if not 0.0 < self.lam < 1.0:
            raise ValueError(f"ValueResidual.lam={self.lam} must lie strictly between 0 and 1")
        if self.gate_input not in ("rms", "block_norm"):
            raise ValueError(f"ValueResidual.gate_input={self.gate_input!r}: choose 'rms' or 'block_norm'")
        if self.gate_input == "block_norm" and self.mix != "token":
            raise ValueError("ValueResidual.gate_input=block_norm is the token gate's input: set mix: token")
        if self.share and self.mix != "fixed":
            raise ValueError("ValueResidual.share=true (SVFormer) has no lambda: leave mix at 'fixed'")

    def bind(self, cfg: GPTConfig) -> "ValueResidual":
        super().bind(cfg)
        L, H, D = cfg.n_layer, cfg.n_head, cfg.d_model
        if self.mix == "static":
            self.gate = nn.Parameter(torch.zeros(max(L - 1, 0), H))  # logits of lambda_{n,h}
            self.gate.depth_mix = True
        elif self.mix == "token":
            self.to_gate = nn.ModuleList(nn.Linear(D, H) for _ in range(max(L - 1, 0)))
            for lin in self.to_gate:
                lin.weight.depth_mix = lin.bias.depth_mix = True
        self.register_buffer("map_sum", torch.zeros(max(L - 1, 0), H), persistent=False)
        self.register_buffer("map_count", torch.zeros(()), persistent=False)
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        logit = math.log(self.lam / (1 - self.lam))
        if self.mix == "static":
            self.gate.fill_(logit)
        elif self.mix == "token":
            for lin in self.to_gate:
                nn.init.zeros_(lin.weight)
                nn.init.constant_(lin.bias, logit)

    def _lambda(self, l: int, mem: DepthMemory) -> Tensor:
        """lambda of layer l >= 1: a float, (H,) or (B, T, H)."""
        if self.mix == "static":
            return torch.sigmoid(self.gate[l - 1])
        if self.gate_input == "block_norm":
            x = mem.normed[l]["attn"]  # (B, T, D): what the attention's projections read
        else:
            x = mem.inputs[l]["attn"]  # (B, T, D): the layer's residual input
            x = torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=self.cfg.norm_eps)
        return torch.sigmoid(self.to_gate[l - 1](x))  # (B, T, H)

    def qkv(self, l: int, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> tuple[Tensor, Tensor, Tensor]:
        slot = self.slot(mem)
        if l == 0:
            slot["v1"] = v  # (B, H, T, d)
            return q, k, v
        v1 = slot["v1"]
        if self.share:
            return q, k, v1
        if self.mix == "fixed":
            return q, k, self.lam * v1 + (1 - self.lam) * v
        lam = self._lambda(l, mem).to(v.dtype)
        if self.record_maps:
            self._record(l, lam)
        if lam.dim() == 1:
            lam = lam.view(1, -1, 1, 1)  # (1, H, 1, 1)
        else:
            lam = lam.transpose(1, 2).unsqueeze(-1)  # (B, H, T, 1)
        return q, k, v + lam * (v1 - v)

    @torch.no_grad()
    def _record(self, l: int, lam: Tensor) -> None:
        self.map_sum[l - 1] += lam.float().reshape(-1, lam.shape[-1]).mean(0)
        if l == 1:
            self.map_count += 1

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'lambda': (L - 1, H), the weight each later layer's heads give layer 1's values."""
        L, H = self.cfg.n_layer, self.cfg.n_head
        if self.share:
            m = torch.ones(L - 1, H)
        elif self.mix == "fixed":
            m = torch.full((L - 1, H), self.lam)
        elif self.map_count > 0:
            m = self.map_sum / self.map_count
        elif self.mix == "static":
            m = torch.sigmoid(self.gate)
        else:
            m = torch.sigmoid(torch.stack([lin.bias for lin in self.to_gate]))
        return {
            "lambda": DepthMap(
                m.cpu(),
                [f"block {l}" for l in range(1, L)],
                [f"head {h}" for h in range(H)],
                "weight of layer 0's values",
            )
        }
