"""Layerwise Attention Shortcuts (LAS).

Verma & Pilanci. "Adaptive Large Language Models By Layerwise Attention Shortcuts".
arXiv:2409.10870 (2024), https://arxiv.org/abs/2409.10870

MLP feature maps phi_s on a chosen set of intermediate layers; the final layer's attention takes
its queries from its own input and its keys/values from the concatenation over (selected layer,
position) of those features, under a block-causal mask: key (layer s, position p) is visible to the
query at position t iff p <= t. One softmax therefore chooses both the depth and the past token to
read. Switches for what the paper leaves open (the README's LAS section lists the readings):

    layers           which residual states feed features (block indices, 0-based; default every
                     second block: 1, 3, 5, ... below the final block)
    feature_dim      hidden width of each phi_s = RMSNorm -> Linear(D, F) -> SiLU -> Linear(F, D)
    keep_self        the final layer's own K/V stay one more source (default) or are dropped
    depth_embedding  a learned per-source vector added to the keys (else sources differ only
                     through phi_s)
    feature_norm     each phi_s(h_s) through its own RMSNorm before the K/V projection, as the
                     layer's own input is normalised (the reading the protocol issue asks for: at
                     init the raw features give K/V ~40x smaller than the layer's own); default off

    shortcut         "merged" (default): the features are more key/value sources of the final
                     layer's own self-attention; "cross": the final block gets one more
                     sub-layer after its self-attention, a causal cross-attention (own RMSNorm,
                     Q/K/V/O weights, RoPE) from the stream to the concatenated features, as the
                     paper's figure draws it

Merged, the features are projected by the final layer's own K/V weights (post-RoPE, same
positions). Not identity at init: the shortcut keys take attention mass from step 0 (merged), the
cross-attention adds its output from step 0 (cross; its output projection has the residual init).

Reader hooks: ``attend`` (the final layer's: merged) or ``update`` (after the final layer's
self-attention: cross); the features are computed there from the residual states the memory
recorded after the selected blocks.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory, project_kv
from lit_vattn.arch.registry import register
from lit_vattn.model import attention
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.rope import apply_rope


@register(
    title="Layerwise Attention Shortcuts",
    paper="[Verma & Pilanci 2024](https://arxiv.org/abs/2409.10870)",
    reads="the final layer attends over intermediate layers' features at all past positions",
    exact_at_init=False,
    seed=True,
    controls=("las-all", "las-norm", "las-cross", "vanilla-flops-las"),
    order=3,
)
class LayerwiseAttentionShortcuts(Arch):
    name = "las"

    def __init__(
        self,
        layers: Union[None, list[int], Literal["all"]] = None,
        feature_dim: Optional[int] = None,
        keep_self: bool = True,
        depth_embedding: bool = False,
        feature_norm: bool = False,
        shortcut: Literal["merged", "cross"] = "merged",
    ):
        """
        Args:
            layers: Blocks (0-based) whose output residual states feed a feature map; each must be
                below the final block. Default: every second block, 1, 3, 5, ...; "all" = every
                block below the final one (the abstract's "attends to all intermediate layers").
            feature_dim: Hidden width of each feature-map MLP (default d_model).
            keep_self: Keep the final layer's own keys/values as one more source.
            depth_embedding: Add a learned per-source embedding to the keys.
            feature_norm: Pass each feature map's output through its own RMSNorm (gain 1 at init)
                before the final layer's K/V projection, as the layer's own input is normalised.
            shortcut: "merged" = the features are key/value sources of the final layer's own
                self-attention; "cross" = a separate causal cross-attention sub-layer of the final
                block (after its self-attention, before its MLP) over the features.
        """
        super().__init__()
        self.layers_arg, self.feature_dim, self.keep_self = layers, feature_dim, keep_self
        self.depth_embedding, self.feature_norm, self.shortcut = depth_embedding, feature_norm, shortcut

    def validate(self, cfg: GPTConfig) -> None:
        L = cfg.n_layer
        if L < 2:
            raise ValueError(
                f"LayerwiseAttentionShortcuts needs config.n_layer >= 2 (got {L}): the final layer reads earlier ones"
            )
        if self.layers_arg == "all":
            layers = list(range(L - 1))
        elif isinstance(self.layers_arg, str):
            raise ValueError(
                f'LayerwiseAttentionShortcuts.layers={self.layers_arg!r}: give block indices, "all" or null'
            )
        else:
            layers = self.layers_arg if self.layers_arg is not None else list(range(1, L - 1, 2)) or [0]
        for s in layers:
            if not 0 <= s < L - 1:
                raise ValueError(
                    f"LayerwiseAttentionShortcuts.layers: index {s} is outside [0, {L - 2}] "
                    f"(blocks below the final block of a {L}-layer model)"
                )
        if len(set(layers)) != len(layers):
            raise ValueError(f"LayerwiseAttentionShortcuts.layers has duplicates: {layers}")
        if not layers and not self.keep_self:
            raise ValueError(
                "LayerwiseAttentionShortcuts: no layers and keep_self=false leaves the final layer nothing to attend to"
            )
        if self.shortcut not in ("merged", "cross"):
            raise ValueError(f"LayerwiseAttentionShortcuts.shortcut={self.shortcut!r}: choose 'merged' or 'cross'")
        if self.shortcut == "cross" and (not self.keep_self or not layers):
            raise ValueError(
                "LayerwiseAttentionShortcuts: shortcut=cross keeps the final layer's self-attention and cross-attends "
                "to the features: it needs keep_self=true and at least one layer"
            )
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"LayerwiseAttentionShortcuts.feature_dim must be >= 1, got {self.feature_dim}")
        self.layers = sorted(layers)

    def bind(self, cfg: GPTConfig) -> "LayerwiseAttentionShortcuts":
        super().bind(cfg)
        D, Fd = cfg.d_model, self.feature_dim or cfg.d_model
        self.phi = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    nn.RMSNorm(D, eps=cfg.norm_eps),
                    nn.Linear(D, Fd, bias=False),
                    nn.SiLU(),
                    nn.Linear(Fd, D, bias=False),
                )
                for s in self.layers
            }
        )
        if self.feature_norm:
            self.out_norm = nn.ModuleDict({str(s): nn.RMSNorm(D, eps=cfg.norm_eps) for s in self.layers})
        if self.shortcut == "cross":  # the extra sub-layer: its own norm and Q, K/V, output projections
            self.cross_norm = nn.RMSNorm(D, eps=cfg.norm_eps)
            self.cross_q = nn.Linear(D, D, bias=False)
            self.cross_kv = nn.Linear(D, 2 * D, bias=False)
            self.cross_out = nn.Linear(D, D, bias=False)
            self.cross_out.residual_out = True  # the decoder's scaled init, as every residual output
        self.n_sources = len(self.layers) + int(self.keep_self and self.shortcut == "merged")
        if self.depth_embedding:
            self.depth_emb = nn.Parameter(torch.zeros(self.n_sources, cfg.n_head, 1, cfg.head_dim))
            self.depth_emb.depth_mix = True
        self._ablated: frozenset = frozenset()
        self.register_buffer("map_mass_sum", torch.zeros(self.n_sources), persistent=False)
        self.register_buffer("map_norm_sum", torch.zeros(self.n_sources), persistent=False)
        self.register_buffer("map_count", torch.zeros(()), persistent=False)
        return self

    def reset_parameters(self) -> None:
        if self.depth_embedding:
            nn.init.normal_(self.depth_emb, 0.0, 0.02)

    def features(self, mem: DepthMemory) -> list[Tensor]:
        """phi_s(h_s) for the selected blocks s, from the states the memory recorded, (B, T, D) each."""
        feats = [self.phi[str(s)](mem.states[s]) for s in self.layers]  # (B, T, D) each
        if self.feature_norm:
            feats = [self.out_norm[str(s)](f) for s, f in zip(self.layers, feats)]
        return feats

    def idle_hooks(self) -> frozenset:
        return frozenset({"update"} if self.shortcut == "merged" else {"attend"})

    def update(self, l: int, s: str, stream: Tensor, out: Tensor, mem: DepthMemory) -> Tensor:
        """shortcut=cross: after the final block's self-attention, the stream also takes the
        cross-attention's output (h = x + a + c); its MLP then adds to that stream."""
        if self.shortcut != "cross" or l != self.cfg.n_layer - 1:
            return super().update(l, s, stream, out, mem)
        if s == "mlp":
            return stream + out
        h = mem.inputs[l]["attn"] + out  # (B, T, D)
        B, T, D = h.shape
        H, d = self.cfg.n_head, self.cfg.head_dim
        q = apply_rope(self.cross_q(self.cross_norm(h)).view(B, T, H, d).transpose(1, 2), *mem.rope)  # (B, H, T, d)
        ks, vs = [], []
        for s_, f in zip(self.layers, self.features(mem)):
            kf, vf = self.cross_kv(f).chunk(2, dim=-1)
            kf, vf = apply_rope(kf.view(B, T, H, d).transpose(1, 2), *mem.rope), vf.view(B, T, H, d).transpose(1, 2)
            if mem.cache is not None:  # decoding: the features' K/V of the earlier positions too
                kf, vf = mem.cache.extend(("las-cross", s_), kf, vf)
            ks.append(kf)
            vs.append(vf)
        if self.depth_embedding:
            ks = [kk + self.depth_emb[i].to(kk.dtype) for i, kk in enumerate(ks)]
        self._record(q, ks, vs)
        keep = [i for i, name in enumerate(self.ablation_units()) if name not in self._ablated]
        if not keep:  # analysis: every source removed is the block without its cross-attention
            return h
        y = attention.multi_source(q, [ks[i] for i in keep], [vs[i] for i in keep], self.cfg.attn_backend)
        return h + self.cross_out(y.transpose(1, 2).reshape(B, T, D))

    def _record(self, q: Tensor, ks: list[Tensor], vs: list[Tensor]) -> None:
        if self.record_maps:
            with torch.no_grad():
                self.map_mass_sum += attention.source_mass(q, ks).mean((0, 1, 2))
                norms = attention.source_outputs(q, ks, vs).norm(dim=-1)  # (B, H, T, m)
                self.map_norm_sum += (norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)).mean((0, 1, 2))
                self.map_count += 1

    def attend(self, l: int, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> Tensor:
        if l != self.cfg.n_layer - 1 or self.shortcut == "cross":
            return attention.causal(q, k, v)
        ks, vs = [], []
        for s, f in zip(self.layers, self.features(mem)):  # in depth order
            kf, vf = project_kv(attn, f, mem.rope)  # (B, H, T, d) each
            if mem.cache is not None:  # decoding: the features' K/V of the earlier positions too
                kf, vf = mem.cache.extend(("las", s), kf, vf)
            ks.append(kf)
            vs.append(vf)
        if self.keep_self:
            ks.append(k)
            vs.append(v)
        if self.depth_embedding:
            ks = [kk + self.depth_emb[i].to(kk.dtype) for i, kk in enumerate(ks)]
        self._record(q, ks, vs)
        if self._ablated:  # analysis: the removed sources' keys and values are left out of the softmax
            keep = [i for i, name in enumerate(self.ablation_units()) if name not in self._ablated]
            ks, vs = [ks[i] for i in keep], [vs[i] for i in keep]
        return attention.multi_source(q, ks, vs, self.cfg.attn_backend)

    def ablation_units(self) -> list[str]:
        """The sources in attention order: each selected layer's features (h<s+1>), then "self"."""
        return [f"h{s + 1}" for s in self.layers] + (["self"] if self.keep_self and self.shortcut == "merged" else [])

    def ablate(self, units: frozenset) -> None:
        unknown = set(units) - set(self.ablation_units())
        every = units and set(units) >= set(self.ablation_units()) and self.shortcut == "merged"
        if unknown or every:
            raise ValueError(f"LAS ablation {sorted(units)}: choose some, not all, of {self.ablation_units()}")
        self._ablated = frozenset(units)

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'mass': attention mass of the final layer per source (features of each selected layer,
        then its own K/V); 'norm_share': each source's share of the summed norms of the
        per-source parts of the attention output (what the layer writes, not where it looks);
        averaged over what was recorded with record_maps on. Use is measured by ablation
        (``lit-vattn-analyze ablation``)."""
        if self.map_count == 0:
            return {}
        cols = self.ablation_units()
        return {
            "mass": DepthMap(
                (self.map_mass_sum / self.map_count).cpu()[None],
                ["final layer"],
                cols,
                "attention mass of the final layer",
            ),
            "norm_share": DepthMap(
                (self.map_norm_sum / self.map_count).cpu()[None],
                ["final layer"],
                cols,
                "share of the attention output's norm",
            ),
        }
