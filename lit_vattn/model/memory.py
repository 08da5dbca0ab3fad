"""What one forward pass records for the readers (``DepthMemory``) and what incremental decoding
keeps between passes (``KVCache``). The decoder fills them; every reader reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class DepthMemory:
    """What the blocks of one forward pass have written; lives for that pass only."""

    x0: Tensor  # (B, T, D) token embedding
    rope: tuple = ()  # (cos, sin) tables, for readers that project K from other inputs
    keep_kv: frozenset = frozenset()  # layers whose own K/V a reader asked to keep
    inputs: list[dict] = field(default_factory=list)  # inputs[l][s]: residual input of sub-layer s, (B, T, D)
    normed: list[dict] = field(default_factory=list)  # normed[l][s]: what the sub-layer read after its norm, (B, T, D)
    outputs: list[dict] = field(default_factory=list)  # outputs[l][s]: sub-layer output a_l or m_l, (B, T, D)
    states: list[Tensor] = field(default_factory=list)  # stream after block l, (B, T, D) or (B, T, n, D)
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # own post-RoPE (k, v), (B, H, T, d)
    private: dict[str, Any] = field(default_factory=dict)  # one slot per reader, keyed by its name
    cache: Optional["KVCache"] = None  # incremental decoding: K/V of the positions before this pass

    def record_kv(self, l: int, k: Tensor, v: Tensor) -> None:
        """Keep layer ``l``'s own post-RoPE K/V (B, H, T, d) when a reader asked for it
        (``Arch.kv_layers``); while decoding, of every position so far."""
        if l in self.keep_kv:
            self.kv[l] = (k, v) if self.cache is None else self.cache.extend(("own", l), k, v)


@dataclass
class KVCache:
    """What incremental decoding keeps between passes: the attended K/V of the positions already
    processed, so a pass over new positions [pos, pos + t) computes only those positions.

    Every reader's hooks other than ``attend`` are position-wise (``qkv`` included: value residual
    and LIMe mix K/V across layers at the same position), so this is exact for all of them. Per layer
    the cache holds the K/V after ``reader.qkv`` (what attention reads), plus the layer's own K/V
    when a reader borrows them (``kv_layers``: SLA reads ``mem.kv`` at every position); a reader
    attending over K/V of its own making extends them under its own key (LAS's feature maps).
    Queries cover only the new positions; the attention kernels align them to the end of the keys
    (``attention.causal``, ``attention.multi_source``)."""

    pos: int = 0  # positions already processed
    kv: dict[Any, tuple[Tensor, Tensor]] = field(default_factory=dict)  # key -> (k, v), (B, H, pos, d)

    def extend(self, key: Any, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' (k, v), (B, H, t, d), under ``key``; return all of them, (B, H, pos + t, d)."""
        if key in self.kv:
            k0, v0 = self.kv[key]
            k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)
        self.kv[key] = (k, v)
        return k, v
