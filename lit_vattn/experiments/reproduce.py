"""``lit-vattn-reproduce``: one NLL table per modality, every architecture under the same budget.

Each (architecture, seed) is trained and tested through the same ``lit-vattn fit``/``test``
commands a user runs (in one process, ``fit_then_test``; ``--two-processes`` for two), composing ``configs/data/<modality>.yaml`` and ``configs/arch/<arch>.yaml`` with the preset
``configs/reproduce/<preset>.yaml`` (and ``<modality>-<preset>.yaml`` if present), so data, tokens,
width, depth, optimizer and schedule are equal across architectures. A run that finished
(``done.json``) is skipped; one that stopped early resumes from its ``last.ckpt``. Ctrl-C or
SIGTERM stops the command: the running runs are stopped, reported as interrupted (never failed) and
resumed by the next invocation, no other run starts, no table is written, and it exits 130 (143);
only a run that itself failed (divergence, an error) is marked failed (``failed.json``). With
``--records`` each run's record (``lit_vattn.experiments.records``) is kept beside the table, and a recorded run
counts as finished on a fresh machine. ``--lrs`` tunes each method's lr on the first seed, or on
``--lr-seed`` kept out of the table (``records.tune``, ``records.choose_lr``). Then ``lit_vattn.experiments.tables`` writes ``results/<modality>-<preset>.md`` (aggregated,
with the tests) and ``.csv`` (one row per run) with the command, commit, date, hardware and wall
time, plus the loss and budget curves.

    lit-vattn-reproduce --modality text --preset tiny --archs vanilla,va,las,sla --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules import modalities
from lit_vattn.arch.registry import CONFIG_DIR, arch_configs, config_path, default_request
from lit_vattn.experiments.records import (
    CLUSTERS,
    COUNTS,
    DATA,
    DONE,
    FIT,
    TEST,
    RunRecord,
    check_same_override,
    keep_data,
    override_changes,
    override_pairs,
    restore_data,
    tune,
)
from lit_vattn.experiments.records import choose_lr as choose_lr  # re-exported: the rule --lrs applies
from lit_vattn.experiments.tables import declared_families, write_tables
from lit_vattn.provenance import git_commit


def configs(modality: str, arch: str, preset: str, config_dir: Path) -> list[str]:
    """``--config`` flags: the modality's data config, the method's, the preset, then the preset's
    overlay for the modality if there is one: ``<modality>-<preset>.yaml``, or for a preset of a
    numbered family (``ladder-3``) the family's ``<modality>-<family>.yaml``."""
    data, method = config_dir / "data" / f"{modality}.yaml", config_path(arch, config_dir)
    for path, flag in ((data, f"--modality {modality}"), (method, f"--archs {arch}")):
        if not path.exists():
            raise FileNotFoundError(f"no config {path} for {flag}")
    preset_file = config_dir / "reproduce" / f"{preset}.yaml"
    if not preset_file.exists():
        raise FileNotFoundError(f"no preset {preset_file} (--preset {preset})")
    out = ["--config", str(data), "--config", str(method), "--config", str(preset_file)]
    family, _, k = preset.rpartition("-")
    for name in (f"{modality}-{preset}", *([f"{modality}-{family}"] if family and k.isdigit() else [])):
        extra = config_dir / "reproduce" / f"{name}.yaml"
        if extra.exists():
            out += ["--config", str(extra)]
            break
    return out


def check_override_keeps_methods(archs: list[str], override: list[str], config_dir: Path) -> None:
    """An --override must not change what a method's own config sets (a control such as frozen VA is
    ``mix_lr_mult: 0``): the runs would be another model under the control's name."""
    import yaml

    for arch in archs:
        why = override_changes(yaml.safe_load(config_path(arch, config_dir).read_text()) or {}, override)
        if why:
            raise SystemExit(
                f"--archs {arch}: its config {config_path(arch, config_dir)} sets {why}, which would make its runs "
                "another model under its name: leave it out of this command (or give it a config of its own)"
            )


