"""A run's record: read once while unchanged, afresh when a file changes."""

import os

from lit_vattn.experiments.records import RunRecord
from lit_vattn.io import write_json


def test_a_run_record_is_read_again_when_its_files_change(tmp_path):
    write_json(tmp_path / "run" / "done.json", {"lr": 0.003, "test_nll": 5.0})
    first = RunRecord.at(tmp_path / "run")
    assert first.done["test_nll"] == 5.0 and RunRecord.at(str(tmp_path / "run")) is first  # read once
    write_json(tmp_path / "run" / "done.json", {"lr": 0.003, "test_nll": 4.0})
    os.utime(tmp_path / "run" / "done.json", ns=(1, 1))  # a different stamp even within the clock's resolution
    assert RunRecord.at(tmp_path / "run").done["test_nll"] == 4.0
