"""reproduce refuses malformed requests, and a partial request never takes a table's canonical name."""

import pytest


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
