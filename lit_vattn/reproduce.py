"""``lit-vattn-reproduce``: one NLL table per modality, every architecture under the same budget.

Each (architecture, seed) is trained and tested through the same ``lit-vattn fit``/``test``
commands a user runs, composing ``configs/data/<modality>.yaml`` and ``configs/arch/<arch>.yaml`` with the preset
``configs/reproduce/<preset>.yaml`` (and ``<modality>-<preset>.yaml`` if present), so data, tokens,
width, depth, optimizer and schedule are equal across architectures. A run that finished
(``done.json``) is skipped; one that stopped early resumes from its ``last.ckpt``. Then
``results/<modality>-<preset>.md`` (aggregated) and ``.csv`` (one row per run) are written with
the command, commit, date, hardware and wall time, plus ``-loss.png`` (training curves).

    lit-vattn-reproduce --modality text --preset tiny --archs vanilla,va,las,sla --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import numpy as np

from lit_vattn.callbacks import read_summary
from lit_vattn.curves import plot_budget, plot_curves

ROOT = Path(__file__).resolve().parents[1]
UNIT = {"text": ("bits_per_byte", "bits/byte"), "music": ("bits_per_note", "bits/note"),
        "acoustic": ("bits_per_second", "bits/s"), "mqar": ("acc", "accuracy"), "copy": ("acc", "accuracy")}
# the in-context probes (configs/data/{mqar,copy}.yaml): their tables test accuracy on the answers
# (higher is better) instead of NLL, and have no count-model rows (a chance line instead)
PROBES = ("mqar", "copy")
# what --records keeps of a run: the files a table reads (and the per-step metrics), no checkpoint,
# no log; a few tens of kB, meant for committing beside the table
RECORD_FILES = ("done.json", "failed.json", "fit/config.yaml", "fit/summary.json", "fit/metrics.csv",
                "test/summary.json", "test/metrics.csv")


def git_commit() -> str:
    """Short HEAD, with "+dirty" when tracked code or configs differ from it. Files under results/
    are what these scripts write, so a run rewriting its own table does not make itself dirty.
    ``LIT_VATTN_COMMIT``, when set, names the commit instead: for a copy of the tree shipped to
    another machine, whose git metadata (if any) need not be the tree's."""
    if os.environ.get("LIT_VATTN_COMMIT"):
        return os.environ["LIT_VATTN_COMMIT"] + " (LIT_VATTN_COMMIT)"
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)results"], cwd=ROOT).returncode != 0
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def configs(modality: str, arch: str, preset: str, config_dir: Path) -> list[str]:
    """``--config`` flags: the modality's data config, the method's, the preset, then the preset's
    overlay for the modality if there is one."""
    data, method = config_dir / "data" / f"{modality}.yaml", config_dir / "arch" / f"{arch}.yaml"
    for path, flag in ((data, f"--modality {modality}"), (method, f"--archs {arch}")):
        if not path.exists():
            raise FileNotFoundError(f"no config {path} for {flag}")
    preset_file = config_dir / "reproduce" / f"{preset}.yaml"
    if not preset_file.exists():
        raise FileNotFoundError(f"no preset {preset_file} (--preset {preset})")
    out = ["--config", str(data), "--config", str(method), "--config", str(preset_file)]
    extra = config_dir / "reproduce" / f"{modality}-{preset}.yaml"
    if extra.exists():
        out += ["--config", str(extra)]
    return out


