"""LIMe: Layer-Integrated Memory (static router over all earlier layers' K/V heads).

Gerasimov, Zverev, Chertkov, Gavrilov, Burtsev, Sorokin (corl-team). "You Do Not Fully Utilize
Transformer's Representation Capacity" (LIMe), 2025, https://arxiv.org/abs/2502.09245 ; reference
code github.com/corl-team/lime (``src/lm/lime.py``, ``configs/config_base.yaml``).

Every layer computes its own keys and values from its own input. Layer l >= 1 (0-based) replaces
the K/V of each of its heads by a learned linear mix over the heads of all layers <= l, one router
shared by keys and values:

    KV_l  = [K/V heads of layers 0..l]                     ((l+1) H heads, each (B, T, d))
    K_l^h = sum_j R_l[h, j] K_j ,  V_l^h = sum_j R_l[h, j] V_j     R_l: (H, (l+1) H), input independent
    then ordinary causal attention with layer l's own queries

The reference mixes pre-RoPE keys and rotates afterwards; RoPE rotates every head at a position by
the same angle, so it commutes with mixing heads and the mix is applied to the rotated keys here
(identical result). The mix is per position, so causality is the ordinary mask's.

Init (reference): R_l[:, own heads] = I, every other entry ~ U(-sqrt(3/fan_in), sqrt(3/fan_in)),
fan_in = (l+1) H. With ``init_noise: false`` the other entries start at 0 and the model is exactly
the vanilla decoder at step 0 (tested: equal logits). The router gets its own learning-rate
multiplier (the reference: router lr 1e-2 against a base lr of 1e-3, i.e. 10x) and no weight decay.

SLA is the special case of a fixed 0/1 router. Not implemented: the paper's dynamic
(input-dependent) router.

Reader hooks: ``qkv``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory
from lit_vattn.arch.registry import register
from lit_vattn.model.config import GPTConfig


@register(
    title="LIMe",
    paper="[Gerasimov et al. 2025](https://github.com/corl-team/lime)",
    reads="each layer's K/V heads routed from all earlier layers' K/V",
    exact_at_init=False,
)
class LIMe(Arch):
    name = "lime"

    def __init__(self, init_noise: bool = True, router_lr_mult: float = 10.0):
        """
        Args:
            init_noise: Start the routes to other layers' heads at U(+-sqrt(3/fan_in)) as the reference;
                false = own heads only (exactly vanilla at init).
            router_lr_mult: Learning-rate multiplier of the routers (on top of model mix_lr_mult).
        """
        super().__init__()
        self.init_noise, self.router_lr_mult = init_noise, router_lr_mult

    def bind(self, cfg: GPTConfig) -> "LIMe":
        super().bind(cfg)
        H = cfg.n_head
        self.routers = nn.ParameterList(nn.Parameter(torch.zeros(H, (l + 1) * H)) for l in range(1, cfg.n_layer))
        for p in self.routers:
            p.depth_mix = True
            p.lr_mult = self.router_lr_mult
        self.reset_parameters()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H = self.cfg.n_head
        for R in self.routers:
            fan_in = R.shape[1]
            if self.init_noise:
                bound = math.sqrt(3.0 / fan_in)
                R.uniform_(-bound, bound)
            else:
                R.zero_()
            R[:, -H:] = torch.eye(H)  # own heads (the last block of columns)

    def qkv(self, l: int, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> tuple[Tensor, Tensor, Tensor]:
        slot = self.slot(mem)
        if l == 0:
            slot["k"], slot["v"] = [k], [v]
            return q, k, v
        slot["k"].append(k)
        slot["v"].append(v)
        R = self.routers[l - 1].to(k.dtype)  # (H, (l+1) H)
        K = torch.cat(slot["k"], 1)  # (B, (l+1) H, T, d), layer-major as the router's columns
        V = torch.cat(slot["v"], 1)
        return q, torch.einsum("hj,bjtd->bhtd", R, K), torch.einsum("hj,bjtd->bhtd", R, V)

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'mass': (L - 1, L), row l = the share of layer l's router mass (sum of |R| over its
        heads) on each layer's heads."""
        L, H = self.cfg.n_layer, self.cfg.n_head
        m = torch.zeros(L - 1, L)
        for i, R in enumerate(self.routers):
            per_layer = R.detach().abs().float().view(H, i + 2, H).sum((0, 2))  # (l+1,)
            m[i, : i + 2] = (per_layer / per_layer.sum()).cpu()
        return {
            "mass": DepthMap(
                m, [f"block {l}" for l in range(1, L)], [f"layer {j}" for j in range(L)], "share of |router| mass"
            )
        }
