"""Plotting setup and atomic figure/CSV writes: one home for every PNG and CSV the tools draw."""

from __future__ import annotations

import csv
from pathlib import Path

from lit_vattn.io import atomic_path


def plt():
    """matplotlib.pyplot with the file-only Agg backend (no display on clusters or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def savefig(fig, path: Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def save_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
