"""What a modality is to the rest of the suite, and what a DataModule promises the model.

``Modality``: the name runs and tables use (``text``, ``music``, ``acoustic``, or a probe's task),
the comparable unit its NLL is also reported in, the metric a table shows beside NLL, and how
``lit-vattn-generate`` reads its prompts and writes its samples. Each
DataModule class declares its own (``MODALITY`` or ``modality_for``; ``datamodules.modalities()``
collects them), so run names, tables and metrics name no modality themselves.

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
    samples: Optional[type] = None
    """Its prompt reader and sample writer (a ``datamodules.samples.Samples``); None: not sampled."""
    documents: str = "documents"
    """What its independent units of test data are called ("pieces", "utterances"): the clusters a
    bootstrap over test data resamples (``DataModule.test_documents``)."""

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
