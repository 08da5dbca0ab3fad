"""What a modality is to the rest of the suite, and what a DataModule promises the model.

``Modality``: the name runs and tables use (``text``, ``music``, ``acoustic``, or a probe's task),
the comparable unit its NLL is also reported in, and the metric a table shows beside NLL. Each
DataModule class declares its own (``modality_of``), so run names, tables and metrics name no
modality themselves.

``DataContract``: what a DataModule tells the model it feeds, declared once and checked at setup
(``LanguageModel.setup``): the window length, the unit, each token id's units, and whether
evaluation scores top-1 accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def unit_metric(unit: str) -> str:
    """The metric of a unit: bits per byte / note / second; a plain token has "bits_per_unit"."""
    return "bits_per_unit" if unit == "token" else f"bits_per_{unit}"


@dataclass(frozen=True)
class Modality:
    name: str
    unit: str
    """The comparable unit: byte (text), note (music), second (audio), token (no other unit)."""
    label: str
    """How tables head the metric, e.g. "bits/byte"."""
    probe: bool = False
    """Scored by top-1 accuracy on answers (higher is better) instead of NLL: an in-context probe."""

    @property
    def metric(self) -> str:
        """What a table reports beside NLL: the unit's bits, or a probe's accuracy."""
        return "acc" if self.probe else unit_metric(self.unit)


@dataclass(frozen=True)
class DataContract:
    seq_len: int
    """Tokens per window: must not exceed the model's context (``config.max_seq_len``)."""
    batch_size: int
    """Windows per batch on each device (for FLOPs per batch)."""
    unit: str
    """The comparable unit of ``units_per_token``."""
    units_per_token: Optional[torch.Tensor]
    """(V,) units each token id stands for; None when the data has no unit besides the token."""
    report_accuracy: bool = False
    """Evaluation also scores top-1 accuracy on the scored targets."""


def modality_of(data_class: type, init_args: Optional[dict] = None) -> Modality:
    """The modality a DataModule class with these arguments produces, without building it."""
    return data_class.modality_for(init_args or {})


def modalities() -> dict[str, Modality]:
    """Every modality the suite's DataModules produce (each class declares its own), by name."""
    import datamodules  # noqa: F401  (every shipped DataModule class, so that each declares itself)
    from datamodules.base import StreamDataModule

    out, todo = {}, [StreamDataModule]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        out.update({m.name: m for m in cls.modalities()})
    return dict(sorted(out.items()))