class Runner:
    def __init__(self, args):
        self.args = args
        self.root = Path(args.runs)
        self.config_dir = Path(args.config_dir)

    def run_name(self, arch: str, seed: int, lr: Optional[float] = None) -> str:
        """``<modality>-<preset>/<arch>/seed<s>``; a run of an --lrs sweep: ``.../<arch>/lr<lr>/seed<s>``."""
        sub = f"{arch}/seed{seed}" if lr is None else f"{arch}/lr{lr:g}/seed{seed}"
        return f"{self.args.modality}-{self.args.preset}/{sub}"

    def run_dir(self, arch: str, seed: int, lr: Optional[float] = None) -> Path:
        return self.root / self.run_name(arch, seed, lr)

    def record_dir(self, arch: str, seed: int, lr: Optional[float] = None) -> Optional[Path]:
        return Path(self.args.records) / self.run_name(arch, seed, lr) if self.args.records else None

    def keep(self, arch: str, seed: int, lr: Optional[float] = None) -> None:
        """Copy the run's record (``RECORD_FILES``) to --records, replacing any older one whole:
        written beside the destination, then renamed, so an interruption leaves no half record."""
        rec, d = self.record_dir(arch, seed, lr), self.run_dir(arch, seed, lr)
        if rec is None or rec.resolve() == d.resolve():
            return
        tmp = rec.with_name(rec.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for f in RECORD_FILES:
            if (d / f).is_file():
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(d / f, tmp / f)
        shutil.rmtree(rec, ignore_errors=True)
        os.replace(tmp, rec)

    def recorded(self, arch: str, seed: int, lr: Optional[float] = None) -> Optional[dict]:
        """A finished run kept under --records and absent under --runs (made in an earlier session
        or on another machine): its numbers, its run_dir pointing at the record, which holds every
        file a table reads."""
        rec = self.record_dir(arch, seed, lr)
        if rec is None or not (rec / "done.json").is_file() or (self.run_dir(arch, seed, lr) / "done.json").exists():
            return None
        return {**read_done(rec), "run_dir": str(rec)}

    def _cmd(self, sub: str, arch: str, seed: int, version: str, lr: Optional[float] = None) -> list[str]:
        a = self.args
        return [sys.executable, "-m", "lit_vattn", sub, *configs(a.modality, arch, a.preset, self.config_dir),
                "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
                *(["--model.init_args.lr", repr(lr)] if lr is not None else []),  # exact: the saved config gives it back
                "--trainer.logger.init_args.save_dir", str(self.root),
                "--trainer.logger.init_args.name", self.run_name(arch, seed, lr),
                "--trainer.logger.init_args.version", version, *a.override]

    @property
    def env(self) -> dict:
        """The runs' environment: with --parallel N > 1 each run gets cores / N intra-op threads
        (unless OMP_NUM_THREADS is set), since N runs each spreading over every core contend; on 2
        cores two 1-thread runs train 1.34x the tokens per second of one 2-thread run."""
        env = dict(os.environ)
        if self.args.parallel > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.args.parallel))
        return env

    def _call(self, cmd: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=self.env)
        if p.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RunFailed(f"exit {p.returncode}: {failure_reason(tail)}", f"{' '.join(cmd)}\nlog {log}:\n{tail}")

    def summary(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        """The finished run's done.json (for --table-only); its run_dir is re-rooted here. A run
        recorded as failed (``failed.json``, e.g. a diverged lr of a sweep) comes back as failed."""
        kept = self.recorded(arch, seed, lr)
        if kept is not None:
            return kept
        d = self.run_dir(arch, seed, lr)
        done, failed = d / "done.json", d / "failed.json"
        if not done.exists() and failed.exists():
            self.keep(arch, seed, lr)
            return {**json.loads(failed.read_text()), "run_dir": str(d)}
        if not done.exists():
            raise SystemExit(f"--table-only: {arch} seed {seed}{'' if lr is None else f' lr {lr:g}'} has no finished "
                             f"summary {done}; run it first (without --table-only) or copy its run directory under --runs")
        self.keep(arch, seed, lr)
        return {**read_done(d), "run_dir": str(d)}

    def one(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        """A finished run's numbers, or {"failed": reason}: a diverged or crashed run never scores.
        The failure is kept in ``failed.json`` beside the run, so --table-only can report it."""
        try:
            return self._one(arch, seed, lr)
        except RunFailed as e:
            print(f"[failed] {arch} seed {seed}{'' if lr is None else f' lr {lr:g}'}: {e.reason}\n{e.detail}",
                  file=sys.stderr, flush=True)
            d = self.run_dir(arch, seed, lr)
            r = {"arch": arch, "seed": seed, "lr": lr, "failed": e.reason, "run_dir": str(d)}
            d.mkdir(parents=True, exist_ok=True)
            (d / "failed.json").write_text(json.dumps(r, indent=2))
            self.keep(arch, seed, lr)
            return r

    def _one(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        d = self.run_dir(arch, seed, lr)
        done = d / "done.json"
        what = f"{arch} seed {seed}" + ("" if lr is None else f" lr {lr:g}")
        kept = self.recorded(arch, seed, lr)
        if kept is not None:
            print(f"[skip] {what}: recorded ({kept['run_dir']})", flush=True)
            return kept
        if done.exists():
            print(f"[skip] {what}: finished ({done})", flush=True)
            self.keep(arch, seed, lr)
            return read_done(d)
        (d / "failed.json").unlink(missing_ok=True)  # a new attempt
        fit_dir, test_dir = d / "fit", d / "test"
        ckpt = fit_dir / "checkpoints" / "last.ckpt"
        t0 = time.time()
        fit = self._cmd("fit", arch, seed, "fit", lr)
        resumed = ckpt.exists()
        if resumed:
            print(f"[resume] {what} from {ckpt}", flush=True)
            fit += ["--ckpt_path", str(ckpt)]
        else:
            print(f"[train] {what}", flush=True)
        self._call(fit, d / "fit.log")
        self._call(self._cmd("test", arch, seed, "test", lr) + ["--ckpt_path", str(ckpt)], d / "test.log")
        unit = UNIT[self.args.modality][0]
        fs, ts = read_summary(fit_dir), read_summary(test_dir)  # written by the runs themselves (RunSummary)
        stats, val, test = fs["stats"], fs["val"][-1] if fs.get("val") else {}, ts.get("test", {})
        result = {
            "arch": arch, "seed": seed, "lr": run_lr(fit_dir), "params": stats["params"], "tokens_seen": stats["tokens_seen"],
            "steps": stats["global_step"], "val_nll": val.get("nll"), "test_nll": test.get("nll"),
            f"val_{unit}": val.get(unit), f"test_{unit}": test.get(unit),
            "tokens_per_sec": stats["tokens_per_sec"], "peak_memory_gib": stats["peak_memory_gib"],
            "flops_per_token": stats["flops_per_token"], "device": stats["device"],
            "train_tokens": stats.get("train_tokens"), "commit": git_commit(),
            "wall_seconds": time.time() - t0, "resumed": resumed, "run_dir": str(d),
        }
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, done)
        self.keep(arch, seed, lr)
        return result


def run_lr(fit_dir: Path) -> Optional[float]:
    """The peak learning rate the run trained at, from the config Lightning saved."""
    import yaml

    cfg = Path(fit_dir) / "config.yaml"
    if not cfg.is_file():
        return None
    lr = ((yaml.safe_load(cfg.read_text()).get("model") or {}).get("init_args") or {}).get("lr")
    return float(lr) if lr is not None else None


def read_done(run_dir: Path) -> dict:
    """A finished run's ``done.json``; the lr read from its config when the file predates that field."""
    r = json.loads((run_dir / "done.json").read_text())
    return r if r.get("lr") is not None else {**r, "lr": run_lr(run_dir / "fit")}


def parse_lrs(text: Optional[str]) -> list[float]:
    """--lrs: distinct positive floats, ascending; [] when not given."""
    if not text:
        return []
    try:
        lrs = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--lrs {text!r} must be comma-separated numbers, e.g. 1e-3,3e-3,1e-2") from None
    if len(lrs) < 2 or min(lrs) <= 0:
        raise SystemExit(f"--lrs {text!r} must name at least two distinct positive learning rates, e.g. 1e-3,3e-3,1e-2")
    return lrs


def choose_lr(sweep: list[dict]) -> Optional[float]:
    """The selection rule of --lrs: the learning rate whose run on the tuning seed has the lowest
    final validation NLL (test NLL is never looked at); a diverged or failed run is not a
    candidate; None when every candidate failed."""
    ok = [r for r in sweep if not r.get("failed") and r.get("val_nll") is not None and math.isfinite(r["val_nll"])]
    return min(ok, key=lambda r: (r["val_nll"], r["lr"]))["lr"] if ok else None


class RunFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def failure_reason(log_tail: str) -> str:
    """The last exception line of a failed run's log (e.g. the divergence message)."""
    lines = [x for x in log_tail.splitlines() if x.strip()]
    errs = [x for x in lines if "Error:" in x or "Error(" in x]
    return (errs[-1] if errs else lines[-1] if lines else "no output")[:300]


def count_baselines(results: list[dict], max_train_tokens: int = 50_000_000) -> list[dict]:
    """Unigram and bigram count models of the training split, scored on the targets the runs were
    scored on (their DataModule, their limit_{val,test}_batches, each rank's slice when the runs
    used several processes); see lit_vattn/baselines.py."""
    from torch.utils.data import DataLoader

    from datamodules.windows import EvalWindows
    from lit_vattn import baselines
    from lit_vattn.cli import from_run_config

    cli = from_run_config(Path(results[0]["run_dir"]) / "fit" / "config.yaml")
    dm, trainer = cli.datamodule, cli.trainer
    dm.prepare_data()
    dm.setup()
    train = np.asarray(dm._data["train"][:max_train_tokens])
    models = [baselines.Unigram(train, dm.vocab_size), baselines.Bigram(train, dm.vocab_size)]
    units = dm.units_per_token
    # the runs' world size: under DDP each rank scored its own slice, cut at limit_*_batches
    world = int(read_summary(Path(results[0]["run_dir"]) / "fit")["stats"].get("world_size", 1))
    scored = {}
    for split, limit in (("val", trainer.limit_val_batches), ("test", trainer.limit_test_batches)):
        loaders = [DataLoader(EvalWindows(dm._data[split], dm.seq_len, r, world), batch_size=dm.batch_size)
                   for r in range(world)]
        scored[split] = baselines.score_ranks(models, [(ld, baselines.n_batches(limit, len(ld))) for ld in loaders], units)
    return [{"arch": m.name, "train_tokens": len(train), "split_tokens": len(dm._data["train"]), **{f"{split}_{k}": v for split in scored
             for k, v in scored[split][m.name].items()}} for m in models]


DEFAULT_ARCHS = "vanilla,va,las,sla"  # the least a table must hold to take the canonical name
# the default request: the seed methods and every method the field compares them with
ALL_ARCHS = DEFAULT_ARCHS + ",denseformer,hc,mudd,attnres,dca,value-residual,lime,laurel,elc-bert"


def table_stem(args, results: list[dict]) -> str:
    """``<modality>-<preset>`` only for a complete table: every default architecture, >= 3 seeds,
    every run finished. Anything less gets a name of its own, so it never replaces a committed table."""
    archs = list(dict.fromkeys(r["arch"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    complete = (set(DEFAULT_ARCHS.split(",")) <= set(archs) and len(seeds) >= 3
                and not any(r.get("failed") for r in results))
    stem = f"{args.modality}-{args.preset}"
    if complete:
        return stem
    stem += f"-{'-'.join(archs)}-seeds{'-'.join(map(str, seeds))}"
    return stem + ("-incomplete" if any(r.get("failed") for r in results) else "")


def epochs(results: list[dict], counts: Optional[list[dict]] = None) -> str:
    """Tokens seen over the training split's size (the runs' own stats; else the count models',
    which read the whole training split of the same data)."""
    fallback = counts[0].get("split_tokens", counts[0]["train_tokens"]) if counts else None
    e = sorted({round(r["tokens_seen"] / (r.get("train_tokens") or fallback), 2) for r in results
                if r.get("train_tokens") or fallback})
    return ", ".join(f"{x:g}" for x in e) if e else "n/a"


def scored_fraction(results: list[dict]) -> str:
    """What part of val/test the runs scored, read from the first run's saved config."""
    import yaml

    for r in results:
        cfg_path = Path(r["run_dir"]) / "fit" / "config.yaml"
        if cfg_path.exists():
            t = yaml.safe_load(cfg_path.read_text()).get("trainer", {})
            lv, lt = t.get("limit_val_batches"), t.get("limit_test_batches")
            part = lambda v: "the whole split" if v in (None, 1.0) else (f"the first {v} batches" if isinstance(v, int) else f"{v:.0%} of the batches")  # noqa: E731
            return f"val: {part(lv)}; test: {part(lt)} (data.batch_size windows of data.seq_len tokens)"
    return "n/a"


def parse_request(args, config_dir: Path) -> tuple[list[str], list[int]]:
    """--archs and --seeds, checked before anything runs; each bad value is a one-line error."""
    valid = sorted(q.stem for q in (config_dir / "arch").glob("*.yaml"))
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if not archs:
        raise SystemExit(f"--archs {args.archs!r} names no architecture; choose from: {', '.join(valid)}")
    unknown = [a for a in archs if a not in valid]
    if unknown:
        raise SystemExit(f"--archs: unknown {', '.join(unknown)} for --modality {args.modality}; choose from: {', '.join(valid)}")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds {args.seeds!r} must name distinct non-negative integers, e.g. 0,1,2")
    return list(dict.fromkeys(archs)), seeds


def fmt(xs: list[float], digits: int = 4) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{mean(xs):.{digits}f} ± {stdev(xs):.{digits}f}"


def _windows(r: dict, field: str = "nll") -> Optional[dict]:
    """The run's per-test-window sums ({index: (sum of field, tokens)}; field "nll", or "correct"
    for a probe's top-1 hits), if its test recorded them."""
    path = Path(r["run_dir"]) / "test" / "summary.json"
    w = json.loads(path.read_text()).get("test_windows") if path.is_file() else None
    return {i: (n, t) for i, n, t in zip(w["index"], w[field], w["tokens"])} if w and field in w else None


def window_diffs(rs: list[dict], base: dict, field: str = "nll") -> Optional[tuple[list[float], list[int]]]:
    """Per test window: the seed-mean difference to vanilla of the window's summed ``field`` and
    the scored tokens, over the seeds both finished; None when a run lacks windows or the windows
    differ."""
    per_seed = []
    for r in rs:
        if r["seed"] not in base:
            continue
        a, v = _windows(r, field), _windows(base[r["seed"]], field)
        if a is None or v is None or a.keys() != v.keys():
            return None
        per_seed.append({i: (a[i][0] - v[i][0], a[i][1]) for i in a})
    if not per_seed:
        return None
    keys = sorted(per_seed[0])
    return [mean(p[i][0] for p in per_seed) for i in keys], [per_seed[0][i][1] for i in keys]


# A control or a second reading of a method -> the method it is read against (besides vanilla): the
# table's "controls" section tests each against its method, so "caused by X" claims have a test.
# ELC-BERT-style weighting (normalised learned layer weights, no attention) is there as VA's
# simplest explanation: is VA more than that?
CONTROLS = {"va-frozen": "va", "va-nonorm": "va", "va-previous": "va", "elc-bert": "va", "sla-far": "sla",
            "las-all": "las", "las-norm": "las", "vanilla-flops-las": "las", "attnres-block": "attnres",
            "value-residual-learned": "value-residual"}


def significance(archs: list[str], by: dict, base: dict, probe: bool = False) -> dict[str, tuple]:
    """arch -> (paired-t p, its Holm p, window-bootstrap Holm p, verdict) against vanilla on the
    seeds both finished (``lit_vattn.stats``): on test NLL (lower is better), or for a probe on
    test accuracy (higher is better; the bootstrap over test examples of their top-1 hits)."""
    return paired_tests([(a, by[a], base) for a in archs if a != "vanilla" and by.get(a)], probe)


def paired_tests(items: list[tuple[str, list[dict], dict]], probe: bool = False) -> dict[str, tuple]:
    """name -> (paired-t p, its Holm p, window-bootstrap Holm p, verdict) of each (name, runs,
    reference runs by seed): the runs against the reference on the seeds both finished, Holm over
    the items."""
    from lit_vattn.stats import holm, paired_bootstrap, paired_t, verdict2

    key, field, sign = ("test_acc", "correct", -1.0) if probe else ("test_nll", "nll", 1.0)
    diffs = [[r[key] - ref[r["seed"]][key] for r in rs if r["seed"] in ref] for _, rs, ref in items]
    raw = [paired_t(d)[1] for d in diffs]
    adj = holm(raw)
    boot = holm([paired_bootstrap(*w) if w else None for w in (window_diffs(rs, ref, field) for _, rs, ref in items)])
    # verdict2 reads a negative difference as "better": an accuracy gain is negated
    return {name: (p, q, b, verdict2(sign * mean(d) if d else None, q, b))
            for (name, _, _), d, p, q, b in zip(items, diffs, raw, adj, boot)}


def control_lines(by: dict, probe: bool = False) -> list[str]:
    """The "controls" section: each control or reading (``CONTROLS``) in the table against its own
    method on the same seeds, with the table's two tests, Holm over these comparisons."""
    pairs = [(c, m) for c, m in CONTROLS.items() if by.get(c) and by.get(m)]
    if not pairs:
        return []
    key = "test_acc" if probe else "test_nll"
    refs = {m: {r["seed"]: r for r in by[m]} for _, m in pairs}  # each method's runs by seed
    tests = paired_tests([(c, by[c], refs[m]) for c, m in pairs], probe)
    what = "accuracy" if probe else "NLL"
    lines = ["", f"Controls against their own method (Δ = the control's test {what} minus the method's on the same seed, "
             "mean ± std; the same two tests, Holm-corrected across these rows; \"better\" = "
             + ("higher accuracy" if probe else "lower NLL") + " than the method):", "",
             f"| control | method | Δ test {what} vs method | p seeds (paired t) | p seeds (Holm) | p windows (bootstrap, Holm) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for c, m in pairs:
        delta = [r[key] - refs[m][r["seed"]][key] for r in by[c] if r["seed"] in refs[m]]
        p, q, b, word = tests[c]
        lines.append(f"| {c} | {m} | {fmt(delta) if delta else '—'} | {pval(p)} | {pval(q)} | {pval(b)} | {word} |")
    return lines


def probe_lines(results: list[dict]) -> list[str]:
    """A probe table's header bullets: the task as configured (from the first run's saved config)
    and its chance accuracy."""
    import yaml

    from datamodules.probes import ProbeDataModule

    cfg = yaml.safe_load((Path(results[0]["run_dir"]) / "fit" / "config.yaml").read_text())
    dm = ProbeDataModule(**cfg["data"]["init_args"])
    return [f"- task: {dm.describe()} (`datamodules/probes.py`)",
            f"- chance accuracy (a uniform guess among the ids an answer can be): {dm.chance_accuracy:.4f}; "
            "NLL columns are over the answers only"]


TUNED_LR = "learning rate: each method's own"  # how a tuned table's header bullet starts (scripts/methods_table.py reads it)


def lr_lines(results: list[dict], sweep: list[dict]) -> list[str]:
    """The header bullet on learning rates and, after an --lrs sweep, its table."""
    if not sweep:
        lrs = sorted({r["lr"] for r in results if r.get("lr") is not None})
        shared = f"{lrs[0]:g} for every method" if len(lrs) == 1 else ", ".join(f"{x:g}" for x in lrs) if lrs else "not recorded"
        return [f"- learning rate: {shared} (the preset's; not tuned per method, so methods with other optima are at a disadvantage)"], []
    grid = sorted({r["lr"] for r in sweep})
    seed = sweep[0]["seed"]
    head = [f"- {TUNED_LR}, chosen from {{{', '.join(f'{x:g}' for x in grid)}}} by the lowest final validation "
            f"NLL of its seed-{seed} run (test never consulted); the other seeds trained at the chosen lr (column lr)"]
    rows = ["", f"Learning-rate sweep (seed {seed}, final validation NLL in nats/token; * = chosen; a choice at the grid's edge "
            "means the optimum may lie outside it):", "", "| arch | " + " | ".join(f"lr {x:g}" for x in grid) + " | chosen |",
            "|---|" + "---|" * (len(grid) + 1)]
    for a in dict.fromkeys(r["arch"] for r in sweep):
        by_lr = {r["lr"]: r for r in sweep if r["arch"] == a}
        best = choose_lr(list(by_lr.values()))
        cells = ["—" if x not in by_lr else "failed" if by_lr[x].get("failed") else
                 f"{by_lr[x]['val_nll']:.4f}" + ("*" if x == best else "") for x in grid]
        edge = " (edge)" if best is not None and best in (grid[0], grid[-1]) else ""
        rows.append(f"| {a} | " + " | ".join(cells) + f" | {'none (every lr failed)' if best is None else f'{best:g}{edge}'} |")
    return head, rows


def write_tables(args, results: list[dict], wall: float, counts: Optional[list[dict]] = None,
                 sweep: Optional[list[dict]] = None) -> tuple[Path, Path]:
    unit, unit_label = UNIT[args.modality]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table_stem(args, results)
    fields = ["arch", "seed", "lr", "failed", "params", "tokens_seen", "steps", "val_nll", "test_nll", f"val_{unit}", f"test_{unit}",
              "tokens_per_sec", "peak_memory_gib", "flops_per_token", "device", "wall_seconds"]
    tmp = stem.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)
    os.replace(tmp, stem.with_suffix(".csv"))

    lr_head, lr_rows = lr_lines(results, sweep or [])
    in_table = {r["run_dir"] for r in results}
    n_resumed = sum(bool(r.get("resumed")) for r in {r["run_dir"]: r for r in results + (sweep or [])}.values())
    sweep_minutes = sum(r.get("wall_seconds", 0.0) for r in sweep or [] if r["run_dir"] not in in_table) / 60
    failed = [r for r in results if r.get("failed")]
    results = [r for r in results if not r.get("failed")]
    archs = list(dict.fromkeys(r["arch"] for r in results + failed))
    by = {a: sorted((r for r in results if r["arch"] == a), key=lambda r: r["seed"]) for a in archs}
    base = {r["seed"]: r for r in by.get("vanilla", [])}
    devices = sorted({r["device"] for r in results})
    hw = ", ".join(devices) if devices != ["cpu"] else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    probe = args.modality in PROBES
    lines = [
        f"# {args.modality} {'in-context probe table (accuracy on the answers)' if probe else 'NLL table'}, preset `{args.preset}`",
        "",
        f"- command: `lit-vattn-reproduce {' '.join(sys.argv[1:])}`",
        f"- commit: {git_commit()} (table); runs made at {', '.join(sorted({r.get('commit', 'not recorded (see results/README.md)') for r in results}))}; "
        f"date: {datetime.date.today().isoformat()}; hardware: {hw}",
        *(probe_lines(results) if probe else [f"- epochs over the training split: {epochs(results, counts)}"]),
        ("- wall time: " if getattr(args, "table_only", False) else f"- wall time: {wall / 60:.1f} min for this invocation; ")
        + f"{sum(r['wall_seconds'] for r in results) / 60:.1f} min summed over the {len(results)} runs"
        + (" (this table was built from their summaries with --table-only)" if getattr(args, "table_only", False) else "")
        + (f"; plus {sweep_minutes:.1f} min for the lr sweep's runs not in the table" if sweep else "")
        + (f"; {n_resumed} run(s) resumed after an interruption count their last attempt only" if n_resumed else ""),
        f"- seeds: {sorted({r['seed'] for r in results + failed})}; each run: same data, tokens, width, depth, optimizer and schedule; "
        f"mean ± sample std over the finished seeds; Δ = paired difference to vanilla on the same seed"
        + (" (of test accuracy)" if probe else ""),
        f"- scored: {scored_fraction(results)}",
        *lr_head,
        ("- tests: per architecture, (1) a two-sided paired t-test over seeds of Δ (test accuracy minus vanilla's on the same "
         "seed: training noise) and (2) a paired bootstrap over the test examples of the seed-mean Δ of their hits (10,000 "
         "resamples: test-set noise), each Holm-corrected across the architectures of this table; verdict \"better\" "
         "(higher accuracy)/\"worse\" when both Holm p < 0.05, otherwise \"no detectable difference\" at this scale "
         "(`lit_vattn/stats.py`)" if probe else
         "- tests: per architecture, (1) a two-sided paired t-test over seeds of Δ (test NLL minus vanilla's on the same seed: "
         "training noise) and (2) a paired bootstrap over the test windows of the seed-mean Δ (10,000 resamples: test-set "
         "noise; windows of one document are not independent, so it is optimistic), each Holm-corrected across the "
         "architectures of this table; verdict \"better\"/\"worse\" when both Holm p < 0.05 (the seed test alone for runs "
         "without per-window NLLs), otherwise \"no detectable difference\" at this scale (`lit_vattn/stats.py`)"),
    ]
    if failed:
        lines.append("- **failed runs (never scored): " + "; ".join(f"{r['arch']} seed {r['seed']}: {r['failed']}" for r in failed) + "**")
    lines += [
        "",
        f"| arch | runs | lr | params | tokens seen | val NLL (nats/token) | test NLL (nats/token) | test {unit_label} "
        f"| Δ test {'accuracy' if probe else 'NLL'} vs vanilla "
        "| p seeds (paired t) | p seeds (Holm) | p windows (bootstrap, Holm) | verdict | tokens/s | peak mem (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tests = significance(archs, by, base, probe)
    key = "test_acc" if probe else "test_nll"
    for a in archs:
        rs = by[a]
        n_failed = sum(r["arch"] == a for r in failed)
        runs = f"{len(rs)}/{len(rs) + n_failed}" + (" (failed: see above)" if n_failed else "")
        if not rs:
            lines.append(f"| {a} | {runs} | — | — | — | failed | failed | failed | — | — | — | — | — | — | — |")
            continue
        p_raw, p_holm, p_boot, word = tests.get(a, (None, None, None, "—"))
        delta = [r[key] - base[r["seed"]][key] for r in rs if r["seed"] in base] if a != "vanilla" else []
        lines.append(
            f"| {a} | {runs} | {lr_cell(rs)} | {rs[0]['params'] / 1e6:.2f} M | {rs[0]['tokens_seen'] / 1e6:.2f} M | {fmt([r['val_nll'] for r in rs])} | "
            f"{fmt([r['test_nll'] for r in rs])} | {fmt([r[f'test_{unit}'] for r in rs], 3)} | "
            f"{fmt(delta) if delta else '—'} | {pval(p_raw)} | {pval(p_holm)} | {pval(p_boot)} | {word} | {fmt([r['tokens_per_sec'] for r in rs], 0)} | "
            f"{max(r['peak_memory_gib'] for r in rs):.2f} |"
        )
    for c in counts or []:
        lines.append(
            f"| {c['arch']} | count model | — | — | {c['train_tokens'] / 1e6:.2f} M counted | {c['val_nll']:.4f} | {c['test_nll']:.4f} | "
            f"{c['test_bits_per_unit']:.3f} | — | — | — | — | — | — | — |"
        )
    if counts:
        lines += ["", "Count rows: unigram (add-one) and bigram (absolute discounting) models of the training split, "
                  "scored on the same val/test targets as the runs (`lit_vattn/baselines.py`)."]
    lines += control_lines(by, probe)
    lines += lr_rows
    budget = plot_budget(results, stem.with_name(stem.name + "-budget"), f"{args.modality}, preset {args.preset}", counts,
                         "acc" if probe else "nll")
    if budget:
        lines += ["", f"Budget curves (validation {'accuracy' if probe else 'NLL'} at log-spaced steps of every run, `--curve.points`; each method's paired "
                  f"difference to vanilla against tokens seen, mean ± std over seeds): `{budget.name}.png`, `{budget.name}.csv`."]
    lines += ["", f"Per-run numbers: `{stem.name}.csv`; training curves: `{stem.name}-loss.png`; run directories under `{args.runs}`"
              + (f"; each run's record (summaries, configs, metrics; what this table reads) under `{args.records}`: "
                 f"`lit-vattn-reproduce <the command's options> --runs {args.records} --table-only` rebuilds it"
                 if getattr(args, "records", None) else "") + "."]
    tmp = stem.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, stem.with_suffix(".md"))
    plot_curves(results, stem.with_name(stem.name + "-loss.png"), f"{args.modality}, preset {args.preset}")
    return stem.with_suffix(".md"), stem.with_suffix(".csv")


def pval(v: Optional[float]) -> str:
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def lr_cell(rs: list[dict]) -> str:
    lrs = sorted({r["lr"] for r in rs if r.get("lr") is not None})
    return ", ".join(f"{x:g}" for x in lrs) or "—"


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", required=True, choices=sorted(UNIT))
    p.add_argument("--preset", default="tiny", help="tiny (CPU), small (~20 M, GPU), base (GPT-2 small shape, GPU)")
    p.add_argument("--archs", default=ALL_ARCHS, help="comma-separated method configs in configs/arch/ (methods, controls such as va-frozen, and readings such as sla-far, las-all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", default="runs/reproduce", help="where run directories go")
    p.add_argument("--out", default="results", help="where the tables go; a table of fewer than the default "
                   "architectures, fewer than 3 seeds or with a failed run gets its own file name, never <modality>-<preset>.md")
    p.add_argument("--lrs", default=None,
                   help="tune each method's learning rate: every value on the first seed, the one with the lowest final "
                   "validation NLL chosen (test never consulted), the other seeds trained at it; runs go to "
                   "<arch>/lr<lr>/seed<s>; the table lists the choice and every value's validation NLL. Without it "
                   "every method trains at the preset's lr")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (several small runs can share one GPU)")
    p.add_argument("--records", default=None,
                   help="also keep each run's record (done.json, the fit/test summaries, config and metrics; no "
                   "checkpoint, no log: tens of kB) under this directory, laid out like --runs, e.g. results/records: "
                   "commit it beside the table, and `--table-only --runs <it>` rebuilds the table anywhere. A run "
                   "recorded there and absent under --runs counts as finished, so a sweep longer than one machine's "
                   "session continues from the committed records on a fresh machine")
    p.add_argument("--config-dir", default=str(ROOT / "configs"))
    p.add_argument("--no-baselines", action="store_true", help="leave out the unigram/bigram count rows")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: build the table from the finished runs' summaries (done.json) under --runs, "
                   "e.g. run directories copied back from a GPU machine (checkpoints not needed); a missing run is an error")
    p.add_argument("--override", nargs=argparse.REMAINDER, default=[],
                   help="everything after this is passed to every lit-vattn call, e.g. --override --trainer.max_steps 50")
    args = p.parse_args(argv)
    archs, seeds = parse_request(args, Path(args.config_dir))
    lrs = parse_lrs(args.lrs)
    if "vanilla" in archs:  # the baseline first, so the table reads top-down
        archs.remove("vanilla")
        archs.insert(0, "vanilla")
    runner = Runner(args)
    for a in archs:
        configs(args.modality, a, args.preset, runner.config_dir)  # fail before training anything
    t0 = time.time()

    def run(jobs: list[tuple]) -> list[dict]:
        if args.table_only:  # summaries made here or on other machines, copied under --runs
            return [runner.summary(*job) for job in jobs]
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            return list(pool.map(lambda job: runner.one(*job), jobs))

    sweep = []
    if lrs:  # every lr on the first seed, the choice by validation NLL, then the other seeds at the choice
        sweep = run([(a, seeds[0], lr) for a in archs for lr in lrs])
        chosen = {a: choose_lr([r for r in sweep if r["arch"] == a]) for a in archs}
        rest = run([(a, s, chosen[a]) for s in seeds[1:] for a in archs if chosen[a] is not None])
        results = [r for r in sweep if chosen[r["arch"]] in (None, r["lr"])] + rest
    else:
        results = run([(a, s) for s in seeds for a in archs])
    wall = sum(r.get("wall_seconds", 0.0) for r in results) if args.table_only else time.time() - t0
    counts = None
    finished = [r for r in results if not r.get("failed")]
    if not finished:
        raise SystemExit("every run failed; no table is written: " + "; ".join(
            f"{r['arch']} seed {r['seed']}: {r['failed']}" for r in results))
    if not args.no_baselines and args.modality not in PROBES:  # a probe's floor is its chance line
        saved = runner.root / f"{args.modality}-{args.preset}" / "counts.json"
        try:
            if saved.exists() and args.table_only:  # computed beside the runs, where their data is
                counts = json.loads(saved.read_text())
            else:
                counts = count_baselines(finished)
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(counts, indent=2))
            if args.records:
                kept = Path(args.records) / f"{args.modality}-{args.preset}" / "counts.json"
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_text(json.dumps(counts, indent=2))
        except Exception as e:  # the runs are done: a failing extra row must not cost the table
            print(f"[warn] count baselines left out of the table: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    md, _ = write_tables(args, results, wall, counts, sweep)
    print(md.read_text())
    return results


def console() -> None:
    """The console script: ``main`` returns its results for Python callers, and a returned object
    would become the process's exit status. A failed run makes it exit 1 (after writing the
    table of the finished runs under a name of its own)."""
    results = main()
    sys.exit(1 if any(r.get("failed") for r in results) else 0)


if __name__ == "__main__":
    console()
