"""A score belongs to the model it names; a broken run never looks good.

Divergence stops a run; last.ckpt is the final model and survives a crash mid-save; ``--ckpt_path
last`` continues the run and ``test`` writes beside it; a checkpoint is only scored as the model it
holds, into its own run, and refuses data of another tokenizer; ``test`` leaves the training config
as it was; one command at a time per run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from helpers import CPU, QUIET, ROOT, TEXT
from lightning.pytorch.loggers import Logger

from lit_vattn.train.callbacks import read_summary
from lit_vattn.train.cli import cli_main
from lit_vattn.train.metrics import NLLMetrics, NonFiniteMetricError

TINY = [*helpers.TINY, *QUIET]


def fit(*extra: str) -> None:
    cli_main(["fit", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_val_batches", "0", *extra])


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_a_diverged_run_stops_with_the_step_and_exits_nonzero(in_tmp):
    cmd = [
        sys.executable,
        "-m",
        "lit_vattn",
        "fit",
        "--config",
        TEXT,
        "--config",
        CPU,
        *TINY,
        "--model.init_args.lr",
        "1e6",
        "--trainer.max_steps",
        "30",
        "--trainer.val_check_interval",
        "10",
        "--trainer.limit_val_batches",
        "2",
    ]
    p = subprocess.run(cmd, cwd=in_tmp, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0
    assert (
        "DivergedError: training loss" in p.stderr
        and "at step" in p.stderr
        and "model.init_args.lr=1000000.0" in p.stderr
    )
    assert not list(in_tmp.glob("runs/**/*.ckpt"))  # no checkpoint of a diverged state


def test_evaluation_refuses_nan_instead_of_dropping_it():
    m = NLLMetrics()
    m.update(torch.tensor(3.0), torch.ones(1, 4, dtype=torch.long), None)
    with pytest.raises(NonFiniteMetricError, match="never scored"):
        m.update(torch.tensor(float("nan")), torch.ones(1, 4, dtype=torch.long), None)
    with pytest.raises(NonFiniteMetricError):
        m.update(torch.tensor(float("inf")), torch.ones(1, 4, dtype=torch.long), None)


def test_last_checkpoint_is_the_final_step_whatever_the_interval(in_tmp):
    fit("--trainer.max_steps", "7", "--checkpoint.every_n_train_steps", "5")
    assert step_of(in_tmp / "runs/text-vanilla/checkpoints/last.ckpt") == 7


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_loadable(in_tmp, monkeypatch):
    fit("--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "5")
    last = in_tmp / "runs/text-vanilla/checkpoints/last.ckpt"
    assert step_of(last) == 5
    import lightning.fabric.plugins.io.torch_io as torch_io

    class Killed(BaseException):  # like SIGKILL, nothing may catch it and tidy up
        pass

    def killed_mid_write(checkpoint, filepath):  # half the bytes reach the disk, then the process "dies"
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise Killed("simulated kill during a save")

    real_save = torch_io._atomic_save
    monkeypatch.setattr(torch_io, "_atomic_save", killed_mid_write)
    with pytest.raises(Killed):
        fit("--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "2", "--ckpt_path", "last")
    assert step_of(last) == 5  # the previous checkpoint is whole and still the last one
    monkeypatch.setattr(torch_io, "_atomic_save", real_save)  # (undo() would also undo the fixture's chdir)
    fit("--trainer.max_steps", "6", "--ckpt_path", "last")  # a later run cleans the debris and continues
    assert step_of(last) == 6
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name]


def test_ckpt_path_last_continues_the_run_and_test_writes_beside_it(in_tmp, capsys):
    with pytest.raises(FileNotFoundError, match="--ckpt_path last: no last checkpoint"):
        fit("--trainer.max_steps", "3", "--ckpt_path", "last")
    fit("--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1")
    run = in_tmp / "runs/text-vanilla"
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        fit("--trainer.max_steps", "5")  # a fresh fit must not silently restart a trained run
    fit("--trainer.max_steps", "5", "--trainer.log_every_n_steps", "1", "--ckpt_path", "last")
    assert step_of(run / "checkpoints/last.ckpt") == 5
    with pytest.raises(ValueError, match="needs --ckpt_path"):
        cli_main(["test", "--config", TEXT, "--config", CPU, *TINY])
    cli_main(
        ["test", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_test_batches", "2", "--ckpt_path", "last"]
    )
    assert [p.name for p in (in_tmp / "runs").iterdir()] == ["text-vanilla"]  # no version_N directories
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("train/loss")]]
    assert steps == [0, 1, 2, 3, 4]  # the resumed fit appended to the first one's log
    assert "test/nll" in header
    # the run's own summary (what tables read) continued from the checkpoint too, and holds the test
    summary = read_summary(run)
    assert [s for s, _, _ in summary["train"]] == [1, 2, 3, 4, 5]
    assert [t for _, t, _ in summary["train"]] == [4 * 32 * k for k in range(1, 6)]  # batch x seq_len x steps
    assert summary["stats"]["global_step"] == 5 and summary["test"]["nll"] > 0


class MemoryLogger(Logger):
    """A logger that is neither CSV nor TensorBoard: keeps metrics in memory, files in save_dir."""

    def __init__(self, save_dir: str = "elsewhere"):
        super().__init__()
        self._save_dir, self.rows = save_dir, []

    name, version = "memory", 0

    @property
    def save_dir(self):
        return self._save_dir

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, metrics))


def test_the_summary_does_not_depend_on_the_logger(in_tmp):
    """Tables read summary.json, which the run writes whatever logger it uses."""
    fit(
        "--trainer.max_steps",
        "4",
        "--trainer.logger",
        "test_runs.MemoryLogger",
        "--trainer.logger.init_args.save_dir",
        "elsewhere",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--trainer.log_every_n_steps",
        "2",
    )
    summary = read_summary(in_tmp / "elsewhere")
    assert [v["step"] for v in summary["val"]] == [2, 4] and all(
        v["nll"] > 0 and v["bits_per_byte"] > 0 for v in summary["val"]
    )
    assert [s for s, _, _ in summary["train"]] == [2, 4]
    assert summary["stats"]["tokens_seen"] == 4 * 4 * 32 and summary["stats"]["params"] > 0


def test_a_different_bpe_of_the_same_size_is_refused_by_test_and_resume(in_tmp):
    a, b = in_tmp / "a", in_tmp / "b"
    helpers.text_folder(a, 12)
    b.mkdir()
    for i in range(12):
        (b / f"x{i}.txt").write_text(f"Completely other words: quartz {i} zephyr jinx vex, bold nymphs {i}. " * 25)

    def files(d):
        return [
            "--data.init_args.source",
            "files",
            "--data.init_args.files",
            f"[{d}]",
            "--data.init_args.bpe_vocab_size",
            "300",
        ]

    fit(*files(a), "--trainer.max_steps", "2")
    ckpt = str(in_tmp / "runs/text-vanilla/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match="tokenizer mismatch.*tokenizer.json"):
        cli_main(["test", "--config", TEXT, "--config", CPU, *TINY, *files(b), "--ckpt_path", ckpt])
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        fit(*files(b), "--trainer.max_steps", "4", "--ckpt_path", ckpt)
    cli_main(["test", "--config", TEXT, "--config", CPU, *TINY, *files(a), "--ckpt_path", ckpt])  # its own data passes


ARCH = ROOT / "configs/arch"


@pytest.mark.parametrize(
    "options,key",
    [
        (["--config", str(ARCH / "va.yaml")], "arch: checkpoint 'vanilla', options 'lit_vattn.arch.VerticalAttention'"),
        (["--config", str(ARCH / "sla.yaml")], "arch: checkpoint 'vanilla'"),
        (["--config", str(ARCH / "value-residual.yaml")], "arch: checkpoint 'vanilla'"),
        (["--model.init_args.config.d_model", "128"], "config.d_model: checkpoint 64, options 128"),
        (["--model.init_args.config.n_head", "4"], "config.n_head: checkpoint 2, options 4"),
    ],
)
def test_test_refuses_a_checkpoint_of_another_model_and_scores_nothing(options, key, trained):
    run, ckpt = trained
    from lit_vattn.train.cli import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=re.escape(key)):
        cli_main(["test", "--config", TEXT, "--config", CPU, *TINY, *options, "--ckpt_path", str(ckpt)])
    assert [p.name for p in (run.parent).iterdir()] == ["text-vanilla"]  # no text-va etc. with a vanilla score
    assert "test" not in read_summary(run)


def test_a_checkpoint_file_scores_into_its_own_run_and_its_config_reproduces_it(trained, monkeypatch, capsys):
    run, ckpt = trained
    # the run's own config describes the checkpoint exactly; an unnamed test writes into the checkpoint's run
    cli_main(
        ["test", "--config", str(run / "config.yaml"), "--trainer.limit_test_batches", "2", "--ckpt_path", str(ckpt)]
    )
    assert read_summary(run)["test"]["nll"] > 0
    assert (run / "test-config.yaml").is_file()
    # resuming with another optimiser is another run too; the refusal is exit status 2 with the keys named
    from lit_vattn.train import cli

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "lit-vattn",
            "fit",
            "--config",
            TEXT,
            "--config",
            CPU,
            *TINY,
            "--model.init_args.lr",
            "0.5",
            "--trainer.max_steps",
            "4",
            "--ckpt_path",
            "last",
        ],
    )
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "model.init_args.lr: checkpoint 0.002, options 0.5" in capsys.readouterr().err
    assert step_of(ckpt) == 2


@pytest.fixture
def trained(in_tmp):
    fit("--trainer.max_steps", "2")
    run = in_tmp / "runs/text-vanilla"
    return run, run / "checkpoints/last.ckpt"


@pytest.mark.slow
def test_the_readme_path_fit_test_generate_analyze_lm_eval(trained, in_tmp):
    """Each tool reads the run's training config, which `test` leaves as trained."""
    import yaml

    from lit_vattn.tools import analyze, generate

    run, ckpt = trained
    config = (run / "config.yaml").read_text()
    cli_main(
        ["test", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_test_batches", "2", "--ckpt_path", "last"]
    )
    assert (run / "config.yaml").read_text() == config  # the test's own options went to test-config.yaml
    assert Path(yaml.safe_load((run / "test-config.yaml").read_text())["ckpt_path"]).resolve() == ckpt.resolve()
    samples = generate.main(["--ckpt_path", str(ckpt), "--n", "1", "--max_new_tokens", "4", "--out", str(in_tmp / "s")])
    assert samples and all(p.exists() for p in samples)
    assert analyze.main(["logit-lens", "--ckpt_path", str(ckpt), "--batches", "1", "--out", str(in_tmp / "a")])
    pytest.importorskip("lm_eval")
    from lit_vattn.tools.lm_eval_adapter import LitVattnLM

    lm = LitVattnLM(ckpt_path=str(ckpt), batch_size=1, device="cpu")
    assert lm.encode("In the beginning")


def test_a_busy_run_is_refused_with_its_holder_and_a_dead_holders_lock_is_taken_over(in_tmp):
    from lit_vattn.train.runs import RunBusyError

    run = in_tmp / "runs/text-vanilla"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lit_vattn.train.runs import RunLock; "
            f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=rf"in use by pid {holder.pid} on .*--trainer.logger.init_args.name"):
            fit("--trainer.max_steps", "2")
        assert not (run / "checkpoints").exists()  # refused before anything ran
    finally:
        holder.kill()  # SIGKILL: no clean-up; the kernel frees its lock
        holder.wait()
    fit("--trainer.max_steps", "2")
    assert step_of(run / "checkpoints/last.ckpt") == 2
    cli_main(
        ["test", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_test_batches", "1", "--ckpt_path", "last"]
    )
