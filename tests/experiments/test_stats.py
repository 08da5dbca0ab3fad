"""The significance rule of the tables: paired t-test over seeds, Holm across the table."""

import math

import pytest

from lit_vattn.experiments.stats import holm, paired_t, t_two_sided_p, verdict


@pytest.mark.parametrize("t", [0.1, 1.0, 2.5, 4.3027, 10.0])
def test_t_tail_matches_closed_forms(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)  # Cauchy
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)
    assert t_two_sided_p(-t, 2) == t_two_sided_p(t, 2)


def test_t_tail_at_textbook_critical_values():
    for df, t975 in [(2, 4.302653), (5, 2.570582), (10, 2.228139), (30, 2.042272)]:
        assert t_two_sided_p(t975, df) == pytest.approx(0.05, abs=2e-6)


def test_paired_t_and_edge_cases():
    t, p = paired_t([-0.10, -0.12, -0.08])  # mean -0.1, sd 0.02: t = -8.66, df 2
    assert t == pytest.approx(-0.1 / (0.02 / math.sqrt(3)))
    assert p == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2))
    assert paired_t([0.1]) == (None, None)
    assert paired_t([0.0, 0.0]) == (0.0, 1.0)
    assert paired_t([-0.1, -0.1])[1] == 0.0


def test_holm_step_down_and_verdicts():
    assert holm([0.01, 0.04, 0.03, None]) == [0.03, 0.06, 0.06, None]
    assert holm([0.5, 0.001]) == [0.5, 0.002]
    assert verdict(-0.1, 0.01) == "better" and verdict(0.1, 0.01) == "worse"
    assert verdict(-0.1, 0.2) == "no detectable difference"


def test_paired_bootstrap_separates_a_shift_from_noise():
    import numpy as np

    from lit_vattn.experiments.stats import paired_bootstrap, verdict2

    rng = np.random.default_rng(0)
    tokens = [128] * 200
    noise = rng.normal(0, 5.0, 200)  # summed nats per window
    assert paired_bootstrap(list(noise), tokens) > 0.05  # no shift: nothing found
    shifted = noise - 0.05 * 128  # 0.05 nats/token better on every window
    assert paired_bootstrap(list(shifted), tokens) < 0.001
    assert paired_bootstrap([1.0], [128]) is None
    # same seed, same p (deterministic); a verdict needs both tests
    assert paired_bootstrap(list(noise), tokens) == paired_bootstrap(list(noise), tokens)
    assert verdict2(-0.1, 0.01, 0.2) == "no detectable difference"
    assert verdict2(-0.1, 0.01, 0.01) == "better" and verdict2(0.1, 0.01, None) == "worse"


def test_paired_t_is_scipys_paired_test_on_the_two_methods_nlls():
    from scipy.stats import ttest_rel

    method, vanilla = [3.91, 3.88, 3.95, 3.90], [3.97, 3.93, 3.96, 3.99]
    t, p = paired_t([m - v for m, v in zip(method, vanilla)])
    ref = ttest_rel(method, vanilla)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-12)


def test_a_bootstrap_over_documents_sums_each_documents_windows_first():
    from lit_vattn.experiments.tables import Clusters, window_diffs

    def run(seed, nll):
        return {"seed": seed, "windows": {i * 128: (v, 128) for i, v in enumerate(nll)}}

    import lit_vattn.experiments.tables as tables

    runs = {"a": [run(0, [1.0, 2.0, 3.0, 4.0])], "v": {0: run(0, [1.5, 2.5, 2.5, 4.5])}}
    orig = tables._windows
    tables._windows = lambda r, field="nll": r["windows"]
    try:
        docs = Clusters({0: 0, 128: 0, 256: 1, 384: 2}, "documents")
        d, t = window_diffs(runs["a"], runs["v"], documents=docs)
        assert d == [-1.0, 0.5, -0.5] and t == [256, 128, 128]  # windows 0 and 1 are one document
        assert window_diffs(runs["a"], runs["v"]) == ([-0.5, -0.5, 0.5, -0.5], [128] * 4)
        assert window_diffs(runs["a"], runs["v"], documents=Clusters({0: 0}, "documents")) is None
    finally:
        tables._windows = orig


def test_clusters_survive_a_round_trip_through_their_file(tmp_path):
    from lit_vattn.experiments.tables import Clusters

    c = Clusters({0: 0, 128: 0, 256: 1}, "pieces")
    c.save(tmp_path / "clusters.json")
    assert Clusters.load(tmp_path / "clusters.json") == c
    assert Clusters.load(tmp_path / "absent.json") is None


def test_declared_families_are_holm_corrected_on_their_own():
    from lit_vattn.experiments.tables import declared_families, family_tests

    archs = ["vanilla", "va", "sla", "las", "hc", "mudd"]
    fams = declared_families(["primary=va,sla,las", "secondary=hc"], archs)
    assert fams == {"primary": ["va", "sla", "las"], "secondary": ["hc"], "other": ["mudd"]}
    for bad, match in (
        (["primary=va,nope"], "nope not among"),
        (["primary=va", "secondary=va"], "more than one family"),
        (["primary"], "NAME=arch"),
        (["primary=vanilla"], "vanilla is the reference"),
    ):
        with pytest.raises(SystemExit, match=match):
            declared_families(bad, archs)
    # five methods, the same differences: one family of five vs a family of one
    deltas = {"va": -0.10, "sla": -0.02, "las": 0.01, "hc": -0.03, "mudd": 0.02}
    base = {s: {"seed": s, "test_nll": 5.0, "run_dir": "x"} for s in range(3)}
    noise = [0.004, -0.003, -0.001]
    by = {a: [{"seed": s, "test_nll": 5.0 + d + noise[s], "run_dir": "x"} for s in range(3)] for a, d in deltas.items()}
    import lit_vattn.experiments.tables as tables

    orig = tables._windows
    tables._windows = lambda r, field="nll": None
    try:
        one = family_tests(archs, by, base)
        split = family_tests(archs, by, base, families={"primary": ["va"], "other": ["sla", "las", "hc", "mudd"]})
    finally:
        tables._windows = orig
    assert split["va"][0] == one["va"][0]  # the raw p is the same
    assert split["va"][1] == pytest.approx(split["va"][0]) and one["va"][1] > split["va"][1]  # alone: no correction
