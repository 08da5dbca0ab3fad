"""A run of ``lit-vattn-reproduce``, read from its directory: the one home of that layout.

    <run>/done.json                 the finished run's numbers (``RunRecord.write_done``)
    <run>/failed.json               a run that failed by itself (divergence, an error)
    <run>/fit/config.yaml           the training config Lightning saved
    <run>/fit/summary.json          ``RunSummary`` of the fit: train loss, validation, curve, stats
    <run>/test/summary.json         ``RunSummary`` of the test: test metrics, per-window sums
    <run>/fit/checkpoints/last.ckpt the model (never part of a record)

A *record* is the first five files (~20 kB, no checkpoint, no log): committed beside a table, it
rebuilds the table anywhere. Beside a table's records, ``<table>/data/<shard key>/`` keeps its token
shards where preparing them again would not give the same tokens (``keep_data``, ``restore_data``). Each file is read once per process while it is unchanged
(``RunRecord.at`` caches the object; its properties cache the files).
"""

from __future__ import annotations

import json
import shutil
from functools import cached_property
from pathlib import Path
from typing import Optional

from lit_vattn.io import atomic_replace, write_json

FIT, TEST = "fit", "test"  # the version folders of a reproduce run: fit, then test of its last checkpoint
CONFIG, SUMMARY = "config.yaml", "summary.json"  # what every lit-vattn run directory holds
DONE, FAILED, COUNTS = "done.json", "failed.json", "counts.json"  # reproduce's: a run's outcome, a table's count rows
CLUSTERS = "clusters.json"  # a table's test windows grouped by document (tables.Clusters)
DATA = "data"  # a table's token shards, kept where a rebuild differs (keep_data)
FILES = (DONE, FAILED, f"{FIT}/{CONFIG}", f"{FIT}/{SUMMARY}", f"{TEST}/{SUMMARY}")
_OPENED: dict[Path, tuple[tuple, "RunRecord"]] = {}  # RunRecord.at's cache: path -> (the files' mtimes, record)


class RunRecord:
    """One run directory (or its committed record)."""

    def __init__(self, path):
        self.path = Path(path)

    @staticmethod
    def at(path) -> RunRecord:
        """The record of ``path``, its files read once per process while they are unchanged (a run
        resumed or re-tested in the same process is read afresh)."""
        p = Path(path).resolve()
        stamp = tuple((p / f).stat().st_mtime_ns if (p / f).is_file() else None for f in FILES)
        hit = _OPENED.get(p)
        if hit is None or hit[0] != stamp:
            hit = _OPENED[p] = (stamp, RunRecord(p))
        return hit[1]

    # --- where things are ----------------------------------------------------------------------
    @property
    def fit_dir(self) -> Path:
        return self.path / FIT

    @property
    def test_dir(self) -> Path:
        return self.path / TEST

    @property
    def checkpoint(self) -> Path:
        return self.fit_dir / "checkpoints" / "last.ckpt"

    @property
    def config_path(self) -> Path:
        return self.fit_dir / CONFIG

    @property
    def is_done(self) -> bool:
        return (self.path / DONE).is_file()

    # --- what it holds -------------------------------------------------------------------------
    @cached_property
    def config(self) -> dict:
        import yaml

        return yaml.safe_load(self.config_path.read_text()) if self.config_path.is_file() else {}

    @property
    def lr(self) -> Optional[float]:
        """The peak learning rate the run trained at, from its saved config."""
        lr = ((self.config.get("model") or {}).get("init_args") or {}).get("lr")
        return float(lr) if lr is not None else None

    @cached_property
    def done(self) -> dict:
        """The finished run's numbers; the lr read from its config when the file predates that field."""
        r = json.loads((self.path / DONE).read_text())
        return r if r.get("lr") is not None else {**r, "lr": self.lr}

    @property
    def failed(self) -> Optional[dict]:
        path = self.path / FAILED
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def fit_summary(self) -> dict:
        return read_summary(self.fit_dir)

    @cached_property
    def test_summary(self) -> dict:
        return read_summary(self.test_dir)

    @property
    def curve(self) -> list[dict]:
        """The budget curve's points (``BudgetCurve``), [] when the run has none."""
        return self.fit_summary.get("curve") or [] if (self.fit_dir / SUMMARY).is_file() else []

    def test_windows(self, field: str = "nll") -> Optional[dict]:
        """{window index: (summed ``field``, tokens)} of the test ("nll", or "correct" for a probe's
        top-1 hits), if the test recorded them."""
        if not (self.test_dir / SUMMARY).is_file():
            return None
        w = self.test_summary.get("test_windows")
        return {i: (n, t) for i, n, t in zip(w["index"], w[field], w["tokens"])} if w and field in w else None

    # --- writing -------------------------------------------------------------------------------
    def override_conflict(self, override: list[str], made_with: bool = True) -> Optional[str]:
        """Why this run is not the run ``--override`` asks for, or None: a saved config whose value of
        an overridden key differs (checked for runs still training too, so a resume cannot continue
        another model), or with ``made_with`` a finished run made with other overrides (``done.json``
        records them since they were recorded)."""
        made = self.done.get("override") if made_with and self.is_done else None
        if made is not None and made != list(override):
            return f"made with --override {' '.join(self.done['override']) or '(none)'}"
        why = override_changes(self.config, override)
        return f"its config has {why}" if why else None

    def write_done(self, result: dict) -> None:
        write_json(self.path / DONE, result)

    def write_failed(self, result: dict) -> None:
        write_json(self.path / FAILED, result)

    def clear_failed(self) -> None:
        (self.path / FAILED).unlink(missing_ok=True)

    def copy_record(self, dest: Path) -> None:
        """Copy the record (``FILES``) to ``dest``, replacing any older one whole: written beside
        the destination, then renamed, so an interruption leaves no half record."""
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for f in FILES:
            if (self.path / f).is_file():
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.path / f, tmp / f)
        atomic_replace(tmp, dest)


