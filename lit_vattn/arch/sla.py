"""Skip-Layer Attention (SLA).

Chen, Wang, Zhang, Zheng, Zhang, Deng, Yu, Liu, Ma, Zhang. "Skip-Layer Attention: Bridging Abstract
and Detailed Dependencies in Transformers". arXiv:2406.11274 (2024), https://arxiv.org/abs/2406.11274

In the chosen layers, ``n_skip_heads`` of the heads take their keys/values from a preceding layer
(that layer's own post-RoPE K/V, the "reuse cached" reading). With the default mode "replace" the
skip heads attend to the earlier layer's K/V *instead of* their own: no extra parameters or FLOPs,
the paper's "without additional computational burden". Mode "concat" lets them attend to their own
and the earlier K/V together (2T keys under the block-causal mask): an ablation that costs FLOPs.

Reading of the paper's best setting "9 skip layers, 9 skip heads" on a 12-layer GPT-2 (the method
section was not available to us; the README's SLA section lists the readings): the last 9 blocks
(3..11, 0-based) use SLA, 9 of 12 heads in each read the K/V of the block directly below
(``source: 1, source_mode: distance``). The defaults scale that to any shape: the last
round(3L/4) blocks and round(3H/4) heads. The other reading (a skip distance of 9: blocks 9..11 read
blocks 0..2) is ``skip_layers: [9, 10, 11], source: 9``. The first ``n_skip_heads`` heads are the skip
heads.

Two readings the paper leaves open are switches. ``kv_source``: the skip heads read the source
layer's own post-RoPE K/V ("cached", default: the "reuse" reading, no extra FLOPs) or this layer's
own K/V projection applied to the source layer's normalised attention input ("project": the skip
heads keep their own K/V weights and see an earlier state; one extra K/V projection of D x 2D per
skip block, and the replace mode's own K/V rows of the skip heads stay in use for nothing but the
projection of the earlier input). ``source`` may name several layers (the paper's n_l read as
several source layers per skip block): the skip heads then attend over the concatenation of every
source's K/V (block-causal mask, ``attention.multi_source``), in concat mode beside their own.

In replace mode with ``kv_source: cached`` the skip heads' rows of the block's own K/V projection
feed nothing: 2 n_skip_heads head_dim D weights per skip block are dead (counted in
docs/methods.md; they still take weight decay). ``kv_source: project`` uses them.

Reader hooks: ``kv_layers`` (the source layers' K/V are kept) and ``attend``.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn

from lit_vattn.arch.base import Arch, DepthMap, DepthMemory, project_kv
from lit_vattn.arch.registry import register
from lit_vattn.model import attention
from lit_vattn.model.config import GPTConfig


@register(
    title="Skip-Layer Attention",
    paper="[Chen et al. 2024](https://arxiv.org/abs/2406.11274)",
    reads="some heads attend to an earlier layer's keys and values",
    exact_at_init=False,
    seed=True,
    controls=("sla-far", "sla-project", "sla-two-sources"),
    order=2,
)
class SkipLayerAttention(Arch):
    name = "sla"

    def __init__(
        self,
        skip_layers: Optional[list[int]] = None,
        n_skip_layers: Optional[int] = None,
        n_skip_heads: Optional[int] = None,
        source: Union[int, list[int]] = 1,
        source_mode: Literal["distance", "absolute"] = "distance",
        mode: Literal["replace", "concat"] = "replace",
        kv_source: Literal["cached", "project"] = "cached",
    ):
        """
        Args:
            skip_layers: Blocks (0-based) that use skip heads. Default: the last n_skip_layers blocks
                (those of them that have a block at the source distance below them).
            n_skip_layers: How many final blocks use skip heads when skip_layers is not given
                (default round(3 * n_layer / 4): 9 of 12 as in the paper's best setting).
            n_skip_heads: Heads per skip block that read the earlier layer (default round(3 * n_head / 4)).
            source: Distance to the block whose K/V are read (source_mode=distance, 1 = the block
                directly below), or that block's index (source_mode=absolute); a list names several
                such blocks, whose K/V the skip heads attend over together.
            source_mode: How ``source`` is read: "distance" or "absolute".
            mode: "replace" = skip heads attend only to the earlier K/V (no extra FLOPs); "concat" =
                to their own and the earlier K/V together (2T keys, block-causal mask).
            kv_source: "cached" = the source layer's own post-RoPE K/V (reused); "project" = this
                layer's K/V projection of the source layer's normalised attention input.
        """
        super().__init__()
        self.skip_layers_arg, self.n_skip_layers, self.n_skip_heads_arg = skip_layers, n_skip_layers, n_skip_heads
        self.source, self.source_mode, self.mode, self.kv_source = source, source_mode, mode, kv_source
        self._sources = [source] if isinstance(source, int) else list(source)

    def srcs(self, l: int) -> list[int]:
        """The blocks whose K/V block l's skip heads read, nearest first as given."""
        return [l - s if self.source_mode == "distance" else s for s in self._sources]

    def src(self, l: int) -> int:
        """The (first) source block of block l."""
        return self.srcs(l)[0]

    def validate(self, cfg: GPTConfig) -> None:
        L, H = cfg.n_layer, cfg.n_head
        n_l = self.n_skip_layers if self.n_skip_layers is not None else round(3 * L / 4)
        if not 0 <= n_l <= L:
            raise ValueError(f"SkipLayerAttention.n_skip_layers={n_l} must be in [0, {L}]")
        if self.skip_layers_arg is not None:
            layers = self.skip_layers_arg
        else:  # the last n_l blocks that have a preceding block at this source
            layers = [l for l in range(L - n_l, L) if all(0 <= s < l for s in self.srcs(l))]
            if not layers:
                raise ValueError(
                    f"SkipLayerAttention: no block among the last {n_l} has a source (source={self.source}, "
                    f"source_mode={self.source_mode}, {L} layers); lower source or give skip_layers"
                )
        n_h = self.n_skip_heads_arg if self.n_skip_heads_arg is not None else round(3 * H / 4)
        if not 1 <= n_h <= H:
            raise ValueError(
                f"SkipLayerAttention.n_skip_heads={n_h} must be between 1 and the {H} heads (config.n_head)"
            )
        if not self._sources or len(set(self._sources)) != len(self._sources):
            raise ValueError(f"SkipLayerAttention.source={self.source}: name one source or several distinct ones")
        if self.source_mode == "distance" and min(self._sources) < 1:
            raise ValueError(f"SkipLayerAttention.source={self.source}: a distance must be >= 1 (a preceding layer)")
        if self.kv_source not in ("cached", "project"):
            raise ValueError(f"SkipLayerAttention.kv_source={self.kv_source!r}: choose 'cached' or 'project'")
        for l in layers:
            if not 0 <= l < L:
                raise ValueError(f"SkipLayerAttention.skip_layers: index {l} is outside [0, {L - 1}]")
            for s in self.srcs(l):
                if s < 0:
                    raise ValueError(
                        f"SkipLayerAttention: the skip source of layer {l} would be layer {s}, before layer 0 "
                        f"(source={self.source}, source_mode={self.source_mode}); drop layer {l} from skip_layers or lower source"
                    )
                if s >= l:
                    raise ValueError(f"SkipLayerAttention: layer {l} cannot read layer {s} (source must precede it)")
        self.skip_layers, self.n_skip_heads = sorted(set(layers)), n_h

    def bind(self, cfg: GPTConfig) -> "SkipLayerAttention":
        super().bind(cfg)
        self._skip = frozenset(self.skip_layers)
        self._ablated: frozenset = frozenset()  # skip blocks an analysis turned back to plain attention
        self.register_buffer("map_earlier_mass", torch.zeros(cfg.n_layer, cfg.n_head), persistent=False)
        self.register_buffer("map_count", torch.zeros(cfg.n_layer), persistent=False)
        return self

    def kv_layers(self) -> frozenset:
        if self.kv_source == "project":  # projected from the memory's normalised inputs, not borrowed
            return frozenset()
        return frozenset(s for l in self.skip_layers for s in self.srcs(l))

    def _source_kv(self, l: int, attn: nn.Module, mem: DepthMemory) -> tuple[list[Tensor], list[Tensor]]:
        """The K/V the skip heads of block l read, one (B, H, T, d) pair per source."""
        if self.kv_source == "cached":
            pairs = [mem.kv[s] for s in self.srcs(l)]
        else:
            pairs = []
            for s in self.srcs(l):
                k, v = project_kv(attn, mem.normed[s]["attn"], mem.rope)  # this layer's weights, block s's input
                if mem.cache is not None:  # decoding: the projections of the earlier positions too
                    k, v = mem.cache.extend(("sla", l, s), k, v)
                pairs.append((k, v))
        return [k for k, _ in pairs], [v for _, v in pairs]

    def ablation_units(self) -> list[str]:
        """One unit per skip block: ablated, its skip heads read the block's own K/V (plain attention)."""
        return [f"block{l}" for l in self.skip_layers]

    def ablate(self, units: frozenset) -> None:
        unknown = set(units) - set(self.ablation_units())
        if unknown:
            raise ValueError(f"SLA ablation {sorted(unknown)}: choose from {self.ablation_units()}")
        self._ablated = frozenset(int(u.removeprefix("block")) for u in units)

    def attend(self, l: int, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> Tensor:
        if l not in self._skip or l in self._ablated:
            return attention.causal(q, k, v)
        n = self.n_skip_heads
        kss, vss = self._source_kv(l, attn, mem)
        if len(kss) > 1:  # several sources: the skip heads attend over all of them (and their own in concat)
            ks_n, vs_n = [x[:, :n] for x in kss], [x[:, :n] for x in vss]
            if self.mode == "concat":
                ks_n, vs_n = [k[:, :n], *ks_n], [v[:, :n], *vs_n]
            if self.record_maps and self.mode == "concat":
                with torch.no_grad():  # the mass on every source but the head's own K/V
                    mass = attention.source_mass(q[:, :n], ks_n)[..., 1:].sum(-1)  # (B, n, T)
                    self.map_earlier_mass[l, :n] += mass.mean((0, 2))
                    self.map_count[l] += 1
            y_skip = attention.multi_source(q[:, :n], ks_n, vs_n, self.cfg.attn_backend)
            if n == q.shape[1]:
                return y_skip
            return torch.cat([y_skip, attention.causal(q[:, n:], k[:, n:], v[:, n:])], dim=1)
        ks, vs = kss[0], vss[0]  # (B, H, T, d)
        if self.mode == "replace":
            if n == q.shape[1]:
                return attention.causal(q, ks, vs)
            # Two attentions over head slices instead of one over concatenated K/V (which copied the
            # block's K and V); the outputs are joined once, in the (B, T, H, d) layout the output
            # projection reads, so the join stands in for the transpose copy it would otherwise make.
            y_skip = attention.causal(q[:, :n], ks[:, :n], vs[:, :n])  # (B, n, T, d)
            y_rest = attention.causal(q[:, n:], k[:, n:], v[:, n:])  # (B, H - n, T, d)
            return torch.cat([y_skip.transpose(1, 2), y_rest.transpose(1, 2)], dim=2).transpose(1, 2)  # (B, H, T, d)
        qs = q[:, :n]
        if self.record_maps:
            with torch.no_grad():
                self.map_earlier_mass[l, :n] += attention.source_mass(qs, [k[:, :n], ks[:, :n]])[..., 1].mean((0, 2))
                self.map_count[l] += 1
        y_skip = attention.multi_source(qs, [k[:, :n], ks[:, :n]], [v[:, :n], vs[:, :n]], self.cfg.attn_backend)
        y_rest = attention.causal(q[:, n:], k[:, n:], v[:, n:])
        return torch.cat([y_skip, y_rest], dim=1)

    @torch.no_grad()
    def depth_map(self) -> dict[str, DepthMap]:
        """'routing': (L, H) 1 where a head reads the earlier layer's K/V; in concat mode with
        record_maps on, also 'earlier_mass': the attention mass those heads put on the earlier K/V."""
        L, H = self.cfg.n_layer, self.cfg.n_head
        rows, cols = [f"block {l}" for l in range(L)], [f"head {h}" for h in range(H)]
        r = torch.zeros(L, H)
        for l in self.skip_layers:
            r[l, : self.n_skip_heads] = 1.0
        out = {"routing": DepthMap(r, rows, cols, "reads the earlier layer's K/V")}
        if self.map_count.sum() > 0:
            m = (self.map_earlier_mass / self.map_count.clamp_min(1)[:, None]).cpu()
            out["earlier_mass"] = DepthMap(m, rows, cols, "attention mass on the earlier K/V")
        return out
