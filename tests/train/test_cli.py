"""The `lit-vattn` command: every shipped YAML, exact resume, test on a checkpoint, bad configs."""

import glob
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import CPU, ROOT, SMALL_DATA, TEXT, TINY
from lightning.pytorch import Callback

from lit_vattn.arch.registry import seed_methods
from lit_vattn.train.callbacks import BudgetCurve
from lit_vattn.train.cli import cli_main

# the presets of hub corpora (wikitext103) need the network: tests/datamodules/test_text_streaming.py runs
# them on a local copy in the hub's layout
HUB_YAMLS = {str(ROOT / "configs/data/wikitext103.yaml")}
DATA_YAMLS = sorted(set(glob.glob(str(ROOT / "configs/data/*.yaml"))) - HUB_YAMLS)
ARCH_YAMLS = sorted(
    glob.glob(str(ROOT / "configs/arch/*.yaml")) + glob.glob(str(ROOT / "configs/arch/controls/*.yaml"))
)
# the presets lit-vattn-reproduce offers (configs/reproduce/<modality>-<preset>.yaml are overlays)
PRESETS = sorted(
    p.stem
    for p in (ROOT / "configs/reproduce").glob("*.yaml")
    if p.stem.split("-")[0] not in {Path(d).stem for d in DATA_YAMLS}
)


CORE = tuple(seed_methods())
MATRIX = [(d, a) for d in DATA_YAMLS for a in ARCH_YAMLS if Path(a).stem in CORE or Path(d).stem == "text"]


@pytest.mark.slow
@pytest.mark.parametrize("data,arch", MATRIX, ids=lambda p: Path(p).stem)
def test_every_shipped_data_and_method_config_runs_fit_fast_dev_run(data, arch, in_tmp):
    """Every data config with every core method, every method config (controls and readings
    included) with the text data; the run is named <modality>-<arch> by default."""
    modality = Path(data).stem
    cli = cli_main(
        [
            "fit",
            "--config",
            data,
            "--config",
            arch,
            "--config",
            CPU,
            "--trainer.fast_dev_run",
            "true",
            *SMALL_DATA.get(modality, []),
        ]
    )
    assert cli.config.fit.trainer.logger.init_args.name == f"{modality}-{Path(arch).stem}"


