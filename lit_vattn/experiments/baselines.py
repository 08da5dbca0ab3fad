"""Count baselines for the NLL tables: what token statistics alone score on the same targets.

A network trained briefly can sit at or above what a count model of its training data gets, and a
table without that floor hides it. ``Unigram`` (add-one) and ``Bigram`` (interpolated absolute
discounting, Ney et al. 1994, backing off to the unigram) are fitted on the training split and
scored on exactly the targets the networks are scored on: the DataModule's own val/test loader,
the same number of batches as the trainer's ``limit_{val,test}_batches``, the same ignored
positions, and the same per-token unit table for bits per byte / note / second.
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Optional

import numpy as np
import torch

LN2 = math.log(2.0)


class Unigram:
    name = "unigram (counts)"

    def __init__(self, train: np.ndarray, vocab: int):
        counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
        self.logp = np.log(counts / counts.sum())  # (V,)

    def nll(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return -self.logp[nxt]


class Bigram:
    """P(w | v) = max(c(v, w) - D, 0) / c(v) + D * N1+(v) / c(v) * P_uni(w); P_uni(w) if c(v) = 0."""

    name = "bigram (counts)"

    def __init__(self, train: np.ndarray, vocab: int, discount: float = 0.75):
        if not 0 < discount < 1:
            raise ValueError(f"Bigram discount must be in (0, 1), got {discount}")
        train = np.asarray(train, dtype=np.int64)
        self.V, self.D = vocab, discount
        self.p_uni = np.exp(Unigram(train, vocab).logp)  # (V,)
        # sorted (v * V + w) codes of the pairs seen, and how often each was seen
        self.pairs, self.pair_counts = np.unique(train[:-1] * vocab + train[1:], return_counts=True)
        self.ctx = np.bincount(train[:-1], minlength=vocab).astype(np.float64)  # c(v)
        self.followers = np.bincount(self.pairs // vocab, minlength=vocab).astype(np.float64)  # N1+(v)

    def prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        code = prev.astype(np.int64) * self.V + nxt
        i = np.minimum(np.searchsorted(self.pairs, code), len(self.pairs) - 1)
        c = np.where(self.pairs[i] == code, self.pair_counts[i], 0).astype(np.float64)
        cv = self.ctx[prev]
        seen = (np.maximum(c - self.D, 0) + self.D * self.followers[prev] * self.p_uni[nxt]) / np.maximum(cv, 1)
        return np.where(cv > 0, seen, self.p_uni[nxt])

    def nll(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return -np.log(self.prob(prev, nxt))


def n_batches(limit, total: int) -> int:
    """Lightning's reading of ``limit_*_batches``: None = all, int = that many, float = a fraction."""
    if limit is None:
        return total
    if isinstance(limit, float) and limit <= 1.0:
        return int(total * limit)
    return min(int(limit), total)


@torch.no_grad()
def score(models: list, loader, batches: int, units_per_token: Optional[torch.Tensor]) -> dict[str, dict]:
    """{model name: {"nll": nats/target, "bits_per_unit": ..., "targets": n}} over ``batches`` batches."""
    return score_ranks(models, [(loader, batches)], units_per_token)


@torch.no_grad()
def score_ranks(models: list, loaders: list, units_per_token: Optional[torch.Tensor]) -> dict[str, dict]:
    """As ``score``, summed over (loader, batches) pairs: one per DDP rank of the run, each rank's
    own slice of the split cut at the run's ``limit_*_batches``, so a count row is scored on exactly
    the targets a multi-process run scored."""
    sums = {m.name: 0.0 for m in models}
    targets, units = 0, 0.0
    for batch in (batch for loader, batches in loaders for batch in islice(loader, batches)):
        x, y = batch["input"].numpy(), batch["target"].numpy()  # (B, T) each; y = -100 where not scored
        keep = y >= 0
        prev, nxt = x[keep], y[keep]
        for m in models:
            sums[m.name] += float(m.nll(prev, nxt).sum())
        targets += int(keep.sum())
        if units_per_token is not None:
            units += float(units_per_token[torch.from_numpy(nxt)].double().sum())
    return {
        name: {"nll": s / targets, "bits_per_unit": s / LN2 / units if units else float("nan"), "targets": targets}
        for name, s in sums.items()
    }
