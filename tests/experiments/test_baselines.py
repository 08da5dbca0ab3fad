"""Count baselines: proper distributions, the published smoothing formula, the runs' own targets."""

import math

import numpy as np
import pytest
import torch

from lit_vattn.experiments import baselines


def test_bigram_is_a_distribution_for_seen_and_unseen_contexts():
    rng = np.random.default_rng(0)
    V = 50
    train = rng.integers(0, V - 5, 2000)  # the last 5 ids never occur: unseen contexts and targets
    bi = baselines.Bigram(train, V)
    for v in (0, 3, V - 1):
        p = bi.prob(np.full(V, v), np.arange(V))
        assert np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
    uni = baselines.Unigram(train, V)
    assert np.exp(-uni.nll(None, np.arange(V))).sum() == pytest.approx(1.0, abs=1e-12)


def test_bigram_matches_absolute_discounting_by_hand():
    train = np.array([0, 1, 0, 1, 0, 2])  # c(0) = 3; c(0,1) = 2, c(0,2) = 1; N1+(0) = 2
    bi = baselines.Bigram(train, 3, discount=0.5)
    p_uni = (np.bincount(train, minlength=3) + 1) / (len(train) + 3)
    assert bi.prob(np.array([0]), np.array([1]))[0] == pytest.approx((2 - 0.5) / 3 + 0.5 * 2 / 3 * p_uni[1])
    assert bi.prob(np.array([0]), np.array([0]))[0] == pytest.approx(0.5 * 2 / 3 * p_uni[0])
    assert bi.prob(np.array([2]), np.array([0]))[0] == pytest.approx(p_uni[0])  # 2 never precedes anything
    with pytest.raises(ValueError, match="discount"):
        baselines.Bigram(train, 3, discount=1.0)


def test_score_uses_only_scored_targets_and_the_unit_table():
    V = 7
    uni = baselines.Unigram(np.arange(V).repeat(3), V)  # uniform: every target costs ln 7
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 1]])
    y = torch.tensor([[2, 3, 4, 5], [-100, -100, 1, 2]])  # second window: first two targets not scored
    loader = [{"input": x, "target": y}, {"input": x, "target": y}]
    units = torch.arange(V, dtype=torch.float32)  # id i carries i units
    out = baselines.score([uni], loader, 1, units)["unigram (counts)"]
    assert out["targets"] == 6
    assert out["nll"] == pytest.approx(math.log(V))
    assert out["bits_per_unit"] == pytest.approx(6 * math.log(V) / math.log(2) / (2 + 3 + 4 + 5 + 1 + 2))


@pytest.mark.parametrize("limit,total,expected", [(None, 9, 9), (4, 9, 4), (40.0, 9, 9), (1.0, 9, 9), (0.5, 9, 4)])
def test_batch_limits_read_like_lightning(limit, total, expected):
    assert baselines.n_batches(limit, total) == expected


def test_ddp_runs_get_count_rows_on_each_ranks_own_limited_slice():
    """Two ranks with limit_val_batches=1 scored the first batch of each rank's half of the split:
    the count rows must score exactly those targets, not the first two batches of the whole split."""
    from torch.utils.data import DataLoader

    from datamodules.windows import EvalWindows

    tokens = np.arange(1, 101) % 7  # 100 tokens, windows of 4: 25 windows (24 full + 1 tail)
    uni = baselines.Unigram(tokens, 7)
    ranks = [DataLoader(EvalWindows(tokens, 4, r, 2), batch_size=2) for r in range(2)]
    got = baselines.score_ranks([uni], [(ld, 1) for ld in ranks], None)["unigram (counts)"]
    first = [next(iter(ld))["target"] for ld in ranks]
    assert got["targets"] == sum(int((t >= 0).sum()) for t in first) == 16
    whole = baselines.score([uni], DataLoader(EvalWindows(tokens, 4), batch_size=2), 2, None)["unigram (counts)"]
    expected = np.concatenate([t[t >= 0].numpy() for t in first])
    prev = np.concatenate([next(iter(ld))["input"][first[i] >= 0].numpy() for i, ld in enumerate(ranks)])
    assert got["nll"] == pytest.approx(float(uni.nll(prev, expected).mean()))
    assert got["nll"] != pytest.approx(whole["nll"])  # other windows than the first two of the split
