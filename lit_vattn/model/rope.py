"""Rotary position embedding: the cos/sin table and its application to (B, H, T, d) heads."""

from __future__ import annotations

import torch
from torch import Tensor


def rope_table(T: int, head_dim: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)  # (T, d/2)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, d); rotate pairs (x1, x2) taken from the two halves of the head dim."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[: x.shape[2]], sin[: x.shape[2]]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
