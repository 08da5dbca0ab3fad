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