def test_combined_readers_run_from_a_config_list(in_tmp):
    """A list of readers composes them (here VA's input mixing with LAS's final-layer attention)."""
    combo = in_tmp / "combo.yaml"
    combo.write_text(
        "model:\n  init_args:\n    arch:\n"
        "      - class_path: lit_vattn.arch.VerticalAttention\n"
        "      - class_path: lit_vattn.arch.LayerwiseAttentionShortcuts\n"
    )
    cli = cli_main(
        [
            "fit",
            "--config",
            TEXT,
            "--config",
            str(combo),
            "--config",
            CPU,
            *TINY,
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    assert [type(r).__name__ for r in cli.model.net.arch.readers] == [
        "VerticalAttention",
        "LayerwiseAttentionShortcuts",
    ]
    assert (in_tmp / "runs/text-va+las/config.yaml").is_file()


@pytest.mark.parametrize(
    "preset",
    sorted(glob.glob(str(ROOT / "configs/trainer/*.yaml")) + glob.glob(str(ROOT / "configs/logger/*.yaml"))),
    ids=lambda p: os.path.relpath(p, ROOT / "configs"),
)
def test_trainer_and_logger_presets_compose_with_a_data_config(preset, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["fit", "--config", TEXT, "--config", preset, "--print_config"])
    assert e.value.code == 0
    assert "class_path: lit_vattn.LanguageModel" in capsys.readouterr().out


@pytest.mark.parametrize("modality", [Path(d).stem for d in DATA_YAMLS])
@pytest.mark.parametrize("preset", PRESETS)
def test_reproduce_presets_compose_with_every_modality(modality, preset, in_tmp, capsys):
    """The overlays lit-vattn-reproduce stacks on a model YAML (tiny runs end to end in test_reproduce)."""
    from lit_vattn.experiments.reproduce import configs

    with pytest.raises(SystemExit) as e:
        cli_main(["fit", *configs(modality, "las", preset, ROOT / "configs"), "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "LayerwiseAttentionShortcuts" in out and "max_seq_len" in out


class Recorder(Callback):
    def __init__(self):
        self.losses, self.batches = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.batches.append(batch["index"].tolist())


def _fit(steps: int, ckpt=None, every=None, curve=()) -> Recorder:
    args = [
        "--config",
        TEXT,
        "--config",
        CPU,
        *TINY,
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        *curve,
    ]
    if every:
        args += ["--checkpoint.every_n_train_steps", str(every)]
    cli = cli_main(args, run=False)
    rec = Recorder()
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    rec.curve = next(c for c in cli.trainer.callbacks if isinstance(c, BudgetCurve)).curve
    return rec


def test_exact_resume_continues_the_same_stream(in_tmp):
    """... and the budget curve's evaluations (eval mode, its own loader) draw nothing from the
    training stream: the losses equal those of a run without them; the curve survives the resume."""
    N, M = 5, 4
    curve = ["--curve.points", "5", "--curve.first_step", "2", "--curve.max_batches", "1"]
    straight = _fit(N + M)
    first = _fit(N, every=N, curve=curve)
    ckpt = in_tmp / "runs/text-vanilla/checkpoints/last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == N and state["TextDataModule"]["consumed"] == N * 4
    resumed = _fit(N + M, ckpt=str(ckpt), curve=curve)
    assert first.batches == straight.batches[:N]
    assert resumed.batches == straight.batches[N:]  # same windows after the restart
    assert first.losses == pytest.approx(straight.losses[:N], rel=1e-5)
    assert resumed.losses == pytest.approx(straight.losses[N:], rel=1e-4)
    assert len({i for b in straight.batches for i in b}) == (N + M) * 4  # no window drawn twice
    # points are spaced up to each invocation's max_steps: 2..5 before the restart, then 6 and 9
    assert [p["step"] for p in first.curve] == [2, 3, 4, 5]
    assert [p["step"] for p in resumed.curve] == [2, 3, 4, 5, 6, 9]
    assert resumed.curve[:4] == first.curve and [p["tokens"] for p in resumed.curve] == [
        s * 4 * 32 for s in (2, 3, 4, 5, 6, 9)
    ]
    summary = json.loads((in_tmp / "runs/text-vanilla/summary.json").read_text())
    assert summary["curve"] == resumed.curve and all(p["nll"] > 0 and "bits_per_byte" in p for p in resumed.curve)


def test_budget_curve_point_equals_the_validation_at_the_same_step(in_tmp):
    """The curve scores with the module's own loss and metrics: at a validation step, on the same
    batches, it equals Lightning's validation."""
    cli = cli_main(
        [
            "--config",
            TEXT,
            "--config",
            CPU,
            *TINY,
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "4",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--curve.points",
            "2",
            "--curve.first_step",
            "2",
            "--curve.max_batches",
            "2",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    summary = json.loads((in_tmp / "runs/text-vanilla/summary.json").read_text())
    assert [p["step"] for p in summary["curve"]] == [2, 4]
    assert summary["curve"][-1]["nll"] == pytest.approx(summary["val"][-1]["nll"], rel=1e-6)
    with pytest.raises(ValueError, match="--curve.points must be >= 0"):
        BudgetCurve(points=-1)


@pytest.fixture
def tiny_ckpt(in_tmp):
    cli_main(
        [
            "fit",
            "--config",
            TEXT,
            "--config",
            CPU,
            *TINY,
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.val_check_interval",
            "3",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    run = in_tmp / "runs/text-vanilla"  # one directory per run name
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/nll", "val/bpt", "val/ppl", "val/bits_per_byte"} <= set(header)
    return run / "checkpoints" / "last.ckpt"


def test_test_command_prints_metrics_from_a_checkpoint(tiny_ckpt, capsys):
    cli_main(
        [
            "test",
            "--config",
            TEXT,
            "--config",
            CPU,
            *TINY,
            "--trainer.limit_test_batches",
            "3",
            "--ckpt_path",
            str(tiny_ckpt),
        ]
    )
    out = capsys.readouterr().out
    for key in ("test/nll", "test/bpt", "test/ppl", "test/bits_per_byte"):
        assert key in out


def test_vocabulary_mismatch_between_checkpoint_and_data(tiny_ckpt):
    with pytest.raises(
        ValueError, match=r"vocab_size \(linked from the data tokenizer\): checkpoint 8192, options 50257"
    ):
        cli_main(
            [
                "test",
                "--config",
                TEXT,
                "--config",
                CPU,
                *TINY,
                "--data.init_args.tokenizer",
                "gpt2",
                "--data.init_args.max_documents",
                "2000",
                "--ckpt_path",
                str(tiny_ckpt),
            ]
        )


def test_unknown_config_key_is_named(in_tmp, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", TEXT, "--model.init_args.config.n_layers", "3"])
    assert "n_layers" in capsys.readouterr().err
    bad = in_tmp / "bad.yaml"
    bad.write_text("data:\n  class_path: datamodules.TextDataModule\n  init_args:\n    sequence_length: 128\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", TEXT, "--config", str(bad)])
    assert "sequence_length" in capsys.readouterr().err


def test_seq_len_beyond_the_model_context_is_rejected(in_tmp):
    with pytest.raises(ValueError, match="data.seq_len=64 exceeds model config.max_seq_len=32"):
        cli_main(
            [
                "fit",
                "--config",
                TEXT,
                "--config",
                CPU,
                *TINY,
                "--model.init_args.config.max_seq_len",
                "32",
                "--data.init_args.seq_len",
                "64",
                "--trainer.fast_dev_run",
                "true",
            ]
        )


def test_prepare_command_tokenizes_and_stops(in_tmp, capsys, bpe_text):
    from lit_vattn.tools.prepare import main

    main(["--config", TEXT])
    out = capsys.readouterr().out
    assert "shards ready in" in out and str(bpe_text.shard_dir) in out
    assert not (in_tmp / "runs").exists()  # nothing trained


def test_optimizer_flags_are_not_offered_since_the_module_owns_its_groups(in_tmp, capsys):
    """Lightning's --optimizer/--lr_scheduler would silently replace the module's parameter groups
    (no decay on norms/embeddings/depth mixers, mix_lr_mult) and its warmup schedule."""
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--optimizer" not in out and "--lr_scheduler" not in out
    assert "--model.init_args.lr" in out or "--model CONFIG" in out
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", TEXT, "--optimizer", "torch.optim.SGD"])
