"""The scaling ladder: its rungs keep the stated rule, its lr tuning widens past an edge, and its fits
recover known power laws, compute multipliers and slopes."""

import argparse
import math

import numpy as np
import pytest

from lit_vattn.experiments import ladder, scaling
from lit_vattn.experiments.records import tune
from lit_vattn.experiments.reproduce import configs
from tests.helpers import ROOT


def test_every_rung_trains_20_tokens_per_non_embedding_parameter():
    rungs = ladder.rungs(ROOT / "configs")
    assert len(rungs) >= 4
    sizes = [r.params for r in rungs.values()]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for r in rungs.values():
        assert r.steps == ladder.rung_steps(r.params, r.batch_size, r.seq_len)
        assert abs(r.tokens / r.params - ladder.TOKENS_PER_PARAM) < 0.01 * ladder.TOKENS_PER_PARAM


def test_non_embedding_params_leave_out_the_vocabulary_matrices():
    # 3 layers x 32: attention 4 d^2 and SwiGLU 3 d h (h = 128) per layer, two norm gains per layer, the final norm
    d, h = 32, 128
    assert ladder.non_embedding_params(3, 4, 32, max_seq_len=128) == 3 * (4 * d * d + 3 * d * h + 2 * d) + d


def test_a_numbered_preset_takes_its_familys_overlay_for_the_modality():
    flags = configs("text", "vanilla", "ladder-2", ROOT / "configs")
    assert flags[-1].endswith("reproduce/text-ladder.yaml")
    assert not any("ladder" in f and "music" in f for f in configs("music", "vanilla", "ladder-2", ROOT / "configs"))


def fake_runs(optimum: dict[str, float], fail: set = frozenset()):
    """A ``run`` for ``tune``: validation NLL is a parabola in log lr around each arch's optimum."""
    calls = []

    def run(jobs):
        calls.append(list(jobs))
        out = []
        for arch, seed, lr in jobs:
            if (arch, lr) in fail:
                out.append({"arch": arch, "seed": seed, "lr": lr, "failed": "diverged"})
            else:
                out.append({"arch": arch, "seed": seed, "lr": lr, "val_nll": 4.0 + math.log(lr / optimum[arch]) ** 2})
        return out

    return run, calls


def test_tune_widens_past_an_edge_choice_until_the_optimum_is_inside():
    run, calls = fake_runs({"vanilla": 0.02, "va": 0.004})
    sweep, chosen = tune(run, ["vanilla", "va"], 100, [3e-3, 6e-3, 1.2e-2], widen=2)
    assert chosen == {"vanilla": 0.024, "va": 0.003}
    assert sorted(r["lr"] for r in sweep if r["arch"] == "va") == [0.0015, 0.003, 0.006, 0.012]
    lrs = sorted(r["lr"] for r in sweep if r["arch"] == "vanilla")
    assert lrs == [0.003, 0.006, 0.012, 0.024, 0.048]  # 0.024 chosen inside: one more value past it, then stop
    assert all(seed == 100 for jobs in calls for _, seed, _ in jobs)


def test_tune_stops_widening_at_its_limit_and_never_picks_a_failed_lr():
    run, _ = fake_runs({"vanilla": 1.0}, fail={("vanilla", 0.024)})
    sweep, chosen = tune(run, ["vanilla"], 7, [3e-3, 6e-3, 1.2e-2], widen=2)
    assert sorted(r["lr"] for r in sweep) == [0.003, 0.006, 0.012, 0.024]  # the failed edge ends the widening there
    assert chosen["vanilla"] == 0.012
    run, _ = fake_runs({"vanilla": 1.0})
    sweep, chosen = tune(run, ["vanilla"], 7, [3e-3, 6e-3], widen=0)
    assert chosen["vanilla"] == 6e-3 and len(sweep) == 2


def test_fit_recovers_a_power_law_and_the_inverse_gives_its_size():
    ns = [5e4, 1e5, 2e5, 4e5]
    truth = dict(e=2.5, a=1.2, alpha=0.4)
    f = scaling.fit_power_law(ns, list(scaling.power_law(ns, **truth)))
    assert f["E"] == pytest.approx(2.5, abs=1e-4) and f["alpha"] == pytest.approx(0.4, abs=1e-4)
    assert not f["at_bound"]
    assert scaling.vanilla_size(f, float(scaling.power_law(3e5, **truth))) == pytest.approx(3e5, rel=1e-4)
    assert scaling.vanilla_size(f, 2.4) == math.inf  # below the floor: no size reaches it


def synthetic(shift: float = 2.0, noise: float = 0.0, seeds=(0, 1, 2)):
    """Vanilla on a power law; "va" = vanilla at ``shift`` times the size (so k = shift at every N)."""
    rng = np.random.default_rng(0)
    ns = {1: 5e4, 2: 1e5, 3: 2e5, 4: 4e5}
    law = dict(e=2.5, a=1.2, alpha=0.4)
    table = {"vanilla": {}, "va": {}}
    for k, n in ns.items():
        for s in seeds:
            eps = noise * rng.standard_normal()
            table["vanilla"].setdefault(k, {})[s] = float(scaling.power_law(n, **law)) + eps
            table["va"].setdefault(k, {})[s] = float(scaling.power_law(shift * n, **law)) + eps
    return table, ns


