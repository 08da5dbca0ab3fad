"""How a modality's prompts become token ids and sampled ids become files, for ``lit-vattn-generate``.

A modality that can be sampled names its ``Samples`` class in its ``Modality`` (``samples=``); the
command reads the run's modality from its config, lets the class refuse a prompt that cannot work
before anything is loaded (``check_prompt``), then builds it on the run's DataModule (whose
tokenizer or codec encodes the prompt exactly as the training data was) and the model's context.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Optional

import torch


class Samples(abc.ABC):
    """One modality's prompt reader and sample writer, on a run's DataModule ``dm``."""

    separator: int
    """The token between documents / pieces / clips: an unconditional sample starts after it, and a
    sample ends at it."""
    boundary: Optional[float] = None
    """Where the prompt ends, in the plot's time unit (set by ``prompt``)."""

    def __init__(self, dm, context: int):
        self.dm, self.context = dm, context

    @classmethod
    def check_prompt(cls, args) -> None:
        """Refuse ``args.prompt`` (and its options) when it cannot work, before the checkpoint loads;
        by default nothing to check (a text prompt is checked when the run's tokenizer encodes it)."""
        return None

    @abc.abstractmethod
    def prompt(self, args) -> list[int]:
        """The prompt's ids (``args.prompt``; None: unconditional), starting with the separator."""

    def allowed(self) -> Optional[Callable[[int], Optional[torch.Tensor]]]:
        """A mask of the ids each position may hold, for ``sample``; None = every id."""
        return None

    @abc.abstractmethod
    def write(self, ids: list[int], stem: Path) -> list[Path]:
        """Write the sample ``ids`` (prompt included) as ``stem.*`` files; return their paths."""


def finish_plot(fig, ax, stem: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, lay out and write ``<stem>.png`` atomically (``plotting.savefig``); close the figure."""
    from lit_vattn.plotting import plt, savefig

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = stem.with_suffix(".png")
    savefig(fig, png)
    plt().close(fig)
    return png
