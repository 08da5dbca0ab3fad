"""A run's record: read once while unchanged, afresh when a file changes; a run of other settings is
not the run an --override asks for."""

import os

import pytest

from lit_vattn.experiments.records import RunRecord, check_same_override, override_pairs
from lit_vattn.io import write_json


def test_a_run_record_is_read_again_when_its_files_change(tmp_path):
    write_json(tmp_path / "run" / "done.json", {"lr": 0.003, "test_nll": 5.0})
    first = RunRecord.at(tmp_path / "run")
    assert first.done["test_nll"] == 5.0 and RunRecord.at(str(tmp_path / "run")) is first  # read once
    write_json(tmp_path / "run" / "done.json", {"lr": 0.003, "test_nll": 4.0})
    os.utime(tmp_path / "run" / "done.json", ns=(1, 1))  # a different stamp even within the clock's resolution
    assert RunRecord.at(tmp_path / "run").done["test_nll"] == 4.0


def _run(path, mix_lr_mult, done_override=None):
    """A run directory with a saved config (and, given ``done_override``, a done.json recording it)."""
    (path / "fit").mkdir(parents=True)
    (path / "fit" / "config.yaml").write_text(f"model:\n  init_args:\n    mix_lr_mult: {mix_lr_mult}\n    lr: 0.003\n")
    if done_override is not None:
        write_json(path / "done.json", {"lr": 0.003, "override": done_override})
    return RunRecord(path)


def test_override_pairs_read_both_spellings():
    got = override_pairs(["--trainer.max_steps", "8", "--model.init_args.mix_lr_mult=10", "--flag", "--x", "1"])
    assert got == [("trainer.max_steps", "8"), ("model.init_args.mix_lr_mult", "10"), ("x", "1")]


def test_a_run_of_other_settings_is_not_the_run_an_override_asks_for(tmp_path):
    resumable = _run(tmp_path / "a", 1.0)  # still training: only its config tells
    assert resumable.override_conflict(["--model.init_args.mix_lr_mult", "1"]) is None  # 1 == 1.0
    assert "mix_lr_mult: 1.0, this command --model.init_args.mix_lr_mult 10" in resumable.override_conflict(
        ["--model.init_args.mix_lr_mult", "10"]
    )
    assert resumable.override_conflict(["--trainer.max_steps", "8"]) is None  # a key its config lacks
    made = _run(tmp_path / "b", 10.0, done_override=["--model.init_args.mix_lr_mult", "10"])
    assert "made with --override --model.init_args.mix_lr_mult 10" in made.override_conflict([])
    assert made.override_conflict([], made_with=False) is None  # --table-only: the config alone decides
    assert _run(tmp_path / "c", 1.0, done_override=[]).override_conflict([]) is None


def test_check_same_override_refuses_before_training_and_names_the_fix(tmp_path):
    _run(tmp_path / "text-tiny" / "va" / "seed0", 1.0, done_override=[])
    check_same_override([tmp_path / "text-tiny"], ["va"], [])
    mix10 = ["--model.init_args.mix_lr_mult", "10"]
    with pytest.raises(SystemExit, match=r"1 run\(s\) already there .* their own --runs and --records"):
        check_same_override([tmp_path / "text-tiny", tmp_path / "absent"], ["vanilla", "va"], mix10)
    check_same_override([tmp_path / "text-tiny"], ["hc"], mix10)  # only the runs the command would reuse
