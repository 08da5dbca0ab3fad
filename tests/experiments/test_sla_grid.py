"""The SLA grid: the reference table tunes vanilla and the default cell on a held-out seed, every other
cell trains at that lr under its own override and records folder, and the table's paired differences
are the records' own numbers, Holm within each declared family."""

import json
import shutil

import pytest
import yaml
from helpers import ROOT

from lit_vattn.experiments import sla_grid
from lit_vattn.experiments.records import RunRecord

MICRO = {  # 4 blocks x 2 heads: the default cell is 3 x 2 (round(3L/4) x round(3H/4))
    "model": {
        "init_args": {
            "config": {"n_layer": 4, "n_head": 2, "d_model": 32, "max_seq_len": 32},
            "lr": 3.0e-3,
            "warmup_steps": 1,
        }
    },
    "data": {"init_args": {"seq_len": 32, "batch_size": 2}},
    "trainer": {
        "accelerator": "cpu",
        "precision": "32-true",
        "max_steps": 4,
        "val_check_interval": 4,
        "limit_val_batches": 3,
        "limit_test_batches": 3,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
    },
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, shard_cache, bpe_text):
    tmp = tmp_path_factory.mktemp("grid")
    shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "configs/reproduce/micro.yaml").write_text(yaml.safe_dump(MICRO))
    argv = ["--preset", "micro", "--layers", "3", "--heads", "1,2", "--seeds", "0,1", "--lrs", "3e-3,6e-3"]
    argv += ["--config-dir", str(tmp / "configs"), "--out", str(tmp / "results")]
    md = sla_grid.main([*argv, "--runs", str(tmp / "runs"), "--records", str(tmp / "records")])
    return tmp, argv, md


@pytest.mark.slow
def test_cells_train_under_their_own_override_at_the_default_cells_lr(grid):
    tmp, _, md = grid
    rec = tmp / "records"
    cell = RunRecord(rec / "sla-grid/l3-h1/text-micro/sla/seed1")
    arch = yaml.safe_load(cell.config_path.read_text())["model"]["init_args"]["arch"]["init_args"]
    assert (arch["n_skip_layers"], arch["n_skip_heads"]) == (3, 1) and cell.done["override"]
    lr = RunRecord(rec / "sla-grid/l3-h1/text-micro/sla/seed1").lr
    assert lr == sla_grid.seed_runs(rec / "text-micro/sla", [0, 1])[0].lr  # the default cell's lr
    assert all(RunRecord(rec / f"text-micro/sla/lr{x}/seed100").is_done for x in ("0.003", "0.006"))  # tuned off-table
    assert not (rec / "sla-grid/l3-h2").exists()  # the default cell is the reference's SLA
    text = md.read_text()
    assert "| 3 x 2 (default) | 1, 2, 3 |" in text and "| 3 x 1 | 1, 2, 3 |" in text
    assert "on seed 100 (not in the table)" in text


@pytest.mark.slow
def test_the_differences_are_the_records_paired_numbers_and_rebuild_from_them(grid):
    tmp, argv, md = grid
    rec = tmp / "records"
    test = lambda d, s: RunRecord(rec / d / f"seed{s}").done["test_nll"]  # noqa: E731
    rows = {(r["n_skip_layers"], r["n_skip_heads"]): r for r in json.loads(md.with_suffix(".json").read_text())["runs"]}
    van = sla_grid.seed_runs(rec / "text-micro/vanilla", [0, 1])
    diffs = [test("sla-grid/l3-h1/text-micro/sla", s) - van[s].done["test_nll"] for s in (0, 1)]
    assert rows[(3, 1)]["vs_vanilla"]["delta"] == pytest.approx(sum(diffs) / 2)
    assert (
        rows[(3, 2)]["vs_default"] is None and rows[(3, 1)]["vs_default"]["p_holm"] == rows[(3, 1)]["vs_default"]["p"]
    )
    p = sorted((rows[c]["vs_vanilla"]["p"], c) for c in ((3, 1), (3, 2)))  # Holm over the two cells
    holm = {p[0][1]: min(1.0, 2 * p[0][0]), p[1][1]: min(1.0, max(2 * p[0][0], p[1][0]))}
    assert all(rows[c]["vs_vanilla"]["p_holm"] == pytest.approx(holm[c]) for c in holm)
    again = sla_grid.main([*argv, "--runs", str(rec), "--table-only", "--out", str(tmp / "again")])
    assert (
        json.loads(again.with_suffix(".json").read_text())["rows"]
        == json.loads(md.with_suffix(".json").read_text())["rows"]
    )


def test_an_impossible_cell_or_a_tuning_seed_in_the_table_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match=r"--layers 9 / --heads 1: .*n_skip_layers=9 must be in \[0, 8\]"):
        sla_grid.main(["--layers", "9", "--heads", "1", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match="--lr-seed 0 is one of --seeds"):
        sla_grid.main(["--lr-seed", "0", "--runs", str(tmp_path)])
    assert not any(tmp_path.iterdir())