_MISSING = object()


def override_pairs(override: list[str]) -> list[tuple[str, str]]:
    """The (dotted key, value) pairs of ``--key value`` / ``--key=value`` arguments."""
    out, i = [], 0
    while i < len(override):
        tok = override[i]
        if tok.startswith("--") and "=" in tok:
            key, _, value = tok[2:].partition("=")
            out.append((key, value))
        elif tok.startswith("--") and i + 1 < len(override) and not override[i + 1].startswith("--"):
            out.append((tok[2:], override[i + 1]))
            i += 1
        i += 1
    return out


def override_changes(config: dict, override: list[str]) -> Optional[str]:
    """The first ``--override`` key whose value differs from the one ``config`` (a nested dict, as
    saved or as written in a YAML) sets, as "key: value, this command --key other"; None if none."""
    for key, value in override_pairs(override):
        node = config
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING and not _same_value(node, value):
            return f"{key}: {node!r}, this command --{key} {value}"
    return None


def _same_value(saved, given: str) -> bool:
    """A saved config value equals a command-line one (parsed as YAML: 10 == 10.0, true == True)."""
    import yaml

    try:
        value = yaml.safe_load(given)
    except yaml.YAMLError:
        value = given
    if isinstance(saved, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(saved) == float(value)
    return saved == value or str(saved) == given


def check_same_override(table_dirs: list[Path], archs: list[str], override: list[str], made_with: bool = True) -> None:
    """Before training anything: every run of ``archs`` already under these table directories
    (finished, recorded or resumable: what the command would skip, resume or tabulate) must be the run
    this command's ``--override`` makes, else its scores would land under the wrong model."""
    bad = []
    configs = sorted(c for t in table_dirs for a in archs for c in (Path(t) / a).glob(f"**/{FIT}/{CONFIG}"))
    for config in configs:
        why = RunRecord.at(config.parent.parent).override_conflict(override, made_with)
        if why:
            bad.append(f"{config.parent.parent}: {why}")
    if bad:
        raise SystemExit(
            f"{len(bad)} run(s) already there were made with other settings than this command's --override "
            f"{' '.join(override) or '(none)'}, e.g. " + "; ".join(bad[:3]) + ". Give runs of other settings "
            "their own --runs and --records (e.g. --runs runs/mix10 --records results/records/mix10), or repeat "
            "the --override they were made with"
        )


def read_summary(run_dir) -> dict:
    """A run's ``summary.json`` (written by ``RunSummary``), or an error naming what is missing."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run has not finished a validation, test or training "
            "(RunSummary writes it; it is on unless --summary is disabled)"
        )
    return json.loads(path.read_text())


def choose_lr(sweep: list[dict]) -> Optional[float]:
    """The selection rule of --lrs: the learning rate whose run on the tuning seed has the lowest
    final validation NLL (test NLL is never looked at); a diverged or failed run is not a
    candidate; None when every candidate failed."""
    import math

    ok = [r for r in sweep if not r.get("failed") and r.get("val_nll") is not None and math.isfinite(r["val_nll"])]
    return min(ok, key=lambda r: (r["val_nll"], r["lr"]))["lr"] if ok else None


def tune(
    run, archs: list[str], seed: int, grid: list[float], widen: int = 0
) -> tuple[list[dict], dict[str, Optional[float]]]:
    """Every lr of ``grid`` on ``seed`` for each arch and the choice (``choose_lr``: lowest final
    validation NLL). Where a choice falls on the grid's edge, that arch's grid is extended past the
    edge by the grid's own ratio there, one value at a time, at most ``widen`` values per side, so
    an optimum outside the stated grid is found instead of reported as an edge. ``run`` trains (or,
    for --table-only, reads) a list of (arch, seed, lr) jobs; the same records give the same
    choices. Returns every tuning run and arch -> chosen lr (None when every lr failed)."""
    tried = {a: sorted(grid) for a in archs}
    sweep = run([(a, seed, lr) for a in archs for lr in grid])
    added = {a: {"low": 0, "high": 0} for a in archs}
    while True:
        chosen = {a: choose_lr([r for r in sweep if r["arch"] == a]) for a in archs}
        more = []
        for a in archs:
            g, c = tried[a], chosen[a]
            if c is None or len(g) < 2:
                continue
            side = "low" if c == g[0] else "high" if c == g[-1] else None
            if side is None or added[a][side] >= widen:
                continue
            lr = g[0] * g[0] / g[1] if side == "low" else g[-1] * g[-1] / g[-2]
            lr = float(f"{lr:.6g}")  # 3e-3 * 2 gives 0.006, not 0.006000000000000001: a run name and a config value
            added[a][side] += 1
            tried[a] = sorted(g + [lr])
            more.append((a, seed, lr))
        if not more:
            return sweep, chosen
        sweep += run(more)


def keep_data(table_dir: Path, dm) -> Optional[Path]:
    """Keep a prepared DataModule's token shards under ``<table_dir>/data/<shard key>`` when preparing
    them again would give other tokens (``dm.rebuilds_exactly`` false: synthesised speech through a
    codec), so runs added to the table on another machine train on the same data (``restore_data``).
    The tokens only (``shards.TOKEN_FILES``, ~1 MB for ``acoustic-tiny``), no tokenizer or codec.
    Returns the kept directory, or None where the data rebuild exactly."""
    from datamodules import shards

    if getattr(dm, "rebuilds_exactly", True):
        return None
    dest = Path(table_dir) / DATA / dm.shard_dir.name
    shards.copy_tokens(dm.shard_dir, dest)
    return dest


def restore_data(table_dir: Path, cache_dir: Path) -> list[Path]:
    """Put the token shards a table keeps (``keep_data``) into the shard cache, where the same shard
    key is not there yet, so this machine's runs read the recorded runs' tokens instead of
    preparing their own. Returns the shard directories restored."""
    from datamodules import shards

    kept = Path(table_dir) / DATA
    out = []
    for d in sorted(kept.iterdir()) if kept.is_dir() else []:
        if shards.is_complete(d) and shards.copy_tokens(d, Path(cache_dir) / d.name):
            out.append(Path(cache_dir) / d.name)
    return out


def seed_runs(arch_dir: Path, seeds: list[int]) -> dict[int, RunRecord]:
    """The finished runs of one method on ``seeds``: the one folder holding all of them, the method's
    own (runs at one lr) or one of its lr folders (a tuned table keeps the other lrs on its tuning
    seed only)."""
    folders = [arch_dir, *sorted(arch_dir.glob("lr*"))]
    full = [d for d in folders if all(RunRecord(d / f"seed{s}").is_done for s in seeds)]
    if len(full) != 1:
        found = [d.name for d in full] or "none"
        raise SystemExit(f"{arch_dir}: need one lr folder with finished runs on seeds {seeds}, found {found}")
    return {s: RunRecord.at(full[0] / f"seed{s}") for s in seeds}
