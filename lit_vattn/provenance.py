"""Provenance of what the suite writes: the commit and the hardware, one home each."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short HEAD, with "+dirty" when tracked code or configs differ from it. Files under results/
    are what these scripts write, so a run rewriting its own table does not make itself dirty.
    ``LIT_VATTN_COMMIT``, when set, names the commit instead: for a copy of the tree shipped to
    another machine, whose git metadata (if any) need not be the tree's."""
    if os.environ.get("LIT_VATTN_COMMIT"):
        return os.environ["LIT_VATTN_COMMIT"] + " (LIT_VATTN_COMMIT)"
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = (
            subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)results"], cwd=ROOT).returncode != 0
        )
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def hardware(devices: list[str] | None = None) -> str:
    """The hardware a table's runs used: their device names, or for CPU runs this machine's CPU."""
    if devices and devices != ["cpu"]:
        return ", ".join(devices)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
