"""Budget curves of the lr sweep: every method paired with vanilla at the same lr, one panel per lr."""

import csv

import pytest

from lit_vattn.experiments.curves import plot_shared_lr_budget
from lit_vattn.io import write_json


def _run(root, arch, lr, nll):
    d = root / arch / f"lr{lr:g}" / "seed100"
    curve = [{"step": s, "tokens": s * 1024, "nll": v} for s, v in zip((10, 100), nll)]
    write_json(d / "fit" / "summary.json", {"curve": curve})
    return {"arch": arch, "seed": 100, "lr": lr, "run_dir": str(d)}


def test_sweep_runs_pair_with_vanilla_at_equal_lr_only_where_every_method_ran(tmp_path):
    sweep = [
        _run(tmp_path, "vanilla", 3e-3, (5.0, 4.0)),
        _run(tmp_path, "vanilla", 6e-3, (4.8, 3.9)),
        _run(tmp_path, "sla", 3e-3, (5.1, 3.9)),
        _run(tmp_path, "sla", 6e-3, (4.7, 3.95)),
        _run(tmp_path, "sla", 1.2e-2, (4.0, 3.0)),  # vanilla has no run at 1.2e-2: no panel
        {**_run(tmp_path, "va", 3e-3, (1.0, 1.0)), "failed": "diverged"},  # a failed run pairs with nothing
        _run(tmp_path, "va", 6e-3, (4.6, 3.8)),
    ]
    stem = plot_shared_lr_budget(sweep, tmp_path / "t-budget-shared-lr", "text")
    rows = list(csv.DictReader(open(stem.with_suffix(".csv"))))
    assert {float(r["lr"]) for r in rows} == {6e-3}  # va failed at 3e-3, vanilla never ran 1.2e-2
    got = {(r["arch"], int(r["step"])): float(r["delta_mean"]) for r in rows if r["arch"] != "vanilla"}
    assert got == pytest.approx({("sla", 10): -0.1, ("sla", 100): 0.05, ("va", 10): -0.2, ("va", 100): -0.1})
    assert stem.with_suffix(".png").stat().st_size > 1000
    assert plot_shared_lr_budget([r for r in sweep if r["arch"] != "vanilla"], tmp_path / "x", "text") is None
    assert plot_shared_lr_budget([], tmp_path / "y", "text") is None
