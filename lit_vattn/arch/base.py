"""The depth memory and the reader interface every architecture implements.

During one forward pass every block writes what later blocks may read (DESIGN.md section 3): its
input, its output (the block "delta" a + m), the residual state after it, and its own post-RoPE K/V.
An architecture is the vanilla block plus a *reader* of that memory with four hooks:

    z_l   = reader.block_input(l, h_{l-1}, mem)        # what block l consumes (vanilla: h_{l-1})
    y     = reader.attend(l, attn, q, k, v, mem)       # block l's attention (vanilla: causal)
    h_l   = z_l + delta_l;  reader.record(l, ...)      # write to the memory
    h_out = reader.readout(h_L, mem)                   # what the final norm + head read

Readers are nn.Modules built in two steps: the constructor takes only the switches (so a YAML can
name them), ``bind(cfg)`` creates the parameters once the model's shape is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lit_vattn import attention
from lit_vattn.config import GPTConfig


@dataclass
class DepthMemory:
    """What the blocks of one forward pass have written; lives for that pass only."""

    x0: Tensor  # (B, T, D) token embedding
    outputs: list[Tensor] = field(default_factory=list)  # block deltas a_l + m_l, each (B, T, D)
    states: list[Tensor] = field(default_factory=list)  # residual states h_l after block l, each (B, T, D)
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # own post-RoPE (k, v), (B, H, T, d)
    feats: list[Tensor] = field(default_factory=list)  # LAS feature maps, each (B, T, D)
    keep_kv: frozenset = frozenset()  # layers whose K/V a later layer reads
    rope: tuple = ()  # (cos, sin) tables, for readers that project K from other inputs


class Arch(nn.Module):
    """Base reader = the vanilla decoder: reads nothing from the memory."""

    name = "vanilla"
    cfg: GPTConfig

    def bind(self, cfg: GPTConfig) -> "Arch":
        self.cfg = cfg
        self.validate(cfg)
        return self

    def validate(self, cfg: GPTConfig) -> None:
        """Raise ValueError naming the switch when a setting cannot work for this shape."""

    def switches(self) -> dict:
        """The constructor arguments, for checkpoints and tables."""
        return {}

    def kv_layers(self) -> frozenset:
        """Layers whose own K/V must be kept in the memory for a later layer."""
        return frozenset()

    def block_input(self, l: int, h: Tensor, mem: DepthMemory) -> Tensor:
        return h

    def attend(self, l: int, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, mem: DepthMemory) -> Tensor:
        return attention.causal(q, k, v)

    def record(self, l: int, z: Tensor, delta: Tensor, h: Tensor, mem: DepthMemory) -> None:
        pass

    def readout(self, h: Tensor, mem: DepthMemory) -> Tensor:
        return h

    def extra_attention_flops(self, T: int) -> float:
        """Training FLOPs per token spent in attention beyond the vanilla 12 * L * D * T."""
        return 0.0

    @torch.no_grad()
    def depth_map(self) -> dict[str, Tensor]:
        """Named matrices for analysis (depth-attention maps); empty for vanilla."""
        return {}


class Vanilla(Arch):
    """The plain LLaMA-style decoder: every block reads only the residual stream below it."""
