"""``lit-vattn fit|validate|test --config configs/data/<modality>.yaml --config configs/arch/<arch>.yaml``.

Lightning's own CLI.

The YAML names the LightningModule and the DataModule (subclass mode); the vocabulary size is
linked from the data to the model; the resolved config, the metrics (CSV by default; any Lightning
logger), the run summary tables read (``summary.json``, ``lit_vattn.callbacks.RunSummary``) and
checkpoints land in one run directory per run name, ``runs/<name>/`` (``lit_vattn.runs``): a resumed ``fit`` and ``test`` of the
same run write there too. ``--ckpt_path last`` means ``runs/<name>/checkpoints/last.ckpt`` and is an
error when that file does not exist; a fresh ``fit`` into a run directory that already has a last
checkpoint is refused (resume it with ``--ckpt_path last``, or choose another name); ``test`` and
``validate`` need a ``--ckpt_path``.
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

from lit_vattn.callbacks import BudgetCurve, RunSummary, TokenThroughputMonitor
from lit_vattn.runs import RunCheckpoint


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.every_n_train_steps": 100,
            "checkpoint.save_top_k": 0,
            # one directory per run: a resumed run overwrites its own last.ckpt (never last-v1.ckpt)
            "checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput")
        parser.add_lightning_class_args(RunSummary, "summary")  # what tables read, whatever the logger
        parser.add_lightning_class_args(BudgetCurve, "curve")  # validation at log-spaced steps (off by default)

    def before_instantiate_classes(self) -> None:
        """A run without a name is named after its data and method, ``<modality>-<arch>`` (e.g.
        ``text-va``, ``text-va-frozen`` from configs/arch/va-frozen.yaml; combined readers of one
        YAML ``text-va+las``), so composing a data config with a method config gives each method
        its own run directory."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        logger = cfg.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or "name" not in init or init.get("name") is not None:
            return
        configs = [str(c) for c in (cfg.get("config") or [])]
        init["name"] = default_run_name(cfg.get("data"), cfg.get("model"), configs)

    # --- the run directory ----------------------------------------------------------------------
    def _run_dir(self):
        logger = self.trainer.logger
        return Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else None

    def _resolve_ckpt_path(self, required: bool) -> None:
        """'last' -> this run's last.ckpt (an error if there is none); a missing file is an error
        naming it, before anything is prepared or trained."""
        cfg = self.config_init[self.subcommand]
        ckpt, run_dir = cfg.get("ckpt_path"), self._run_dir()
        last = run_dir / "checkpoints" / "last.ckpt" if run_dir is not None else None
        if ckpt == "last":
            if last is None or not last.is_file():
                raise FileNotFoundError(
                    f"--ckpt_path last: no last checkpoint of this run ({last}); train it first with "
                    "`lit-vattn fit` under the same --trainer.logger.init_args.name, or give a checkpoint file"
                )
            cfg["ckpt_path"] = str(last)
        elif ckpt is not None and not Path(ckpt).exists():
            raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint file")
        if cfg.get("ckpt_path") is not None:
            check_checkpoint_file(Path(cfg["ckpt_path"]))
        elif ckpt is None and required:
            raise ValueError(
                f"`lit-vattn {self.subcommand}` needs --ckpt_path (a checkpoint file, or 'last' for "
                f"{last if last is not None else 'this run'}): without it the model's random initial weights would be scored"
            )
        elif (ckpt is None and self.subcommand == "fit" and last is not None and last.is_file()
              and os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0")):  # a requeued job resumes by itself
            raise FileExistsError(
                f"run directory {run_dir} already holds a trained run ({last}): continue it with --ckpt_path last, "
                "or start a new run under another --trainer.logger.init_args.name (or delete that directory)"
            )
        elif ckpt is None and self.subcommand == "fit" and run_dir is not None and self.trainer.is_global_zero:
            # an attempt that never saved a checkpoint (it failed early): start its logs afresh, keep the old ones aside
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for old in (run_dir / "metrics.csv", run_dir / "summary.json"):
                if old.is_file():
                    old.rename(run_dir / f"{old.stem}-failed-attempt-{stamp}{old.suffix}")

    def before_fit(self) -> None:
        self._resolve_ckpt_path(required=False)

    def before_validate(self) -> None:
        self._resolve_ckpt_path(required=True)

    def before_test(self) -> None:
        self._resolve_ckpt_path(required=True)


def default_run_name(data, model, configs: Optional[list[str]] = None) -> str:
    """``<modality>-<arch>`` (a probe's task for the modality: ``mqar-va``): the arch part is the stem of the method config(s) given from a
    ``configs/arch/`` folder (so a control such as ``va-frozen`` gets its own run directory),
    otherwise the reader names of the parsed model config."""
    import importlib

    def cls(path: str):
        mod, _, name = path.rpartition(".")
        return getattr(importlib.import_module(mod), name)

    data_cls = getattr(data, "class_path", "") or ""
    modality = data_cls.rpartition(".")[2].removesuffix("DataModule").lower() or "run"
    task = getattr(getattr(data, "init_args", None), "task", None)  # an in-context probe: its task (mqar, copy)
    modality = task if isinstance(task, str) else modality
    arch = getattr(getattr(model, "init_args", None), "arch", None) if model is not None else None
    readers = arch if isinstance(arch, list) else [arch] if arch is not None else []
    names = [Path(c).stem for c in configs or [] if Path(c).parent.name == "arch"]
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
            "logger": {"class_path": "lit_vattn.runs.RunCSVLogger", "init_args": {"save_dir": "runs"}},
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
    for key in ("ckpt_path", "weights_only"):  # arguments of the fit subcommand, not of the objects
        saved.pop(key, None)
    for key in ("optimizer", "lr_scheduler"):  # configs saved before the CLI stopped offering them
        if saved.get(key) is None:
            saved.pop(key, None)
        else:
            raise ValueError(f"{path} sets {key}={saved[key]!r}, which this version no longer honours: the module "
                             "configures its own optimizer and schedule (model.init_args.lr, schedule, warmup_steps, ...)")
    # the rebuilt trainer never trains: a run's callbacks (possibly of an older version) are not needed
    (saved.get("trainer") or {}).pop("callbacks", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(saved, f)
    try:
        single = ["--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                  "--trainer.num_nodes", "1", "--trainer.strategy", "auto", "--trainer.precision", "32-true"]
        with warnings.catch_warnings():  # the calling tool's own sys.argv is not meant for this parser
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
            return cli_main(["--config", f.name, *single, *extra], run=False)
    finally:
        os.unlink(f.name)


def main() -> None:
    """The ``lit-vattn`` console script: exit status 0 on success (``cli_main`` returns the CLI)."""
    cli_main()


if __name__ == "__main__":
    main()