def test_a_method_equal_to_a_twice_larger_vanilla_has_k_2_at_every_size():
    table, ns = synthetic(2.0)
    out = scaling.analyse(table, ns, boot=50)
    va = out["archs"]["va"]
    assert va["k"] == pytest.approx([2.0] * 4, rel=1e-3)
    assert va["slope"] > 0  # a constant multiplier on a power law: the gap in nats closes as N grows
    lo, hi = va["k_intervals"][0]
    assert lo == pytest.approx(2.0, rel=1e-3) and hi == pytest.approx(2.0, rel=1e-3)  # noise-free: no spread


def test_seed_noise_widens_the_intervals_and_keeps_the_pairing():
    table, ns = synthetic(2.0, noise=0.05)
    out = scaling.analyse(table, ns, boot=200)
    va = out["archs"]["va"]
    # the same noise on both arms of a seed cancels in Δ: the slope's interval stays narrow
    s_lo, s_hi = va["slope_interval"]
    assert s_lo <= va["slope"] <= s_hi and s_hi - s_lo < 0.02
    e_lo, e_hi = out["archs"]["vanilla"]["fit_intervals"]["E"]
    assert e_hi > e_lo


def test_families_put_the_suites_own_methods_first():
    fam = scaling.families(["vanilla", "va", "va-frozen", "sla", "las", "mudd"])
    assert fam["primary"] == ["va", "sla", "las"] and fam["secondary"] == ["va-frozen", "mudd"]


def test_the_ladder_table_reports_fits_k_and_the_per_rung_tests(tmp_path):
    table, ns = synthetic(2.0, noise=0.01)
    rungs = ladder.rungs(ROOT / "configs")
    done = []
    for k in (1, 2, 3, 4):
        rs = [
            {
                "arch": a,
                "seed": s,
                "lr": 3e-3,
                "test_nll": table[a][k][s],
                "test_bits_per_byte": table[a][k][s] / 3,
                "val_nll": table[a][k][s],
                "device": "cpu",
                "commit": "abc",
            }
            for a in table
            for s in (0, 1, 2)
        ]
        done.append({"rung": rungs[k], "results": rs, "sweep": rs, "chosen": {}, "check": [], "lr_rule": None})
    args = argparse.Namespace(
        modality="text",
        archs=["vanilla", "va"],
        seeds=[0, 1, 2],
        lr_seed=100,
        out=str(tmp_path),
        boot=50,
        command="lit-vattn-ladder --rungs 1,2,3,4",
    )
    md = scaling.write_ladder(args, done).read_text()
    assert "| va |" in md and "k(N) at rung 4" in md
    assert (tmp_path / "ladder-text.png").is_file() and (tmp_path / "ladder-text.csv").is_file()
    assert "primary: va against vanilla" in md
    # the fit sees the synthetic sizes only through the rungs' own N, so k is what those N give; finite and > 1
    row = next(line for line in md.splitlines() if line.startswith("| va |") and "x" in line)
    assert "no fit" not in row


def test_the_ladder_tables_data_is_strict_json_and_renders_its_rows(tmp_path):
    import json

    from lit_vattn.experiments.tables import Column, render

    test_the_ladder_table_reports_fits_k_and_the_per_rung_tests(tmp_path)
    data = json.loads((tmp_path / "ladder-text.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    rendered = "\n".join(render([Column(k, h) for k, h in data["columns"]], data["rows"]))
    assert rendered in (tmp_path / data["table"]).read_text()
    assert set(data["fit"]["archs"]) == {"vanilla", "va"}


@pytest.mark.slow
def test_committed_ladder_tables_are_the_runs_their_records_hold(tmp_path, capsys):
    """A committed ladder table is rebuilt by its own command from the committed records (no data, no
    training): the per-rung rows, fits, intervals and each rung's own table come out as committed."""
    import json
    import shlex

    mds = sorted((ROOT / "results").glob("ladder-*.md"))
    for md in mds:
        text = md.read_text()
        cmd = shlex.split(text.split("- command: `lit-vattn-ladder ", 1)[1].split("`", 1)[0])
        drop = {"--runs", "--out", "--records", "--parallel"}
        keep = [a for i, a in enumerate(cmd) if a not in drop and (i == 0 or cmd[i - 1] not in drop)]
        keep = [a for a in keep if a not in ("--table-only", "--find-documents")]
        ladder.main([*keep, "--runs", str(ROOT / "results/records"), "--out", str(tmp_path), "--table-only"])
        body = lambda t: t.split("\n| rung |", 1)[1]  # noqa: E731
        assert body((tmp_path / md.name).read_text()) == body(text), md.name
        fresh = json.loads((tmp_path / md.with_suffix(".json").name).read_text())
        assert fresh["rows"] == json.loads(md.with_suffix(".json").read_text())["rows"]
        for rung in sorted((ROOT / "results" / md.stem).glob("*.md")):
            cut = lambda t: t.split("\n| arch |", 1)[1].split("\nPer-run numbers")[0]  # noqa: E731
            assert cut((tmp_path / md.stem / rung.name).read_text()) == cut(rung.read_text()), rung.name
    capsys.readouterr()
