"""``lit-vattn fit|validate|test --config configs/<modality>/<arch>.yaml``: Lightning's own CLI.

The YAML names the LightningModule and the DataModule (subclass mode); the vocabulary size is
linked from the data to the model; the resolved config, CSV metrics and checkpoints land in one run
directory (``runs/<name>/version_<n>/``).
"""

from __future__ import annotations

import os
import warnings

from jsonargparse import set_parsing_settings

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from lit_vattn.callbacks import TokenThroughputMonitor


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.every_n_train_steps": 100,
            "checkpoint.save_top_k": 0,
        })
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput")


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
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "use_distributed_sampler": False,  # the DataModule slices data per rank itself
            "max_steps": 1000,
            "val_check_interval": 100,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 10,
            "gradient_clip_val": 1.0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "default"}},
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
    from pathlib import Path

    import yaml

    saved = yaml.safe_load(Path(path).read_text())
    for key in ("ckpt_path", "weights_only"):  # arguments of the fit subcommand, not of the objects
        saved.pop(key, None)
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
