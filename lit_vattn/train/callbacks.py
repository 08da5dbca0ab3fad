"""Callbacks the CLI always adds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ThroughputMonitor

from lit_vattn.experiments.records import SUMMARY, read_summary  # noqa: F401  (read_summary: the public reader of what RunSummary writes)
from lit_vattn.io import write_json
from lit_vattn.provenance import git_commit


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting tokens: logs train/items_per_sec (tokens/s, all
    devices), train/device/mfu (FLOPs from ``LanguageModel.flops_per_batch`` over the GPU's peak,
    CUDA only) and shows tokens/s in the progress bar, with the minutes left (``min left``) when the
    budget is a number of steps (``trainer.max_steps``) and the window is full.

    Unlike Lightning's, it synchronises the GPU only on logging steps (every
    ``trainer.log_every_n_steps``): samples and tokens are counted on every batch on the host, and
    the timed window is made of logging steps. A synchronisation per batch stops the host from
    queueing the next step while the GPU works, which costs throughput on every step."""

    def __init__(self, window_size: int = 5):
        """
        Args:
            window_size: Logging steps in the sliding window that tokens/s and MFU are averaged over
                (the window spans window_size x trainer.log_every_n_steps batches).
        """
        super().__init__(
            batch_size_fn=lambda b: b["input"].shape[0],
            length_fn=lambda b: b["input"].numel(),
            window_size=window_size,
        )
        self._pending = 0  # batches since the last window update

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        if trainer.global_rank != 0:
            return
        stage = trainer.state.stage
        self._samples[stage] += self.batch_size_fn(batch)
        self._lengths[stage] += self.length_fn(batch)
        self._batches[stage] += 1
        self._pending += 1
        if trainer.fit_loop._should_accumulate() or not trainer._logger_connector.should_update_logs:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the host clock must see the GPU's work done
        flops = getattr(pl_module, "flops_per_batch", None)
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=self._lengths[stage],
            flops=None if flops is None else flops * self._pending,  # FLOPs since the last update
        )
        self._pending = 0
        self._compute(trainer)
        m = self._throughputs[stage].compute()
        device = f"device{self.kwargs.get('separator', '/')}"  # the per-device keys, when there is no world total
        tps = m.get("items_per_sec", m.get(f"{device}items_per_sec"))
        if tps is not None:  # present once the window is full
            pl_module.log("tok/s", float(tps), prog_bar=True, logger=False, on_step=True)
        # an optimizer step takes accumulate_grad_batches batches on each device
        bps, world = m.get("batches_per_sec"), trainer.world_size  # all devices
        if bps is None:
            bps, world = m.get(f"{device}batches_per_sec"), 1  # this device
        if bps and trainer.max_steps > 0:
            steps_per_sec = bps / (trainer.accumulate_grad_batches * world)
            left = (trainer.max_steps - trainer.global_step) / steps_per_sec / 60
            pl_module.log("min left", float(left), prog_bar=True, logger=False, on_step=True)


