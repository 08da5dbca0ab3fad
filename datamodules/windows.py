"""Training and evaluation windows over a memory-mapped token split.

Training: a *stream* of windows indexed by a global sample number g. Epoch e = g // n shuffles the n
non-overlapping windows of length T + 1 that start at a seeded random offset, so a pass covers the
split once and every epoch sees different window boundaries. DDP rank r of W takes g = k * W + r for
its k-th sample, so ranks draw disjoint windows. The stream is a pure function of (seed, g): resuming
only needs the number of samples a rank has consumed (``ResumableSampler.start``).

Evaluation: fixed contiguous windows with stride T that score every target token of the split
exactly once; the last window is shifted to end at the split's end and its already-scored targets
are masked with -100. Ranks take contiguous slices of the windows, without padding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

IGNORE = -100


def _window(tokens: np.ndarray, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.from_numpy(np.asarray(tokens[start : start + T + 1], dtype=np.int64))
    return w[:-1], w[1:]


class TrainWindows(Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        self.tokens, self.T, self.seed = tokens, seq_len, seed
        self.rank, self.world = rank, world_size
        if len(tokens) < 2 * (seq_len + 1):
            raise ValueError(
                f"training split has {len(tokens)} tokens, fewer than 2 windows of seq_len + 1 = {seq_len + 1}; "
                "lower data.seq_len or add data"
            )
        self.n = (len(tokens) - seq_len) // seq_len  # windows per epoch, valid for any offset < T
        self._epoch, self._perm, self._offset = -1, None, 0

    def __len__(self) -> int:
        return self.n // self.world

    def start_of(self, g: int) -> int:
        e, i = divmod(g, self.n)
        if e != self._epoch:
            rng = np.random.default_rng([self.seed, e])
            self._offset = int(rng.integers(0, self.T))
            self._perm = rng.permutation(self.n)
            self._epoch = e
        return self._offset + int(self._perm[i]) * self.T

    def __getitem__(self, k: int) -> dict:
        g = k * self.world + self.rank
        x, y = _window(self.tokens, self.start_of(g), self.T)
        return {"input": x, "target": y, "index": g}


class ResumableSampler(Sampler[int]):
    """Yields this rank's sample numbers k = start, start + 1, ...; ``start`` is read at every
    ``iter`` from a callable, so a restored counter continues the stream where it stopped."""

    def __init__(self, length: int, start: Callable[[], int]):
        self.length, self.start = length, start

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        s = self.start()
        return iter(range(s, s + self.length))


class EvalWindows(Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int, rank: int = 0, world_size: int = 1):
        self.tokens, self.T = tokens, seq_len
        N = len(tokens)
        if N < seq_len + 1:
            raise ValueError(
                f"evaluation split has {N} tokens, fewer than seq_len + 1 = {seq_len + 1}; lower data.seq_len"
            )
        n_full = (N - 1) // seq_len
        starts = [j * seq_len for j in range(n_full)]
        self.skip = [0] * n_full
        covered = n_full * seq_len  # targets 1..covered are scored
        if covered < N - 1:
            starts.append(N - 1 - seq_len)
            self.skip.append(seq_len - (N - 1 - covered))
        lo, hi = (len(starts) * rank) // world_size, (len(starts) * (rank + 1)) // world_size
        self.starts, self.skip = starts[lo:hi], self.skip[lo:hi]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        x, y = _window(self.tokens, self.starts[i], self.T)
        if self.skip[i]:
            y = y.clone()
            y[: self.skip[i]] = IGNORE
        return {"input": x, "target": y, "index": self.starts[i]}


def window_documents(tokens: np.ndarray, seq_len: int, end_id: int) -> dict[int, int]:
    """{window start: document number} of every ``EvalWindows`` window of a split whose documents
    each end with ``end_id``: a window belongs to the document of its first scored target, so the
    windows of one document form one cluster (what a bootstrap over documents resamples)."""
    ends = np.flatnonzero(np.asarray(tokens) == end_id)  # document d ends at ends[d]
    w = EvalWindows(tokens, seq_len)
    first = np.asarray(w.starts, dtype=np.int64) + 1 + np.asarray(w.skip, dtype=np.int64)  # first target of each window
    return dict(zip(map(int, w.starts), map(int, np.searchsorted(ends, first, side="left"))))
