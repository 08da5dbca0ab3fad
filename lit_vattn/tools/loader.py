"""A trained checkpoint back as its model and data: the one home of checkpoint loading for the tools
(analysis, sampling, lm-eval, the positions table). The run's ``config.yaml`` (next to
``checkpoints/``) rebuilds both, on one CPU process whatever the run was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lit_vattn.experiments.records import CONFIG


def run_config(ckpt_path: str, config: Optional[str] = None) -> Path:
    """The YAML a checkpoint was trained with (default ``<run>/config.yaml``), both checked to exist."""
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (--ckpt_path)")
    cfg = Path(config) if config else ckpt.parent.parent / CONFIG
    if not cfg.is_file():
        raise FileNotFoundError(f"no config {cfg}: pass --config, the YAML the checkpoint was trained with")
    return cfg


def load(ckpt_path: str, config: Optional[str] = None):
    from lit_vattn.train.cli import from_run_config

    ckpt = Path(ckpt_path)
    cli = from_run_config(run_config(ckpt_path, config))
    model, dm = cli.model, cli.datamodule
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.eval()
    dm.prepare_data()
    dm.setup("validate")
    return model, dm