class BatchIndexLogger(Callback):
    """Writes the training sample numbers each rank consumed to
    ``<log_dir>/batch_indices_rank<r>.json``: to check that ranks draw disjoint windows and that a
    resumed run continues the same stream (``--trainer.callbacks+=lit_vattn.train.callbacks.BatchIndexLogger``)."""

    def __init__(self):
        self.indices: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indices.extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(trainer.log_dir or ".") / f"batch_indices_rank{trainer.global_rank}.json"
        write_json(out, self.indices, indent=None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class RunSummary(Callback):
    """Writes ``<log_dir>/summary.json``, everything tables and analyses read, whichever logger the
    run uses (CSV, TensorBoard, W&B, MLflow): the training loss on every logging step and each
    validation's metrics, each with its step and tokens seen; after ``test``/``validate`` their
    metrics (after ``test`` also every test window's summed NLL and scored tokens); at the end of training the run's budget (parameters, measured FLOPs per token,
    tokens seen, training-split size, wall time, tokens/s after the first steps, peak memory,
    device). The curves are kept in the checkpoint, so a resumed run continues them from the
    checkpoint's step. The CLI always adds it (``--summary.*`` options)."""

    def __init__(self, skip_steps: int = 5, filename: str = SUMMARY):
        """
        Args:
            skip_steps: Steps excluded from the tokens/s mean (warm-up, compilation).
            filename: File name in the run's log directory.
        """
        self.skip_steps, self.filename = skip_steps, filename
        self.train: list[list] = []  # [step, tokens, loss]
        self.val: list[dict] = []  # {"step", "tokens", metric: value}
        self.tokens = 0
        self.t0 = self.t_skip = None
        self.tokens_after_skip = 0
        self.mix_init: dict = {}  # the depth-mixing weights at step 0, to say how far training moved them

    # --- kept in the checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "tokens": self.tokens, "mix_init": self.mix_init}

    def load_state_dict(self, state: dict) -> None:
        self.train, self.val, self.tokens = list(state["train"]), list(state["val"]), int(state["tokens"])
        self.mix_init = dict(state.get("mix_init") or {})  # absent in checkpoints written before it

    # --- recording ---------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        # ``trainer.log_dir`` is a collective (a broadcast from rank 0) under DDP: resolve it here,
        # where every rank runs, never inside a rank-0-only branch (that deadlocks the other ranks).
        self._dir = trainer.log_dir

    def on_train_start(self, trainer, pl_module) -> None:
        # peak memory of training only, not of shard preparation earlier in the same process
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # Linux >= 4.0: reset the peak resident set size (VmHWM)
            except OSError:
                pass
        self.t0, self.t_skip, self.tokens_after_skip = time.perf_counter(), None, 0
        self._start_step = trainer.global_step
        if trainer.global_step == 0:  # a fresh run: its mixing weights as initialised
            self.mix_init = {n: _full(p).detach().cpu().clone() for n, p in _mixing(pl_module)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch["input"].numel() * trainer.world_size
        self.tokens += n
        if trainer.global_step - self._start_step == self.skip_steps and self.t_skip is None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.t_skip = time.perf_counter()
        elif self.t_skip is not None:
            self.tokens_after_skip += n
        if trainer._logger_connector.should_update_logs and outputs is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.train.append([trainer.global_step, self.tokens, float(loss)])  # one sync per logging step

    def _metrics(self, trainer, prefix: str) -> dict:
        return {k[len(prefix) :]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = self._metrics(trainer, "val/")
        if trainer.state.fn == "fit":
            self.val.append({"step": trainer.global_step, "tokens": self.tokens, **m})
            self._write(trainer, {"train": self.train, "val": self.val})
        else:
            self._write(trainer, {"validate": {"step": trainer.global_step, **m}})

    def on_test_end(self, trainer, pl_module) -> None:
        update = {"test": {"step": trainer.global_step, **self._metrics(trainer, "test/")}}
        if getattr(pl_module, "test_windows", None) is not None:
            update["test_windows"] = pl_module.test_windows  # per-window NLL, for the paired bootstrap
        self._write(trainer, update)

    def _moved(self, pl_module) -> Optional[dict]:
        """How far training moved each depth-mixing parameter (``depth_mix``: VA's logits, routers,
        ...) from its init: the largest and the root-mean-square change. A routing claim needs
        weights that moved; a weight that cannot move in the budget tests its init. None for a
        method without mixing weights or a run resumed from a checkpoint that predates the record."""
        moved = {}
        for n, p in _mixing(pl_module):
            if n not in self.mix_init:
                return None
            d = (_full(p).detach().float().cpu() - self.mix_init[n].float()).abs()
            moved[n] = {"max_abs": float(d.max()), "rms": float(d.pow(2).mean().sqrt())}
        return moved or None

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        dm = trainer.datamodule
        stats = {
            "params": pl_module.net.num_params(),
            "flops_per_token": pl_module.net.flops_per_token(dm.seq_len) if dm is not None else None,
            "global_step": trainer.global_step,
            "tokens_seen": int(dm.consumed * dm.seq_len * trainer.world_size) if dm is not None else self.tokens,
            "train_seconds": now - self.t0,  # of this process (a resumed run: since the resume)
            "tokens_per_sec": self.tokens_after_skip / (now - self.t_skip)
            if self.t_skip and self.tokens_after_skip
            else None,
            "peak_memory_gib": peak_memory_gib(pl_module.device),
            "device": torch.cuda.get_device_name(pl_module.device) if pl_module.device.type == "cuda" else "cpu",
            "world_size": trainer.world_size,
            "commit": git_commit(),  # the code that trained it (an exported model's card names it)
            # the training split's size, so tables can say how many epochs a run saw
            "train_tokens": int(dm.meta["splits"]["train"]["tokens"])
            if dm is not None and getattr(dm, "meta", None)
            else None,
            # the content of the data it trained and was scored on (datamodules.shards.digest)
            "data_digest": getattr(dm, "data_digest", None),
            "mixing_moved": self._moved(pl_module),
        }
        self._write(trainer, {"train": self.train, "val": self.val, "stats": stats})

    def _write(self, trainer, update: dict) -> None:
        if trainer.global_rank == 0 and getattr(self, "_dir", None):
            merge_summary(Path(self._dir) / self.filename, update)


def merge_summary(path: Path, update: dict) -> None:
    """Merge ``update`` into a run's summary (fit, test and validate of one run share it), atomically."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(update)
    write_json(path, summary, indent=1)


class BudgetCurve(Callback):
    """Validation NLL at log-spaced points of a run, for curves of NLL (and of a method's paired
    difference to vanilla) against tokens seen: one run gives the whole curve, so a table can ask
    whether a gap grows or vanishes with training instead of reading one point.

    At ``points`` training steps spaced geometrically from ``first_step`` to ``trainer.max_steps``
    the model is put in eval mode and scored on the first ``max_batches`` batches of the
    validation split (the same windows every time; all of them when ``None``), with the module's
    own loss and ``NLLMetrics`` (exact under DDP: every rank scores its share, the sums are
    reduced). The points go to ``summary.json`` under ``"curve"`` (step, tokens seen, nll, the
    modality's unit, and accuracy for data that reports it) and into the checkpoint, so a resumed
    run continues the curve. Scoring draws no training sample and no random number of the training
    stream. ``points: 0`` (the default) turns it off; ``lit-vattn-reproduce`` presets turn it on
    (``--curve.points``)."""

    def __init__(self, points: int = 0, first_step: int = 10, max_batches: Optional[int] = 16):
        """
        Args:
            points: Number of log-spaced evaluation steps (0: off). Steps that round to the same
                integer are merged.
            first_step: The first evaluation step (the curve starts after warm-up noise).
            max_batches: Validation batches scored at each point (the first ones of the split);
                ``None`` scores the whole split.
        """
        if points < 0 or first_step < 1 or (max_batches is not None and max_batches < 1):
            raise ValueError(
                f"--curve.points must be >= 0, --curve.first_step >= 1 and --curve.max_batches >= 1 or null "
                f"(got {points}, {first_step}, {max_batches})"
            )
        self.points, self.first_step, self.max_batches = points, first_step, max_batches
        self.curve: list[dict] = []
        self.filename = SUMMARY

    def steps(self, max_steps: int) -> list[int]:
        """The evaluation steps (global steps after the optimizer step) for a run of max_steps."""
        if self.points == 0 or max_steps < 1:
            return []
        lo = min(self.first_step, max_steps)
        grid = np.geomspace(lo, max_steps, self.points) if self.points > 1 else np.array([max_steps])
        return sorted({int(round(x)) for x in grid})

    def state_dict(self) -> dict:
        return {"curve": self.curve}

    def load_state_dict(self, state: dict) -> None:
        self.curve = list(state["curve"])

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._dir = trainer.log_dir  # a collective under DDP: resolve it where every rank runs
        if stage == "fit" and self.points and trainer.max_steps is not None and trainer.max_steps < 0:
            raise ValueError("--curve.points needs --trainer.max_steps (the points are spaced up to it)")

    def on_train_start(self, trainer, pl_module) -> None:
        # once per fit (after a resume too: the checkpoint's points are loaded by then), not per step
        self._todo = set(self.steps(trainer.max_steps)) - {p["step"] for p in self.curve}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step not in self._todo:
            return
        self._todo.discard(step)
        point = {
            "step": step,
            "tokens": int(trainer.datamodule.consumed * trainer.datamodule.seq_len * trainer.world_size),
            **self.evaluate(trainer, pl_module),
        }
        self.curve.append(point)
        if trainer.global_rank == 0 and self._dir:
            merge_summary(Path(self._dir) / self.filename, {"curve": self.curve})

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict:
        from lit_vattn.train.metrics import NLLMetrics

        metrics = NLLMetrics().to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), trainer.precision_plugin.forward_context():
            for i, batch in enumerate(trainer.datamodule.val_dataloader()):
                if self.max_batches is not None and i >= self.max_batches:
                    break
                batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                out = pl_module.eval_sums(batch)
                metrics.update(out["nll"], batch["target"], pl_module.units_per_token, out.get("correct"))
        pl_module.train(was_training)
        values = metrics.compute(pl_module.unit)
        values.pop("tokens")
        return {k: float(v) for k, v in values.items()}


def _mixing(pl_module):
    """(name, parameter) of every depth-mixing weight (flagged ``depth_mix`` by its reader)."""
    return [(n, p) for n, p in pl_module.net.named_parameters() if getattr(p, "depth_mix", False)]


def _full(p):
    """A parameter's whole value, also when FSDP2 shards it (a DTensor)."""
    return p.full_tensor() if hasattr(p, "full_tensor") else p
