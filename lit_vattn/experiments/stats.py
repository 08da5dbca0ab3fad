"""The significance rules of the tables: a paired t-test over seeds and a paired bootstrap over test
windows, each Holm-corrected across a table.

Each method is compared with vanilla on the same seeds (same init seed and data stream), so the test
is on the per-seed differences d_s = NLL_method(s) - NLL_vanilla(s): t = mean(d) / (sd(d) / sqrt(n)),
n - 1 degrees of freedom, two-sided. The p-values of all method-vs-vanilla comparisons of one table
are adjusted by Holm's step-down method (family-wise error 0.05). The verdict words:
"better" / "worse" when the Holm-adjusted p < alpha (sign of the mean difference), otherwise
"no detectable difference" at this scale.

The bootstrap answers another question: is the difference larger than the sampling noise of the
test set? Both methods are scored on the same test windows (non-overlapping T-token chunks of the
test split), so d_w = mean over seeds of (NLL_method(s, w) - NLL_vanilla(s, w)) is paired per
window; resampling windows with replacement gives the distribution of sum(d) / sum(tokens) (nats per
token), and the two-sided p is twice the smaller tail mass on either side of 0. Adjacent windows of
one document are not independent, so this p is optimistic on long documents; it is reported beside
the seed test, and a verdict needs both (``verdict2``).

The Student-t tail is SciPy's; Holm's adjustment is written here (SciPy has none; four lines), and the
tests check it step by step.
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Optional


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (SciPy's survival function)."""
    from scipy.stats import t as student_t

    return float(2.0 * student_t.sf(abs(t), df))


def paired_t(diffs: list[float]) -> tuple[Optional[float], Optional[float]]:
    """(t, two-sided p) of the paired differences; None when n < 2. Identical nonzero differences
    give p = 0 (infinite t); all-zero differences give p = 1."""
    n = len(diffs)
    if n < 2:
        return None, None
    m, s = mean(diffs), stdev(diffs)
    if s == 0:
        return (math.copysign(math.inf, m), 0.0) if m != 0 else (0.0, 1.0)
    t = m / (s / math.sqrt(n))
    return t, t_two_sided_p(t, n - 1)


def t_interval(xs: list[float]) -> tuple[float, float]:
    """The 95 % Student-t interval of the mean of ``xs`` (nan, nan for fewer than two)."""
    from scipy.stats import t

    if len(xs) < 2:
        return (math.nan, math.nan)
    h = float(t.ppf(0.975, len(xs) - 1)) * stdev(xs) / math.sqrt(len(xs))
    return (mean(xs) - h, mean(xs) + h)


def paired_difference(a: dict, b: dict) -> dict:
    """Paired difference a - b over the keys (seeds) both hold: mean, 95 % Student-t interval, paired t p, n."""
    diffs = [a[k] - b[k] for k in sorted(a) if k in b]
    lo, hi = t_interval(diffs)
    return {"delta": mean(diffs), "lo": lo, "hi": hi, "p": paired_t(diffs)[1], "n": len(diffs)}


def holm(pvalues: list[Optional[float]]) -> list[Optional[float]]:
    """Holm step-down adjusted p-values (None entries are skipped and stay None)."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    k = len(idx)
    out: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(mean_diff: Optional[float], p_holm: Optional[float], alpha: float = 0.05) -> str:
    """Lower NLL is better: a significant negative difference is "better"."""
    if mean_diff is None or p_holm is None:
        return "not tested (fewer than 2 paired seeds)"
    if p_holm < alpha:
        return "better" if mean_diff < 0 else "worse"
    return "no detectable difference"


def paired_bootstrap(diff_sums: list[float], tokens: list[int], n_boot: int = 10000, seed: int = 0) -> Optional[float]:
    """Two-sided p of a per-token NLL difference paired over windows: ``diff_sums[w]`` is the
    window's summed NLL difference (nats), ``tokens[w]`` its scored targets. None with < 2 windows."""
    import numpy as np

    d, t = np.asarray(diff_sums, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    n = len(d)
    if n < 2 or t.sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for lo in range(0, n_boot, 1000):  # in chunks: n_boot x n indices at once can be large
        idx = rng.integers(0, n, size=(min(1000, n_boot - lo), n))
        stats[lo : lo + len(idx)] = d[idx].sum(1) / np.maximum(t[idx].sum(1), 1)
    tail = min((stats <= 0).mean(), (stats >= 0).mean())
    return float(min(1.0, 2.0 * max(tail, 1.0 / n_boot)))


def verdict2(
    mean_diff: Optional[float], p_seeds: Optional[float], p_windows: Optional[float], alpha: float = 0.05
) -> str:
    """The table's verdict: "better"/"worse" only when the Holm-adjusted seed test and, where
    per-window NLLs exist, the Holm-adjusted window bootstrap are both below alpha."""
    word = verdict(mean_diff, p_seeds, alpha)
    if word in ("better", "worse") and p_windows is not None and p_windows >= alpha:
        return "no detectable difference"
    return word
