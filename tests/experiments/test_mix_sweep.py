"""The mixing-lr sweep table: paired differences to the declared control and to vanilla on the same
seeds, Holm within each family, how far the weights moved, and the default chosen on validation."""

import json

import pytest

from lit_vattn.experiments import mix_sweep
from lit_vattn.io import write_json

SEEDS = (0, 1, 2)


def _run(d, lr, val, test, moved=None):
    write_json(d / "done.json", {"lr": lr, "val_nll": val, "test_nll": test, "commit": "abc1234", "device": "cpu"})
    stats = {"mixing_moved": moved} if moved is not None else {}
    write_json(d / "fit" / "summary.json", {"stats": stats})
    (d / "fit" / "config.yaml").write_text(f"model:\n  init_args:\n    lr: {lr}\n")


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "records"
    for s in SEEDS:
        _run(root / "mix1/text-tiny/vanilla" / f"seed{s}", 0.003, 5.4, 5.5 + 0.01 * s)
        _run(root / "mix1/text-tiny/va-frozen" / f"seed{s}", 0.006, 5.2, 5.3 + 0.01 * s)
        for m, gain, val in ((1, 0.0, 5.2), (10, -0.05, 5.1)):  # m = 10 learns: 0.05 below frozen, lower val
            mv = {"arch.logits": {"max_abs": 0.2 * m + s, "rms": 0.1 * m}}
            _run(root / f"mix{m}/text-tiny/va/lr0.006" / f"seed{s}", 0.006, val, 5.3 + 0.01 * s + gain + 0.001 * s, mv)
    _run(root / "text-tiny/vanilla/lr0.006/seed0", 0.006, 5.45, 5.55)  # the table's own runs are not read
    for s in SEEDS:
        _run(root / "text-tiny/va-frozen/lr0.006" / f"seed{s}", 0.006, 5.0, 5.0)
    return root


def test_differences_are_paired_per_seed_with_holm_and_the_default_is_chosen_on_validation(records, tmp_path):
    md = mix_sweep.main(["--records", str(records), "--mults", "1,10", "--archs", "va", "--out", str(tmp_path)])
    rows = json.loads(md.with_suffix(".json").read_text())["runs"]
    one, ten = rows
    assert one["vs_control"]["delta"] == pytest.approx(0.001)  # mean of 0, 0.001, 0.002
    assert ten["vs_control"]["delta"] == pytest.approx(-0.049)
    assert ten["vs_control"]["lo"] < -0.049 < ten["vs_control"]["hi"]
    assert ten["vs_control"]["p_holm"] == pytest.approx(
        min(1.0, 2 * min(one["vs_control"]["p"], ten["vs_control"]["p"]))
    )
    assert ten["vs_base"]["delta"] == pytest.approx(-0.249)
    assert ten["moved_max"] == pytest.approx(3.0) and ten["moved_rms"] == pytest.approx(1.0)
    assert one["vs_first"] is None and ten["vs_first"]["delta"] == pytest.approx(-0.05)
    text = md.read_text()
    assert "default by validation NLL (test not consulted): va: 10 (-0.0500 [" in text
    assert "va-frozen: -0.0490 [" in text and "hardware: CPU" in text


def test_runs_without_a_mixing_record_or_a_full_lr_folder_are_refused(records, tmp_path):
    _run(records / "mix30/text-tiny/va/lr0.006/seed0", 0.006, 5.0, 5.2)  # one seed, no mixing_moved
    with pytest.raises(SystemExit, match=r"mix30/text-tiny/va: need one lr folder with finished runs on seeds"):
        mix_sweep.main(["--records", str(records), "--mults", "30", "--archs", "va", "--out", str(tmp_path)])
    for s in (1, 2):
        _run(records / "mix30/text-tiny/va/lr0.006" / f"seed{s}", 0.006, 5.0, 5.2)
    with pytest.raises(SystemExit, match="has no mixing_moved"):
        mix_sweep.main(["--records", str(records), "--mults", "30", "--archs", "va", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--control"):
        mix_sweep.main(["--records", str(records), "--archs", "hc", "--control", "va=va-frozen"])


def test_the_committed_table_is_what_its_records_give(tmp_path):
    """results/mix-lr-text-tiny.md is rebuilt from the committed records by its own command."""
    import shlex

    from helpers import ROOT

    committed = ROOT / "results/mix-lr-text-tiny.md"
    cmd = shlex.split(committed.read_text().split("- command: `lit-vattn-mix-sweep ", 1)[1].split("`", 1)[0])
    drop = {"--out", "--records"}
    keep = [a for i, a in enumerate(cmd) if a not in drop and (i == 0 or cmd[i - 1] not in drop)]
    md = mix_sweep.main([*keep, "--records", str(ROOT / "results/records"), "--out", str(tmp_path)])
    data, saved = (
        json.loads(md.with_suffix(".json").read_text()),
        json.loads(committed.with_suffix(".json").read_text()),
    )
    assert data["rows"] == saved["rows"] and data["runs"] == saved["runs"]
    body = lambda text: text.split("\n| arch |", 1)[1]  # noqa: E731
    assert body(md.read_text()) == body(committed.read_text())
