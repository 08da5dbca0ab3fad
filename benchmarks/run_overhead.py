"""What a table run costs outside training: one ``lit-vattn-reproduce`` run with ``fit`` and ``test``
in one process (the default) against two processes (``--two-processes``), interleaved A B A B ... on
the same machine, each pair from fresh run directories, with the records compared for identity.

    python benchmarks/run_overhead.py --pairs 3 --out results/run-overhead-cpu.md

Reports each mode's wall seconds per run (median and every pair), the paired ratio one/two
processes (median and range), and whether every record (validation and test NLL, parameters,
tokens) is equal across the two modes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lit_vattn.io import write_text
from lit_vattn.provenance import git_commit, hardware

KEYS = ("val_nll", "test_nll", "params", "tokens_seen", "steps")


def one_run(root: Path, two: bool, args: list[str]) -> tuple[float, dict]:
    runs = root / ("two" if two else "one")
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [sys.executable, "-m", "lit_vattn.experiments.reproduce", *args, "--runs", str(runs)]
    cmd += ["--out", str(runs / "tables"), "--no-baselines", *(["--two-processes"] if two else [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    done = json.loads(next(runs.rglob("done.json")).read_text())
    return wall, {k: done.get(k) for k in KEYS}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--modality", default="text")
    p.add_argument("--arch", default="vanilla")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    a = p.parse_args(argv)
    args = ["--modality", a.modality, "--preset", a.preset, "--archs", a.arch, "--seeds", "0"]
    one, two, same = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        one_run(Path(tmp), False, args)  # warm the shard cache and the OS file cache: not timed
        for _ in range(a.pairs):
            w1, r1 = one_run(Path(tmp), False, args)
            w2, r2 = one_run(Path(tmp), True, args)
            one.append(w1)
            two.append(w2)
            same &= r1 == r2
    ratios = [x / y for x, y in zip(one, two)]
    command = f"python benchmarks/run_overhead.py --pairs {a.pairs}" + (f" --out {a.out}" if a.out else "")
    text = f"""# One process or two per table run ({a.modality}, {a.preset}, {a.arch})

- command: `{command}`
- commit: {git_commit()}, date: {time.strftime("%Y-%m-%d")}
- hardware: {hardware()} (torch {torch.__version__}, Python {platform.python_version()})
- what: `lit-vattn-reproduce --modality {a.modality} --preset {a.preset} --archs {a.arch} --seeds 0`, one run (fit + test), from fresh run directories, one then two processes, {a.pairs} interleaved pairs after an untimed warm-up

| mode | median wall s per run | every pair |
|---|---|---|
| one process (`fit_then_test`, default) | {statistics.median(one):.1f} | {", ".join(f"{x:.1f}" for x in one)} |
| two processes (`--two-processes`) | {statistics.median(two):.1f} | {", ".join(f"{x:.1f}" for x in two)} |

Paired ratio one / two processes: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}).
Records equal across the modes ({", ".join(KEYS)}): {"yes" if same else "NO"}.
"""
    print(text)
    if a.out:
        write_text(a.out, text)
    return text


if __name__ == "__main__":
    main()
