"""A number in a table is the model it names; a broken run can never look good.

Divergence stops a run; last.ckpt is the final model and survives a crash mid-save; the shard cache
follows the files; a checkpoint refuses data of another tokenizer; ``--ckpt_path last`` continues the
run; small folders work with defaults; reproduce refuses malformed requests; a checkpoint is only
scored as the model it holds, into its own run; ``test`` leaves the training config as it was; one
command at a time per run."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from helpers import CPU, QUIET, ROOT, TEXT
from lightning.pytorch.loggers import Logger

from datamodules import AcousticDataModule, MusicDataModule, TextDataModule, shards
from lit_vattn.train.callbacks import read_summary
from lit_vattn.train.cli import cli_main
from lit_vattn.train.metrics import NLLMetrics, NonFiniteMetricError

TINY = [*helpers.TINY, *QUIET]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, bpe_text):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fit(*extra: str) -> None:
    cli_main(["fit", "--config", TEXT, "--config", CPU, *TINY, "--trainer.limit_val_batches", "0", *extra])


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


# --- divergence ----------------------------------------------------------------------------------


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


# --- checkpoints ---------------------------------------------------------------------------------


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


# --- one directory per run; --ckpt_path last --------------------------------------------------


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
        "test_trust.MemoryLogger",
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


# --- the shard cache follows the files -----------------------------------------------------------


def _text_folder(d: Path, n: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(f"Document {i} tells the story of town {i} and its river. " * 20)


def test_text_folder_edits_change_the_shard_key_and_copies_keep_it(tmp_path):
    d = tmp_path / "corpus"
    _text_folder(d, 12)

    def key(folder):
        return TextDataModule(
            source="files",
            files=[str(folder)],
            tokenizer="bpe",
            bpe_vocab_size=300,
            cache_dir=str(tmp_path / "c"),
        ).shard_dir.name

    k0 = key(d)
    (d / "new.txt").write_text("an added document")
    k1 = key(d)
    (d / "doc03.txt").write_text("an edited document, of another length")
    k2 = key(d)
    (d / "new.txt").unlink()
    k3 = key(d)
    assert len({k0, k1, k2, k3}) == 4
    shutil.copytree(d, tmp_path / "elsewhere" / "corpus")  # same relative paths, sizes, mtimes
    assert key(tmp_path / "elsewhere" / "corpus") == k3


def test_music_and_audio_folder_edits_change_the_shard_key(tmp_path):
    import soundfile as sf
    from test_music_data import _midi_with_notes

    m, a = tmp_path / "midi", tmp_path / "audio"
    m.mkdir()
    a.mkdir()
    for i in range(4):
        _midi_with_notes(m / f"p{i}.mid", 10 + i)
        sf.write(str(a / f"c{i}.wav"), np.random.default_rng(i).normal(0, 0.1, 24000).astype(np.float32), 24000)
    mkey = lambda: MusicDataModule(source="files", files=[str(m)], cache_dir=str(tmp_path / "c")).shard_dir.name  # noqa: E731

    def akey():
        return AcousticDataModule(
            source="files",
            files=[str(a)],
            codec_weights="random",
            cache_dir=str(tmp_path / "c"),
        ).shard_dir.name

    keys_m, keys_a = [mkey()], [akey()]
    _midi_with_notes(m / "added.mid", 5)
    sf.write(str(a / "added.wav"), np.zeros(2400, np.float32), 24000)
    keys_m.append(mkey())
    keys_a.append(akey())
    _midi_with_notes(m / "p0.mid", 30)  # edited: another size
    sf.write(str(a / "c0.wav"), np.zeros(4800, np.float32), 24000)
    keys_m.append(mkey())
    keys_a.append(akey())
    (m / "added.mid").unlink()
    (a / "added.wav").unlink()
    keys_m.append(mkey())
    keys_a.append(akey())
    assert len(set(keys_m)) == 4 and len(set(keys_a)) == 4


def test_a_small_folder_gets_every_split_with_the_default_fractions(in_tmp):
    _text_folder(in_tmp / "twelve", 12)
    assign = shards.split_keys([f"doc{i:02d}.txt" for i in range(12)], 0.01, 0.01)
    assert sorted(assign.values()).count("val") == 1 and sorted(assign.values()).count("test") == 1
    fit(
        "--data.init_args.source",
        "files",
        "--data.init_args.files",
        f"[{in_tmp / 'twelve'}]",
        "--data.init_args.bpe_vocab_size",
        "300",
        "--trainer.max_steps",
        "2",
    )
    assert (in_tmp / "runs/text-vanilla/checkpoints/last.ckpt").exists()


# --- a checkpoint refuses another tokenizer of the same size ----------------------------------------


def test_a_different_bpe_of_the_same_size_is_refused_by_test_and_resume(in_tmp):
    a, b = in_tmp / "a", in_tmp / "b"
    _text_folder(a, 12)
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


# --- reproduce refuses malformed requests --------------------------------------------------------


@pytest.mark.parametrize(
    "archs,seeds,match",
    [
        (",", "0", r"names no architecture; choose from: .*\blas, .*\bsla, .*\bva, .*\bvanilla\b"),
        ("vanila", "0", "unknown vanila.*choose from"),
        ("vanilla", "a", "--seeds 'a' must be comma-separated integers"),
        ("vanilla", "1,1", "distinct"),
    ],
)
def test_reproduce_rejects_bad_archs_and_seeds_in_one_line(archs, seeds, match, tmp_path):
    from lit_vattn.experiments.reproduce import main

    with pytest.raises(SystemExit, match=match):
        main(
            ["--modality", "text", "--archs", archs, "--seeds", seeds, "--runs", str(tmp_path), "--out", str(tmp_path)]
        )
    assert not list(tmp_path.iterdir())


def test_a_partial_request_never_takes_the_canonical_table_name():
    from types import SimpleNamespace

    from lit_vattn.experiments.tables import table_stem

    args = SimpleNamespace(modality="text", preset="tiny")
    full = [{"arch": a, "seed": s} for a in ("vanilla", "va", "las", "sla") for s in (0, 1, 2)]
    assert table_stem(args, full) == "text-tiny"
    assert table_stem(args, full[:6]) != "text-tiny"
    assert table_stem(args, [r for r in full if r["seed"] < 2]) != "text-tiny"
    failed = [dict(r, failed="diverged") if r["arch"] == "va" and r["seed"] == 1 else r for r in full]
    assert table_stem(args, failed).endswith("-incomplete")


def test_audio_files_honour_seconds_and_max_clips_before_decoding(tmp_path, monkeypatch):
    import soundfile as sf

    from datamodules import audio_sources

    d = tmp_path / "audio"
    d.mkdir()
    for i in range(10):  # ten 1-second files
        sf.write(str(d / f"c{i}.wav"), np.random.default_rng(i).normal(0, 0.1, 24000).astype(np.float32), 24000)
    picked = audio_sources.select_files([str(d)], seconds=3.5, max_clips=None, seed=0, skipped=[])
    assert len(picked) == 4  # 4 s >= 3.5 s, chosen from the headers
    assert len(audio_sources.select_files([str(d)], seconds=None, max_clips=2, seed=0, skipped=[])) == 2
    assert picked == audio_sources.select_files([str(d)], seconds=3.5, max_clips=None, seed=0, skipped=[])  # seeded
    decoded = []
    real = audio_sources.read_audio
    monkeypatch.setattr(audio_sources, "read_audio", lambda p: decoded.append(p) or real(p))
    list(audio_sources.file_clips(picked, []))
    assert sorted(decoded) == sorted(p for p, _ in picked)  # nothing else was decoded


def test_a_missing_optional_stack_is_named_with_its_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "miditok" else real(name, *a))
    with pytest.raises(ImportError, match=r'MusicDataModule needs miditok: pip install -e "\.\[music\]"'):
        MusicDataModule()


def test_no_source_or_config_file_is_hidden_by_gitignore():
    """A file the suite ships (code, configs, tests, results) must not match .gitignore: once a
    pattern ('data/') silently kept configs/data/mqar.yaml out of the repository, and only a clean
    clone failed. Checked in a git checkout; a tarball has nothing to compare."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shipped = [
        "configs",
        "lit_vattn",
        "datamodules",
        "scripts",
        "benchmarks",
        "tests",
        "results",
        ".ci",
        "README.md",
        "pyproject.toml",
    ]
    out = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *shipped],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    hidden = [p for p in out if "__pycache__" not in p and not p.endswith(".pyc")]
    assert not hidden, f"ignored by .gitignore, so never committed: {hidden} (narrow the pattern in .gitignore)"


# --- a score belongs to the model it names -------------------------------------------------------

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


def test_data_errors_come_before_the_model_is_built(in_tmp, monkeypatch):
    import lit_vattn.train.module

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(lit_vattn.train.module, "GPT", no_model)
    (in_tmp / "empty").mkdir()
    (in_tmp / "one").mkdir()
    (in_tmp / "one" / "only.txt").write_text("a single document")
    files = ["--data.init_args.source", "files", "--data.init_args.files"]
    with pytest.raises(ValueError, match="no text files found"):  # jsonargparse passes the data's error on
        fit(*files, f"[{in_tmp / 'empty'}]")
    with pytest.raises(ValueError, match="would be empty.*sample_by=paragraph"):
        fit(*files, f"[{in_tmp / 'one'}]")
