"""One directory per run, whose last checkpoint is always the model at the last completed step.

- ``RunCSVLogger``: Lightning's CSVLogger writing to ``<save_dir>/<name>/`` (no ``version_N``):
  ``fit``, a resumed ``fit`` and ``test``/``validate`` of the same run name share one directory and
  append to one ``metrics.csv`` (Lightning's writer deletes an existing one).
- ``RunCheckpoint``: Lightning's ModelCheckpoint that (1) always writes ``last.ckpt`` when training
  ends, also when ``max_steps`` is not a multiple of ``every_n_train_steps`` (Lightning skips that
  save after a periodic one), and (2) writes every checkpoint atomically: to a temporary file in
  the same directory, then ``os.replace``, so a crash at any moment leaves the previous checkpoint
  readable and never a half-written one (Lightning's own write goes through a temporary file in
  $TMPDIR and a copy when that is another filesystem).
- ``RunLock``: one process at a time per run directory (``fit``, ``test``, ``validate``), so two
  commands never interleave one run's logs and checkpoints.
- ``newest_checkpoint``: where a requeued SLURM job continues its run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Union

from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_vattn.io import atomic_replace, write_json


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and appends to it (its header is read back first, so a new
    column rewrites the file with the old rows intact)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class RunCSVLogger(CSVLogger):
    """CSV metrics in one directory per run name, shared by fit, resumed fit, validate and test."""

    def __init__(
        self,
        save_dir: str = "runs",
        name: Optional[str] = None,
        version: Optional[Union[int, str]] = "",
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        """
        Args:
            save_dir: Root of the run directories.
            name: Run name: the run directory is ``<save_dir>/<name>/``; default (under
                ``lit-vattn``) ``<modality>-<arch>``, e.g. ``text-va``.
            version: Empty (default) = no version subdirectory; an int or a string adds
                ``version_<n>`` or ``<string>`` below the run directory.
            prefix: Prefix of every metric key.
            flush_logs_every_n_steps: How often metrics are written to disk.
        """
        super().__init__(save_dir, name or "default", version, prefix, flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.root_dir if self._version == "" else super().log_dir

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with a final ``last.ckpt`` at the end of training and atomic writes."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        final = Path(filepath)
        # the same name on every rank: a sharded (FSDP) save writes one directory from all of them
        tmp = final.with_name(f".{final.name}.tmp-step{trainer.global_step}")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # ends with a barrier on every rank
        if trainer.is_global_zero:
            if tmp.is_file():
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            atomic_replace(tmp, final)
        trainer.strategy.barrier("RunCheckpoint.replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_end(self, trainer, pl_module) -> None:
        """Lightning saves ``last.ckpt`` here only if nothing was saved before; save it whenever the
        last completed step is not the one already on disk."""
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.global_step > 0
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # temporary files of a crashed save (this naming only) are never read: remove them
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            for p in Path(self.dirpath).glob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class RunBusyError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive lock on a run directory, held for the whole command by its rank-0 process.

    The lock is an OS file lock (``filelock``): it dies with its process, so the lock of a
    killed run is taken over by the next command without any clean-up. Beside it, ``.lock.holder``
    names the holder (pid, host, command, start time) for the refusal message."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._lock = FileLock(self.run_dir / ".lock", timeout=0)
        self._holder = self.run_dir / ".lock.holder"

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            try:
                h = json.loads(self._holder.read_text())
                who = f"pid {h['pid']} on {h['host']} (`{h['command']}`, since {h['since']})"
            except (OSError, ValueError, KeyError):
                who = "another process"
            raise RunBusyError(
                f"run directory {self.run_dir} is in use by {who}: wait for it to finish, or give this command "
                "another run name (--trainer.logger.init_args.name)"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(self._holder, holder, indent=None)
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._holder.unlink(missing_ok=True)
            self._lock.release()


def newest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The run's checkpoint at the latest step: its ``checkpoints/last.ckpt`` or a SLURM requeue's
    ``hpc_ckpt_N.ckpt`` in the run directory. Lightning alone would always take the highest
    ``hpc_ckpt_N``, which is older than ``last.ckpt`` when the job later ran on and then failed."""
    import torch

    steps = {}
    for p in [Path(run_dir) / "checkpoints" / "last.ckpt", *Path(run_dir).glob("hpc_ckpt_*.ckpt")]:
        if p.is_file():
            state = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
            steps[p] = (state.get("global_step", -1), p.stat().st_mtime)
    return max(steps, key=steps.get) if steps else None
