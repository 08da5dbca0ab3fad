"""The training callbacks the CLI adds: the progress bar's tokens/s and minutes left."""

import pytest
from helpers import CPU, QUIET, TEXT, TINY
from lightning.pytorch.callbacks import Callback


class BarMetrics(Callback):
    """Keeps what the progress bar shows after each training step (read before the next one starts,
    whatever order the callbacks run in)."""

    seen: list = []

    def on_train_batch_start(self, trainer, *args) -> None:
        BarMetrics.seen.append((trainer.global_step, dict(trainer.progress_bar_metrics)))

    def on_train_end(self, trainer, *args) -> None:
        BarMetrics.seen.append((trainer.global_step, dict(trainer.progress_bar_metrics)))


def test_the_progress_bar_shows_tokens_per_second_and_minutes_left(in_tmp):
    from lit_vattn.train.cli import cli_main

    BarMetrics.seen = []
    args = ["fit", "--config", TEXT, "--config", CPU, *TINY, *QUIET, "--trainer.max_steps", "8"]
    args += ["--trainer.log_every_n_steps", "1", "--throughput.window_size", "2"]
    args += ["--trainer.callbacks+=test_callbacks.BarMetrics"]
    cli_main(args)
    shown = [(step, m) for step, m in BarMetrics.seen if "tok/s" in m]
    assert shown and len(shown) >= 5  # from the step the window is full
    for step, m in shown:
        assert m["tok/s"] > 0
        # minutes left = steps left / steps per second; steps per second = tokens/s / tokens per step (4 x 32)
        steps_per_sec = m["tok/s"] / (4 * 32)
        assert m["min left"] == pytest.approx((8 - step) / steps_per_sec / 60, rel=1e-3)
    assert shown[-1][1]["min left"] == 0.0


def test_the_summary_says_how_far_training_moved_the_mixing_weights(in_tmp):
    """A routing claim needs weights that moved: the fit summary gives each depth-mixing parameter's
    largest and RMS change from its init; a method without mixing weights has none; a run resumed
    from a checkpoint measures from the same init."""
    import json
    from pathlib import Path

    from helpers import ROOT

    from lit_vattn.train.cli import cli_main

    base = ["fit", "--config", TEXT, "--config", CPU, *TINY, *QUIET, "--trainer.limit_val_batches", "0"]
    va = ["--config", str(ROOT / "configs/arch/va.yaml"), "--model.init_args.lr", "1e-2"]
    cli_main([*base, *va, "--trainer.max_steps", "6", "--trainer.logger.init_args.name", "mv"])
    moved = json.loads(Path("runs/mv/summary.json").read_text())["stats"]["mixing_moved"]
    assert set(moved) == {"arch.logits"} and 0 < moved["arch.logits"]["rms"] <= moved["arch.logits"]["max_abs"]
    ckpt = next(Path("runs/mv").rglob("last.ckpt"))
    cli_main(
        [*base, *va, "--trainer.max_steps", "9", "--trainer.logger.init_args.name", "mv", "--ckpt_path", str(ckpt)]
    )
    again = json.loads(Path("runs/mv/summary.json").read_text())["stats"]["mixing_moved"]
    assert again["arch.logits"]["max_abs"] > 0 and again["arch.logits"] != moved["arch.logits"]
    cli_main([*base, "--trainer.max_steps", "2", "--trainer.logger.init_args.name", "plain"])
    assert json.loads(Path("runs/plain/summary.json").read_text())["stats"]["mixing_moved"] is None