def threads_per_process(n: int) -> int:
    """Intra-op threads for each of ``n`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // n)


class Runner:
    def __init__(self, args):
        self.args = args
        self.root = Path(args.runs)
        self.config_dir = Path(args.config_dir)
        self.stop_signal: Optional[int] = None  # set by SIGINT/SIGTERM: no run starts after it
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()
        self._slot = threading.local()  # which of the --parallel slots this thread's run occupies
        self.gpus = visible_gpus() if args.parallel > 1 else []

    @contextmanager
    def stopping_on_signals(self):
        """While the runs go on, SIGINT and SIGTERM stop the command instead of killing it: the
        signal is passed on to the running ``lit-vattn`` processes (a Ctrl-C reaches them through
        the terminal's process group too; Lightning ignores a second one), and no further run is
        started. The handlers are the process's own again afterwards."""

        def stop(signum, frame):
            self.stop_signal = signum
            with self._procs_lock:
                for p in self._procs:
                    if p.poll() is None:
                        p.send_signal(signum)

        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def run_name(self, arch: str, seed: int, lr: Optional[float] = None) -> str:
        """``<modality>-<preset>/<arch>/seed<s>``; a run of an --lrs sweep: ``.../<arch>/lr<lr>/seed<s>``."""
        sub = f"{arch}/seed{seed}" if lr is None else f"{arch}/lr{lr:g}/seed{seed}"
        return f"{self.args.modality}-{self.args.preset}/{sub}"

    @property
    def table_dirs(self) -> list[Path]:
        """Where this table's runs and records live: ``<runs>/<modality>-<preset>`` (and under --records)."""
        name = f"{self.args.modality}-{self.args.preset}"
        return [self.root / name] + ([Path(self.args.records) / name] if self.args.records else [])

    def run_dir(self, arch: str, seed: int, lr: Optional[float] = None) -> Path:
        return self.root / self.run_name(arch, seed, lr)

    def record_dir(self, arch: str, seed: int, lr: Optional[float] = None) -> Optional[Path]:
        return Path(self.args.records) / self.run_name(arch, seed, lr) if self.args.records else None

    def keep(self, arch: str, seed: int, lr: Optional[float] = None) -> None:
        """Copy the run's record to --records (``RunRecord.copy_record``)."""
        rec, d = self.record_dir(arch, seed, lr), self.run_dir(arch, seed, lr)
        if rec is not None and rec.resolve() != d.resolve():
            RunRecord(d).copy_record(rec)

    def recorded(self, arch: str, seed: int, lr: Optional[float] = None) -> Optional[dict]:
        """A finished run kept under --records and absent under --runs (made earlier
        or on another machine): its numbers, its run_dir pointing at the record, which holds every
        file a table reads."""
        rec = self.record_dir(arch, seed, lr)
        if rec is None or not RunRecord(rec).is_done or RunRecord(self.run_dir(arch, seed, lr)).is_done:
            return None
        return {**RunRecord.at(rec).done, "run_dir": str(rec)}

    def _cmd(self, sub: str, arch: str, seed: int, version: str, lr: Optional[float] = None) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "lit_vattn",
            sub,
            *configs(a.modality, arch, a.preset, self.config_dir),
            "--seed_everything",
            str(seed),
            "--data.init_args.seed",
            str(seed),
            *(["--model.init_args.lr", repr(lr)] if lr is not None else []),  # exact: the saved config gives it back
            "--trainer.logger.init_args.save_dir",
            str(self.root),
            "--trainer.logger.init_args.name",
            self.run_name(arch, seed, lr),
            "--trainer.logger.init_args.version",
            version,
            *a.override,
        ]

    @property
    def env(self) -> dict:
        """The runs' environment: with --parallel N > 1 each run gets cores / N intra-op threads
        (unless OMP_NUM_THREADS is set), since N runs each spreading over every core contend; on 2
        cores two 1-thread runs train 1.34x the tokens per second of one 2-thread run."""
        env = dict(os.environ)
        if self.args.parallel > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(threads_per_process(self.args.parallel))
        slot = getattr(self._slot, "index", None)
        if self.gpus and slot is not None:  # slot k runs on GPU k mod N: concurrent runs spread over the GPUs
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def run_all(self, jobs: list[tuple]) -> list[dict]:
        """Every job through ``one``, --parallel at a time; each run holds one slot while it trains."""
        slots: queue.SimpleQueue = queue.SimpleQueue()
        for k in range(max(1, self.args.parallel)):
            slots.put(k)

        def job(j: tuple) -> dict:
            self._slot.index = slots.get()
            try:
                return self.one(*j)
            finally:
                slots.put(self._slot.index)
                self._slot.index = None

        with ThreadPoolExecutor(max_workers=max(1, self.args.parallel)) as pool:
            return list(pool.map(job, jobs))

    def run_jobs(self, jobs: list[tuple]) -> list[dict]:
        """Each (arch, seed[, lr]) job's numbers: trained here (``run_all``), or with --table-only read
        from the finished runs' summaries. An interruption (Ctrl-C, SIGTERM) stops the command with
        128 + the signal once the running runs have stopped, so no table is written from a part."""
        if self.args.table_only:  # summaries made here or on other machines, copied under --runs
            return [self.summary(*job) for job in jobs]
        with self.stopping_on_signals():
            results = self.run_all(jobs)
        stopped = [r for r in results if r.get("interrupted")]
        if stopped or self.stop_signal is not None:
            sig = self.stop_signal or signal.SIGINT
            print(
                f"interrupted ({signal.Signals(sig).name}): {len(stopped)} run(s) stopped or not started, no table "
                "written; run the same command again to resume them",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + sig)
        return results

    def _call(self, cmd: list[str], log: Path) -> None:
        """One ``lit-vattn`` command; ``RunInterrupted`` when a signal stopped it (or the command),
        ``RunFailed`` when it failed by itself."""
        if self.stop_signal is not None:
            raise RunInterrupted(f"not started: {signal.Signals(self.stop_signal).name}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=self.env)
            with self._procs_lock:
                self._procs.add(p)
            try:
                rc = p.wait()
            finally:
                with self._procs_lock:
                    self._procs.discard(p)
        if rc != 0:
            tail = log.read_text()[-3000:]
            reason = f"exit {rc}: {failure_reason(tail)}"
            if self.stop_signal is not None or rc < 0 or rc in (130, 143) or is_interruption(tail):
                raise RunInterrupted(reason)
            raise RunFailed(reason, f"{' '.join(cmd)}\nlog {log}:\n{tail}")

    def summary(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        """The finished run's done.json (for --table-only); its run_dir is re-rooted here. A run
        recorded as failed (``failed.json``, e.g. a diverged lr of a sweep) comes back as failed."""
        kept = self.recorded(arch, seed, lr)
        if kept is not None:
            return kept
        d = self.run_dir(arch, seed, lr)
        run = RunRecord.at(d)
        failed = run.failed
        if not run.is_done and failed is not None and not is_interruption(failed["failed"]):
            self.keep(arch, seed, lr)
            return {**failed, "run_dir": str(d)}
        if not run.is_done:
            raise SystemExit(
                f"--table-only: {arch} seed {seed}{'' if lr is None else f' lr {lr:g}'} has no finished "
                f"summary {d / DONE}; run it first (without --table-only) or copy its run directory under --runs"
            )
        self.keep(arch, seed, lr)
        return {**run.done, "run_dir": str(d)}

    def one(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        """A finished run's numbers, or {"failed": reason}: a diverged or crashed run never scores.
        The failure is kept in ``failed.json`` beside the run, so --table-only can report it."""
        try:
            return self._one(arch, seed, lr)
        except RunInterrupted as e:
            ckpt = RunRecord(self.run_dir(arch, seed, lr)).checkpoint
            resume = f"resumes from {ckpt}" if ckpt.exists() else "starts afresh (no checkpoint yet)"
            print(
                f"[interrupted] {arch} seed {seed}{'' if lr is None else f' lr {lr:g}'} ({e}): the same command "
                f"{resume}",
                file=sys.stderr,
                flush=True,
            )
            return {
                "arch": arch,
                "seed": seed,
                "lr": lr,
                "interrupted": str(e),
                "run_dir": str(self.run_dir(arch, seed, lr)),
            }
        except RunFailed as e:
            print(
                f"[failed] {arch} seed {seed}{'' if lr is None else f' lr {lr:g}'}: {e.reason}\n{e.detail}",
                file=sys.stderr,
                flush=True,
            )
            d = self.run_dir(arch, seed, lr)
            r = {"arch": arch, "seed": seed, "lr": lr, "failed": e.reason, "run_dir": str(d)}
            RunRecord(d).write_failed(r)
            self.keep(arch, seed, lr)
            return r

    def _one(self, arch: str, seed: int, lr: Optional[float] = None) -> dict:
        d = self.run_dir(arch, seed, lr)
        run = RunRecord(d)
        what = f"{arch} seed {seed}" + ("" if lr is None else f" lr {lr:g}")
        kept = self.recorded(arch, seed, lr)
        if kept is not None:
            print(f"[skip] {what}: recorded ({kept['run_dir']})", flush=True)
            return kept
        if run.is_done:
            print(f"[skip] {what}: finished ({d / DONE})", flush=True)
            self.keep(arch, seed, lr)
            return run.done
        run.clear_failed()  # a new attempt
        ckpt = run.checkpoint
        t0 = time.time()
        fit = self._cmd("fit", arch, seed, FIT, lr)
        resumed = ckpt.exists()
        if resumed:
            print(f"[resume] {what} from {ckpt}", flush=True)
            fit += ["--ckpt_path", str(ckpt)]
        else:
            print(f"[train] {what}", flush=True)
        test = self._cmd("test", arch, seed, TEST, lr) + ["--ckpt_path", str(ckpt)]
        if getattr(self.args, "two_processes", False):
            self._call(fit, d / "fit.log")
            self._call(test, d / "test.log")
        else:  # the same two commands in one process (``fit_then_test``): one start-up, identical records
            both = [sys.executable, "-m", "lit_vattn.experiments.fit_then_test", *fit[4:], "--then", *test[4:]]
            self._call(both, d / "run.log")
        unit = modalities()[self.args.modality].metric
        fs, ts = run.fit_summary, run.test_summary  # written by the runs themselves (RunSummary)
        stats, val, test = fs["stats"], fs["val"][-1] if fs.get("val") else {}, ts.get("test", {})
        result = {
            "arch": arch,
            "seed": seed,
            "lr": run.lr,
            "params": stats["params"],
            "tokens_seen": stats["tokens_seen"],
            "steps": stats["global_step"],
            "val_nll": val.get("nll"),
            "test_nll": test.get("nll"),
            f"val_{unit}": val.get(unit),
            f"test_{unit}": test.get(unit),
            "tokens_per_sec": stats["tokens_per_sec"],
            "peak_memory_gib": stats["peak_memory_gib"],
            "flops_per_token": stats["flops_per_token"],
            "device": stats["device"],
            "train_tokens": stats.get("train_tokens"),
            "data_digest": stats.get("data_digest"),
            "commit": git_commit(),
            "wall_seconds": time.time() - t0,
            "resumed": resumed,
            "override": list(self.args.override),
            "run_dir": str(d),
        }
        run.write_done(result)
        self.keep(arch, seed, lr)
        return result


def visible_gpus() -> list[str]:
    """The GPUs runs may use: the entries of CUDA_VISIBLE_DEVICES where it is set (ids or UUIDs),
    otherwise every device torch counts; none on a machine without CUDA."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


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


class RunInterrupted(Exception):
    """A run stopped by a signal (Ctrl-C, SIGTERM, a killed process): resumable, never failed."""


def is_interruption(reason: str) -> bool:
    """Whether a run's exit reason is an interruption rather than a failure of its own (also for
    ``failed.json`` files that older versions wrote for interrupted runs)."""
    return "KeyboardInterrupt" in reason or "SIGTERM" in reason


class RunFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def failure_reason(log_tail: str) -> str:
    """The last exception line of a failed run's log (e.g. the divergence message)."""
    lines = [x for x in log_tail.splitlines() if x.strip()]
    errs = [x for x in lines if "Error:" in x or "Error(" in x]
    return (errs[-1] if errs else lines[-1] if lines else "no output")[:300]


def check_one_data(results: list[dict], counts: Optional[list[dict]]) -> None:
    """Refuse a table whose runs (or count rows) were trained on different data: every run records the
    digest of its data's content (``datamodules.shards.digest``); records made before digests were
    kept have none and are checked by ``check_recorded_data`` instead."""
    seen: dict[str, list[str]] = {}
    for r in results:
        if r.get("data_digest"):
            seen.setdefault(r["data_digest"], []).append(f"{r['arch']} seed {r['seed']}")
    for c in counts or []:
        if c.get("data_digest"):
            seen.setdefault(c["data_digest"], []).append(c["arch"])
    if len(seen) > 1:
        raise SystemExit(
            "these runs were trained on different data (content digests differ), so they cannot share a table: "
            + "; ".join(f"{d[:12]}: {', '.join(who[:4])}{' ...' if len(who) > 4 else ''}" for d, who in seen.items())
            + ". Retrain the odd ones on the same data (same source and package versions), or keep them apart "
            "with another --runs/--records"
        )


def shard_cache(override: list[str]) -> Path:
    """The shard cache the runs read: ``--override --data.init_args.cache_dir`` or the default."""
    from datamodules.shards import default_cache_dir

    given = dict(override_pairs(override)).get("data.init_args.cache_dir")
    return Path(given).expanduser() if given else default_cache_dir()


def restore_recorded_data(args) -> list[Path]:
    """Before preparing any data for new runs into committed records: the token shards those records
    keep (``records.keep_data``) go into this machine's shard cache, so the new runs train on the
    recorded runs' tokens where a rebuild would differ (acoustic tokens)."""
    if not args.records or args.table_only:
        return []
    restored = restore_data(Path(args.records) / f"{args.modality}-{args.preset}", shard_cache(args.override))
    for d in restored:
        print(f"[data] the records' token shards restored to {d}", flush=True)
    return restored


def keep_recorded_data(args, finished: list[dict]) -> Optional[Path]:
    """After the runs: keep the table's token shards with its records where the data do not rebuild
    exactly (``records.keep_data``)."""
    if not args.records or args.table_only or not finished:
        return None
    from lit_vattn.train.cli import from_run_config

    dm = from_run_config(RunRecord.at(finished[0]["run_dir"]).config_path).datamodule
    return keep_data(Path(args.records) / f"{args.modality}-{args.preset}", dm)


def check_recorded_data(args) -> None:
    """Before training anything into committed records: the data prepared on this machine must be the
    data the recorded runs were trained on. Their count rows (``counts.json``, computed from the
    training split and scored on the same targets) are recomputed here and must agree to float
    rounding; where they carry a digest, the digests must be equal. Data built from a synthesiser or
    a codec can change with a package version without changing a token count."""
    if not args.records or args.table_only or args.no_baselines:
        return
    table_dir = Path(args.records) / f"{args.modality}-{args.preset}"
    saved = table_dir / COUNTS
    done = next(iter(sorted(table_dir.glob("**/done.json"))), None)
    if not saved.is_file() or done is None:
        return
    recorded = json.loads(saved.read_text())
    here = count_baselines([{"run_dir": str(done.parent)}])
    for old, new in zip(recorded, here):
        same = (
            old["data_digest"] == new["data_digest"]
            if old.get("data_digest") and new.get("data_digest")
            else all(abs(old[k] - new[k]) <= 1e-9 * abs(old[k]) for k in ("val_nll", "test_nll"))
        )
        if not same:
            raise SystemExit(
                f"the {args.modality} data prepared on this machine differ from the data the runs in {table_dir} "
                f"were trained on ({old['arch']}: recorded val NLL {old['val_nll']:.6f}, here {new['val_nll']:.6f}; "
                f"digest recorded {str(old.get('data_digest'))[:12]}, here {str(new.get('data_digest'))[:12]}), "
                "so new runs would not be comparable with them: prepare the data as they were (same source and "
                "package versions), or start the table afresh under another --records"
                + (
                    f"; the records keep their token shards in {table_dir / DATA}: move this machine's shard "
                    f"directory of that name out of {shard_cache(args.override)} and they are used instead"
                    if (table_dir / DATA).is_dir()
                    else ""
                )
            )


def count_baselines(results: list[dict], max_train_tokens: int = 50_000_000) -> list[dict]:
    """Unigram and bigram count models of the training split, scored on the targets the runs were
    scored on (their DataModule, their limit_{val,test}_batches, each rank's slice when the runs
    used several processes); see lit_vattn/experiments/baselines.py."""
    from torch.utils.data import DataLoader

    from datamodules.windows import EvalWindows
    from lit_vattn.experiments import baselines
    from lit_vattn.train.cli import from_run_config

    cli = from_run_config(RunRecord.at(results[0]["run_dir"]).config_path)
    dm, trainer = cli.datamodule, cli.trainer
    dm.prepare_data()
    dm.setup()
    train = np.asarray(dm._data["train"][:max_train_tokens])
    models = [baselines.Unigram(train, dm.vocab_size), baselines.Bigram(train, dm.vocab_size)]
    units = dm.units_per_token
    # the runs' world size: under DDP each rank scored its own slice, cut at limit_*_batches
    world = int(RunRecord.at(results[0]["run_dir"]).fit_summary["stats"].get("world_size", 1))
    scored = {}
    for split, limit in (("val", trainer.limit_val_batches), ("test", trainer.limit_test_batches)):
        loaders = [
            DataLoader(EvalWindows(dm._data[split], dm.seq_len, r, world), batch_size=dm.batch_size)
            for r in range(world)
        ]
        scored[split] = baselines.score_ranks(
            models, [(ld, baselines.n_batches(limit, len(ld))) for ld in loaders], units
        )
    return [
        {
            "arch": m.name,
            "train_tokens": len(train),
            "split_tokens": len(dm._data["train"]),
            "data_digest": getattr(dm, "data_digest", None),
            **{f"{split}_{k}": v for split in scored for k, v in scored[split][m.name].items()},
        }
        for m in models
    ]


def table_counts(args, runner: "Runner", finished: list[dict]) -> Optional[list[dict]]:
    """The table's count rows (``count_baselines``), saved beside the runs (and the records) as
    ``counts.json``; with --table-only the saved file, where the runs' data may be absent. None for
    a probe (its floor is its chance line), with --no-baselines, or when they cannot be computed (the
    runs are done: a failing extra row must not cost the table)."""
    if args.no_baselines or modalities()[args.modality].probe:
        return None
    name = f"{args.modality}-{args.preset}"
    saved = runner.root / name / COUNTS
    try:
        if saved.exists() and args.table_only:
            counts = json.loads(saved.read_text())
        else:
            counts = count_baselines(finished)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(counts, indent=2))
        if args.records:
            kept = Path(args.records) / name / COUNTS
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(counts, indent=2))
    except Exception as e:
        print(f"[warn] count baselines left out of the table: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return None
    return counts


def table_clusters(args, runner: "Runner", finished: list[dict]):
    """The test windows' documents (``tables.Clusters``) for the bootstrap over documents: read
    from the data of the table's first run and saved beside the runs (and the records) as
    ``clusters.json``; with --table-only the saved file, so a table rebuilds without its data.
    None (the bootstrap resamples windows) where none was saved or the data mark no documents."""
    from lit_vattn.experiments.tables import Clusters
    from lit_vattn.train.cli import from_run_config

    name = f"{args.modality}-{args.preset}"
    saved = runner.root / name / CLUSTERS
    if args.table_only and not getattr(args, "find_documents", False):
        return Clusters.load(saved)
    dm = from_run_config(RunRecord.at(finished[0]["run_dir"]).config_path).datamodule
    dm.prepare_data()
    dm.setup()
    docs = dm.test_documents()
    if docs is None:
        return None
    clusters = Clusters(docs, modalities()[args.modality].documents)
    for root in (runner.root, *([Path(args.records)] if args.records else [])):
        clusters.save(root / name / CLUSTERS)
    return clusters


def parse_request(args, config_dir: Path) -> tuple[list[str], list[int]]:
    """--archs and --seeds, checked before anything runs; each bad value is a one-line error."""
    valid = arch_configs(config_dir)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if not archs:
        raise SystemExit(f"--archs {args.archs!r} names no architecture; choose from: {', '.join(valid)}")
    unknown = [a for a in archs if a not in valid]
    if unknown:
        raise SystemExit(
            f"--archs: unknown {', '.join(unknown)} for --modality {args.modality}; choose from: {', '.join(valid)}"
        )
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds {args.seeds!r} must name distinct non-negative integers, e.g. 0,1,2")
    return list(dict.fromkeys(archs)), seeds


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", required=True, choices=sorted(modalities()))
    p.add_argument("--preset", default="tiny", help="tiny (CPU), small (~20 M, GPU), base (GPT-2 small shape, GPU)")
    p.add_argument(
        "--archs",
        default=",".join(default_request()),
        help="comma-separated methods (configs/arch/<name>.yaml) and controls or readings "
        "(configs/arch/controls/<name>.yaml, e.g. va-frozen, sla-far); default: every registered "
        "method and the default controls",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", default="runs/reproduce", help="where run directories go")
    p.add_argument(
        "--out",
        default="results",
        help="where the tables go; a table of fewer than the default "
        "architectures, fewer than 3 seeds or with a failed run gets its own file name, never <modality>-<preset>.md",
    )
    p.add_argument(
        "--lrs",
        default=None,
        help="tune each method's learning rate: every value on the first seed, the one with the lowest final "
        "validation NLL chosen (test never consulted), the other seeds trained at it; runs go to "
        "<arch>/lr<lr>/seed<s>; the table lists the choice and every value's validation NLL. Without it "
        "every method trains at the preset's lr",
    )
    p.add_argument(
        "--lr-seed",
        type=int,
        default=None,
        help="the seed the --lrs sweep runs on (default: the first of --seeds). A seed not in --seeds keeps "
        "the choice out of the table: the table's seeds all train at the chosen lr, none was used to choose it",
    )
    p.add_argument(
        "--widen",
        type=int,
        default=0,
        help="with --lrs: where a method's choice falls on the grid's edge, extend its grid past that edge by the "
        "grid's ratio there, up to this many values per side (default 0: the grid as given)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at once; with N GPUs visible, the run in slot k gets GPU k mod N alone (CUDA_VISIBLE_DEVICES), "
        "so 8 slots on 8 GPUs is one run per GPU and 16 is two; on the CPU each run gets cores / slots threads",
    )
    p.add_argument(
        "--records",
        default=None,
        help="also keep each run's record (done.json, the fit/test summaries, the config; no "
        "checkpoint, no log: ~20 kB) under this directory, laid out like --runs, e.g. results/records: "
        "commit it beside the table, and `--table-only --runs <it>` rebuilds the table anywhere. A run "
        "recorded there and absent under --runs counts as finished, so a sweep that outlasts one machine "
        "continues from the committed records on a fresh one. Where preparing the data again would give other "
        "tokens (acoustic), the table's token shards are kept there too (<table>/data/, ~1 MB at tiny) and "
        "restored into the shard cache before new runs",
    )
    p.add_argument(
        "--two-processes",
        action="store_true",
        help="run each run's `lit-vattn fit` and `lit-vattn test` as two processes (logs fit.log, test.log) "
        "instead of one (run.log); the records are the same either way",
    )
    p.add_argument("--config-dir", default=str(CONFIG_DIR))
    p.add_argument("--no-baselines", action="store_true", help="leave out the unigram/bigram count rows")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: build the table from the finished runs' summaries (done.json) under --runs, "
        "e.g. run directories copied back from a GPU machine (checkpoints not needed); a missing run is an error",
    )
    p.add_argument(
        "--family",
        action="append",
        default=[],
        metavar="NAME=ARCH,ARCH",
        help="a comparison family, declared before the runs (repeat for more), e.g. --family primary=va,sla,las "
        "--family secondary=denseformer,hc: each is Holm-corrected on its own, and archs no family names form "
        "the family 'other'. Without it, one family: the whole table",
    )
    p.add_argument(
        "--find-documents",
        action="store_true",
        help="with --table-only: read the test split's documents from the runs' data (saved as clusters.json "
        "beside the runs and records) instead of from a saved clusters.json, so the bootstrap resamples "
        "documents in a table whose runs predate the file",
    )
    p.add_argument(
        "--override",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after this is passed to every lit-vattn call, e.g. --override --trainer.max_steps 50; "
        "runs already under --runs and --records must have been made with the same overrides (checked before "
        "training anything), so runs of other settings need their own folders",
    )
    args = p.parse_args(argv)
    archs, seeds = parse_request(args, Path(args.config_dir))
    lrs = parse_lrs(args.lrs)
    families = declared_families(args.family, archs)  # refused before any run
    if (args.lr_seed is not None or args.widen) and not lrs:
        raise SystemExit(
            "--lr-seed and --widen choose among the --lrs grid: give --lrs too, e.g. --lrs 3e-3,6e-3,1.2e-2"
        )
    if args.widen < 0 or (args.lr_seed is not None and args.lr_seed < 0):
        raise SystemExit("--widen and --lr-seed must be non-negative integers")
    if "vanilla" in archs:  # the baseline first, so the table reads top-down
        archs.remove("vanilla")
        archs.insert(0, "vanilla")
    runner = Runner(args)
    threads = runner.env.get("OMP_NUM_THREADS")
    print(
        f"[threads] {args.parallel} run(s) at once, each with "
        f"{threads + ' intra-op thread(s) (OMP_NUM_THREADS)' if threads else 'torch default intra-op threads'}",
        flush=True,
    )
    for a in archs:
        configs(args.modality, a, args.preset, runner.config_dir)  # fail before training anything
    check_override_keeps_methods(archs, args.override, runner.config_dir)
    restore_recorded_data(args)
    check_recorded_data(args)  # before training anything into records made on other data
    check_same_override(runner.table_dirs, archs, args.override, made_with=not args.table_only)
    t0 = time.time()

    run = runner.run_jobs
    sweep = []
    if lrs:  # every lr on the tuning seed, the choice by validation NLL, then the table's seeds at the choice
        tuning_seed = seeds[0] if args.lr_seed is None else args.lr_seed
        sweep, chosen = tune(run, archs, tuning_seed, lrs, args.widen)
        rest = run([(a, s, chosen[a]) for s in seeds if s != tuning_seed for a in archs if chosen[a] is not None])
        kept = [
            r for r in sweep if chosen[r["arch"]] is None or (tuning_seed in seeds and chosen[r["arch"]] == r["lr"])
        ]
        results = kept + rest
    else:
        results = run([(a, s) for s in seeds for a in archs])
    wall = sum(r.get("wall_seconds", 0.0) for r in results) if args.table_only else time.time() - t0
    finished = [r for r in results if not r.get("failed")]
    if not finished:
        raise SystemExit(
            "every run failed; no table is written: "
            + "; ".join(f"{r['arch']} seed {r['seed']}: {r['failed']}" for r in results)
        )
    counts = table_counts(args, runner, finished)
    check_one_data(finished, counts)
    keep_recorded_data(args, finished)
    clusters = None if modalities()[args.modality].probe else table_clusters(args, runner, finished)
    md, _ = write_tables(args, results, wall, counts, sweep, clusters=clusters, families=families)
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
