"""Architectures: each one is a reader of the depth memory (see ``base.py``)."""

from lit_vattn.arch.base import Arch, DepthMemory, Vanilla
from lit_vattn.arch.las import LayerwiseAttentionShortcuts
from lit_vattn.arch.sla import SkipLayerAttention
from lit_vattn.arch.va import VerticalAttention

__all__ = ["Arch", "DepthMemory", "LayerwiseAttentionShortcuts", "SkipLayerAttention", "Vanilla", "VerticalAttention"]


def registry() -> dict[str, type[Arch]]:
    """Short names used by tables and benchmarks."""
    return {"vanilla": Vanilla, "va": VerticalAttention, "las": LayerwiseAttentionShortcuts, "sla": SkipLayerAttention}
