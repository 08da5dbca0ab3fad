"""``lit-vattn fit|validate|test --config configs/data/<modality>.yaml --config configs/arch/<arch>.yaml``.

Lightning's own CLI.

The YAML names the LightningModule and the DataModule (subclass mode); the vocabulary size is
linked from the data to the model; the resolved config, the metrics (CSV by default; any Lightning
logger), the run summary tables read (``summary.json``, ``lit_vattn.train.callbacks.RunSummary``) and
checkpoints land in one run directory per run name, ``runs/<name>/`` (``lit_vattn.train.runs``): a resumed ``fit`` and ``test`` of the
same run write there too. ``--ckpt_path last`` means ``runs/<name>/checkpoints/last.ckpt`` and is an
error when that file does not exist; a fresh ``fit`` into a run directory that already has a last
checkpoint is refused (resume it with ``--ckpt_path last``, or choose another name); ``test`` and
``validate`` need a ``--ckpt_path``.

A checkpoint is only ever run as the model it holds: ``fit --ckpt_path``, ``validate``, ``test``
and ``predict`` compare the model the options describe (method, its switches, shape, vocabulary;
for ``fit`` also the optimiser and schedule) with the checkpoint's saved hyperparameters and refuse
any difference, naming each key and both values (``CheckpointMismatchError``); a checkpoint of a
run directory, given without a run name, writes its results into that run. Only ``fit`` writes the
run's ``config.yaml``; the other commands write ``<command>-config.yaml`` beside it, so every tool
that reads a run reads the configuration it was trained with. One command at a time per run
directory (``lit_vattn.train.runs.RunLock``).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Optional

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI

from lit_vattn.experiments.records import CONFIG, FIT, SUMMARY, TEST
from lit_vattn.train.callbacks import BudgetCurve, RunSummary, TokenThroughputMonitor
from lit_vattn.train.runs import RunBusyError, RunCheckpoint, RunLock, newest_checkpoint

# model hyperparameters that a checkpoint's run may differ in: how it is computed, not what it is
RUNTIME_KEYS = {"compile", "config.attn_backend"}
# what the optimiser does: part of a resumed run's identity, not of the model a score is for
TRAINING_KEYS = {
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "schedule",
    "decay_fraction",
    "weight_decay",
    "betas",
    "mix_lr_mult",
}


class CheckpointMismatchError(ValueError):
    """The options describe another model than the checkpoint holds."""


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 100,
                "checkpoint.save_top_k": 0,
                # one directory per run: a resumed run overwrites its own last.ckpt (never last-v1.ckpt)
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput")
        parser.add_lightning_class_args(RunSummary, "summary")  # what tables read, whatever the logger
        parser.add_lightning_class_args(BudgetCurve, "curve")  # validation at log-spaced steps (off by default)

    def before_instantiate_classes(self) -> None:
        """A run without a name is the run of its checkpoint, when ``--ckpt_path`` is a file of a
        run directory (``<run>/checkpoints/*.ckpt`` beside ``<run>/config.yaml``); otherwise it is
        named after its data and method, ``<modality>-<arch>`` (e.g. ``text-va``, ``text-va-frozen``
        from configs/arch/controls/va-frozen.yaml; combined readers of one YAML ``text-va+las``), so composing
        a data config with a method config gives each method its own run directory. Only ``fit``
        writes the run's ``config.yaml``."""
        sub = self.subcommand
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": CONFIG if sub in (None, "fit") else f"{sub}-{CONFIG}",
        }
        cfg = self.config[sub] if sub else self.config
        self._name_run(cfg)
        store_logger_dir(cfg)
        own_root_dir(cfg)

    def _name_run(self, cfg) -> None:
        logger = cfg.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or "name" not in init or init.get("name") is not None:
            return
        ckpt = cfg.get("ckpt_path")
        own = Path(ckpt).resolve().parent.parent if ckpt not in (None, "last") and Path(ckpt).is_file() else None
        if (
            own is not None
            and Path(ckpt).resolve().parent.name == "checkpoints"
            and (own / CONFIG).is_file()
            and "save_dir" in init
        ):
            # a checkpoint in a version folder (reproduce's fit/, Lightning's version_N/) belongs to the run above it
            run = own.parent if own.name in (FIT, TEST) or own.name.startswith("version_") else own
            if init.get("version") in (None, "") and run != own:
                init["version"] = own.name
            init["save_dir"], init["name"] = str(run.parent), run.name
            return
        configs = [str(c) for c in (cfg.get("config") or [])]
        init["name"] = default_run_name(cfg.get("data"), cfg.get("model"), configs)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model options with the checkpoint's hyperparameters here, so a
        checkpoint of one model would be scored under options (and a run name) that describe
        another. The suite compares the two instead and refuses a difference (``_check_model``)."""

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()

    # --- the run directory ----------------------------------------------------------------------
    def _run_dir(self):
        logger = self.trainer.logger
        return Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else None

    def _resolve_ckpt_path(self, required: bool) -> None:
        """Take the run's lock; 'last' -> this run's last.ckpt (an error if there is none); a
        missing file is an error naming it; a checkpoint of another model is refused; all before
        anything is prepared or trained."""
        cfg = self.config_init[self.subcommand]
        ckpt, run_dir = cfg.get("ckpt_path"), self._run_dir()
        if run_dir is not None and self.trainer.is_global_zero:
            self._lock = RunLock(run_dir).acquire()
        last = run_dir / "checkpoints" / "last.ckpt" if run_dir is not None else None
        if ckpt == "last":
            if last is None or not last.is_file():
                raise FileNotFoundError(
                    f"--ckpt_path last: no last checkpoint of this run ({last}); train it first with "
                    "`lit-vattn fit` under the same --trainer.logger.init_args.name, or give a checkpoint file"
                )
            cfg["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = str(last)  # the saved config names the file
        elif ckpt is not None and not Path(ckpt).exists():
            raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint file")
        if cfg.get("ckpt_path") is not None:
            check_checkpoint_file(Path(cfg["ckpt_path"]))
            self._check_model(Path(cfg["ckpt_path"]), run_dir)
        elif ckpt is None and required:
            raise ValueError(
                f"`lit-vattn {self.subcommand}` needs --ckpt_path (a checkpoint file, or 'last' for "
                f"{last if last is not None else 'this run'}): without it the model's random initial weights would be scored"
            )
        elif ckpt is None and self.subcommand == "fit" and run_dir is not None and requeued():
            # SLURM started this job again (a preemption's SIGUSR1 requeue, or a failed node): continue the
            # run from its newest checkpoint, whichever kind wrote it, or start it if it never saved one
            newest = newest_checkpoint(run_dir)
            if newest is None:
                self._set_failed_attempt_aside(run_dir)
            else:
                cfg["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = str(newest)
                check_checkpoint_file(newest)
                self._check_model(newest, run_dir)
        elif ckpt is None and self.subcommand == "fit" and last is not None and last.is_file():
            raise FileExistsError(
                f"run directory {run_dir} already holds a trained run ({last}): continue it with --ckpt_path last, "
                "or start a new run under another --trainer.logger.init_args.name (or delete that directory)"
            )
        elif ckpt is None and self.subcommand == "fit" and run_dir is not None:
            self._set_failed_attempt_aside(run_dir)

    def _set_failed_attempt_aside(self, run_dir: Path) -> None:
        """An attempt that never saved a checkpoint (it failed early): start its logs afresh, keep the old ones aside."""
        if not self.trainer.is_global_zero:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for old in (run_dir / "metrics.csv", run_dir / SUMMARY):
            if old.is_file():
                old.rename(run_dir / f"{old.stem}-failed-attempt-{stamp}{old.suffix}")

    def _check_model(self, ckpt: Path, run_dir) -> None:
        import torch

        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters")
        if not saved:  # a checkpoint written outside the CLI: nothing to compare
            return
        ignore = RUNTIME_KEYS | (set() if self.subcommand == "fit" else TRAINING_KEYS)
        diffs = model_differences(dict(self.model.hparams), saved, ignore)
        if diffs:
            config = ckpt.resolve().parent.parent / CONFIG
            hint = f"--config {config}" if config.is_file() else "the options it was trained with"
            raise CheckpointMismatchError(
                f"--ckpt_path {ckpt} holds another model than the options of this `lit-vattn {self.subcommand}` describe:\n"
                + "\n".join(
                    f"  model.init_args.{k}{' (linked from the data tokenizer)' if k == 'vocab_size' else ''}: "
                    f"checkpoint {a!r}, options {b!r}"
                    for k, a, b in diffs
                )
                + f"\nGive the model options the checkpoint was trained with ({hint}), or the checkpoint of the model you mean."
            )

    def before_fit(self) -> None:
        self._resolve_ckpt_path(required=False)

    def before_validate(self) -> None:
        self._resolve_ckpt_path(required=True)

    def before_test(self) -> None:
        self._resolve_ckpt_path(required=True)

    def before_predict(self) -> None:
        self._resolve_ckpt_path(required=True)


def requeued() -> bool:
    """This process belongs to a SLURM job that SLURM started again (``scontrol requeue``)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


# loggers that keep their records in a store (W&B, MLflow): Lightning takes their save_dir itself as the
# run directory, so every run would write the same summary.json and config.yaml there
STORE_LOGGERS = ("WandbLogger", "MLFlowLogger")


def store_logger_dir(cfg) -> None:
    """A W&B or MLflow run gets its own directory, ``<save_dir>/<run name>`` (as the CSV and
    TensorBoard loggers' runs do), holding its summary, config and checkpoints (and, for MLflow
    without a ``tracking_uri``, its local store)."""
    logger = (cfg.get("trainer") or {}).get("logger")
    init = getattr(logger, "init_args", None)
    if init is None or str(getattr(logger, "class_path", "")).rpartition(".")[2] not in STORE_LOGGERS:
        return
    name = init.get("name") or init.get("run_name")
    if not name:
        name = default_run_name(cfg.get("data"), cfg.get("model"), [str(c) for c in (cfg.get("config") or [])])
        if "run_name" in init:
            init["run_name"] = name
    if "tracking_uri" in init:
        if init.get("tracking_uri") not in (None, ""):
            return  # MLflow elsewhere: Lightning then keeps the run's files in that store's directory
        # the local file store is what this preset is for; MLflow >= 3.10 asks for this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    save_dir = Path(init.get("save_dir") or "runs")
    if save_dir.name != name:
        init["save_dir"] = str(save_dir / name)


def own_root_dir(cfg) -> None:
    """The run directory is the trainer's ``default_root_dir`` (unless that is set): what Lightning
    writes there by itself, a SLURM requeue's ``hpc_ckpt_N.ckpt``, lands in the run it belongs to
    rather than in the job's working directory."""
    trainer = cfg.get("trainer") or {}
    logger = trainer.get("logger")
    init = getattr(logger, "init_args", None)
    if (
        trainer.get("default_root_dir") is not None
        or not str(getattr(logger, "class_path", "")).endswith(".RunCSVLogger")
        or init is None
        or not init.get("name")
    ):
        return
    run = Path(init.get("save_dir") or "runs") / init["name"]
    version = init.get("version")
    if version not in (None, ""):
        run = run / (version if isinstance(version, str) else f"version_{version}")
    trainer["default_root_dir"] = str(run)


def _plain(x):
    """jsonargparse Namespaces, tuples and dicts as plain JSON-like values, for comparison."""
    if hasattr(x, "as_dict"):
        x = x.as_dict()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _flatten(x, prefix: str = "") -> dict:
    if isinstance(x, dict):
        return {k2: v2 for k, v in x.items() for k2, v2 in _flatten(v, f"{prefix}{k}.").items()}
    if isinstance(x, list) and any(isinstance(v, dict) for v in x):
        return {k2: v2 for i, v in enumerate(x) for k2, v2 in _flatten(v, f"{prefix}{i}.").items()}
    return {prefix[:-1]: x}


def _readers(arch) -> str:
    """The method a model's ``arch`` hyperparameter names: its reader classes, or vanilla."""
    arch = arch if isinstance(arch, list) else [] if arch is None else [arch]
    return "+".join(a.get("class_path", "?") if isinstance(a, dict) else type(a).__name__ for a in arch) or "vanilla"


def model_differences(options: dict, saved: dict, ignore: set) -> list[tuple[str, object, object]]:
    """(key, checkpoint value, option value) for each model hyperparameter both name and set
    differently, plus the method itself (``arch``). A key only one side has (a switch added after
    the checkpoint was written) is not a difference: its default is what the checkpoint ran."""
    options, saved = _plain(options), _plain(saved)
    a, b = _flatten(saved), _flatten(options)
    diffs = [("arch", _readers(saved.get("arch")), _readers(options.get("arch")))]
    diffs += [
        (k, a[k], b[k])
        for k in sorted(a.keys() & b.keys())
        if not k.startswith("_") and k not in ignore and k != "arch" and not k.endswith("class_path")
    ]
    return [(k, x, y) for k, x, y in diffs if x != y]


def default_run_name(data, model, configs: Optional[list[str]] = None) -> str:
    """``<modality>-<arch>`` (the data's declared modality; a probe's is its task: ``mqar-va``): the arch part is the stem of the method config(s) given from a
    ``configs/arch/`` folder (so a control such as ``va-frozen`` gets its own run directory),
    otherwise the reader names of the parsed model config."""
    import importlib

    def cls(path: str):
        mod, _, name = path.rpartition(".")
        return getattr(importlib.import_module(mod), name)

    data_cls = getattr(data, "class_path", None)
    init = getattr(data, "init_args", None)
    init = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    data_type = cls(data_cls) if data_cls else None
    modality = data_type.modality_for(init).name if hasattr(data_type, "modality_for") else "run"
    arch = getattr(getattr(model, "init_args", None), "arch", None) if model is not None else None
    readers = arch if isinstance(arch, list) else [arch] if arch is not None else []
    names = [
        Path(c).stem
        for c in configs or []
        if Path(c).parent.name == "arch" or Path(c).parent.name == "controls" and Path(c).parent.parent.name == "arch"
    ]
    names = names or [getattr(cls(r.class_path), "name", r.class_path.rpartition(".")[2].lower()) for r in readers]
    return f"{modality}-{'+'.join(names) or 'vanilla'}"


def check_checkpoint_file(path) -> None:
    """A torch checkpoint is a zip archive whose directory is written last: a file cut short by a
    crash or a full disk has none. Say so, naming the file, instead of torch's bare zip error."""
    import zipfile

    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({path.stat().st_size} bytes): "
            "a save was interrupted, or the file was cut short in a copy; use an earlier checkpoint"
        )


def cli_main(args=None, run: bool = True) -> CLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # field docstrings of the config dataclasses become --help text (as in litgpt)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    # Lightning cannot see that our sampler resumes through the DataModule's state_dict
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    return CLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=1234,
        # the module owns its optimizer: parameter groups (no decay on norms, embeddings and depth
        # mixers; their lr multiplier) and the warmup schedule; Lightning's --optimizer/--lr_scheduler
        # would silently replace both
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "use_distributed_sampler": False,  # the DataModule slices data per rank itself
            "max_steps": 1000,
            "val_check_interval": 100,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 10,
            "gradient_clip_val": 1.0,
            "logger": {"class_path": "lit_vattn.train.runs.RunCSVLogger", "init_args": {"save_dir": "runs"}},
            "callbacks": [LearningRateMonitor(logging_interval="step")],
        },
        args=args,
        run=run,
    )


def from_run_config(path, *extra: str) -> CLI:
    """Rebuild a run's model and DataModule, untrained, from the ``config.yaml`` Lightning saved.

    The trainer is reduced to one CPU process in float32 (for analysis and count baselines), so a
    config made for FSDP on 8 GPUs x 4 nodes still loads on a login node."""
    import tempfile

    import yaml

    saved = yaml.safe_load(Path(path).read_text())
    for key in ("ckpt_path", "weights_only", "verbose"):  # arguments of a subcommand, not of the objects
        saved.pop(key, None)
    for key in ("optimizer", "lr_scheduler"):  # configs saved before the CLI stopped offering them
        if saved.get(key) is None:
            saved.pop(key, None)
        else:
            raise ValueError(
                f"{path} sets {key}={saved[key]!r}, which this version no longer honours: the module "
                "configures its own optimizer and schedule (model.init_args.lr, schedule, warmup_steps, ...)"
            )
    # the rebuilt trainer never trains: a run's callbacks (possibly of an older version) are not needed
    (saved.get("trainer") or {}).pop("callbacks", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(saved, f)
    try:
        single = [
            "--trainer.logger",
            "false",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.num_nodes",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            "32-true",
        ]
        with warnings.catch_warnings():  # the calling tool's own sys.argv is not meant for this parser
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
            return cli_main(["--config", f.name, *single, *extra], run=False)
    finally:
        os.unlink(f.name)


def main() -> None:
    """The ``lit-vattn`` console script: exit status 0 on success (``cli_main`` returns the CLI); a
    refused request (a checkpoint of another model, a busy run) prints its reason and exits 2."""
    import sys

    try:
        cli_main()
    except (CheckpointMismatchError, RunBusyError) as e:
        print(f"lit-vattn: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
