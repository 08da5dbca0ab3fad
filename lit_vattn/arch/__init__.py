"""Architectures: each one is a reader of the depth memory (see ``base.py``), one file per method."""

from __future__ import annotations

from typing import Union

from lit_vattn.arch.attnres import AttentionResiduals
from lit_vattn.arch.base import Arch, AttnInputs, Composed, DepthMap, DepthMemory
from lit_vattn.arch.dca import DeepCrossAttention
from lit_vattn.arch.denseformer import DenseFormer
from lit_vattn.arch.hyper_connections import HyperConnections
from lit_vattn.arch.las import LayerwiseAttentionShortcuts
from lit_vattn.arch.laurel import LAuReL
from lit_vattn.arch.lime import LIMe
from lit_vattn.arch.mudd import MUDDFormer
from lit_vattn.arch.sla import SkipLayerAttention
from lit_vattn.arch.vanilla import Vanilla
from lit_vattn.arch.va import VerticalAttention
from lit_vattn.arch.value_residual import ValueResidual

__all__ = ["Arch", "AttentionResiduals", "AttnInputs", "Composed", "DeepCrossAttention", "DenseFormer", "DepthMap",
           "DepthMemory", "HyperConnections", "LAuReL", "LIMe", "LayerwiseAttentionShortcuts", "MUDDFormer",
           "SkipLayerAttention", "ValueResidual", "Vanilla", "VerticalAttention", "as_reader", "registry"]


def registry() -> dict[str, type[Arch]]:
    """Short names used by tables and benchmarks."""
    return {"vanilla": Vanilla, "va": VerticalAttention, "las": LayerwiseAttentionShortcuts, "sla": SkipLayerAttention,
            "denseformer": DenseFormer, "hc": HyperConnections, "mudd": MUDDFormer, "attnres": AttentionResiduals,
            "dca": DeepCrossAttention, "value_residual": ValueResidual, "lime": LIMe, "laurel": LAuReL}


def as_reader(arch: Union[None, Arch, list[Arch]]) -> Arch:
    """One reader from what a config gives: none (vanilla), one, or a list to compose."""
    if arch is None:
        return Vanilla()
    if isinstance(arch, (list, tuple)):
        if not arch:
            raise ValueError("arch: an empty list of readers; leave model.init_args.arch out for the vanilla decoder")
        return arch[0] if len(arch) == 1 else Composed(list(arch))
    return arch
