"""Paired statistics for comparing two models on the same samples: bootstrap CIs and p-values, exact McNemar.

Plain functions on numpy arrays and counts; accbench/compare.py applies them to results. docs/report.md
explains each one.
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np

_CHUNK_ELEMENTS = 4_000_000  # bootstrap index matrix is built in chunks of at most this many entries


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples (with replacement, same size) of `values`.

    Values with few distinct levels (paired 0/1 differences take only -1, 0, 1) are resampled through
    multinomial counts of the levels, which has exactly the distribution of resampling indices and costs
    O(resamples) instead of O(resamples * n). Other values are resampled by index, in bounded chunks.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    levels, counts = np.unique(values, return_counts=True)
    if levels.size <= 32:
        draws = rng.multinomial(n, counts / n, size=resamples)
        return draws @ levels / n
    out = np.empty(resamples)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_p_value(boot: np.ndarray) -> float:
    """Two-sided p-value for "mean difference is zero": twice the bootstrap mass on the far side of zero
    (with the +1 correction, so it is never exactly 0). Agrees with the percentile CI: the (1 - a) CI
    excludes zero about when p < a."""
    b = boot.size
    tail = min(int(np.sum(boot <= 0)), int(np.sum(boot >= 0)))
    return min(1.0, 2.0 * (tail + 1) / (b + 1))


def mcnemar_exact(correct_to_wrong: int, wrong_to_correct: int) -> float:
    """Exact McNemar test: two-sided binomial test of the discordant pairs against p = 1/2."""
    n = correct_to_wrong + wrong_to_correct
    if n == 0:
        return 1.0
    k = min(correct_to_wrong, wrong_to_correct)
    if n <= 1000:  # exact rational arithmetic while it is cheap
        tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
        return float(min(Fraction(1), 2 * tail))
    # log pmf(i) = -n log 2 + sum_{j<i} log((n - j) / (j + 1)); tail = logsumexp over i <= k
    j = np.arange(k, dtype=np.float64)
    logpmf = -n * math.log(2.0) + np.concatenate(([0.0], np.cumsum(np.log((n - j) / (j + 1.0)))))
    top = float(logpmf.max())
    return min(1.0, 2.0 * math.exp(top) * float(np.sum(np.exp(logpmf - top))))


def normal_ci(delta: float, se: float, confidence: float) -> tuple[float, float, float]:
    """CI and two-sided p-value of a normal estimate (used when only aggregate standard errors exist)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = 2.0 * (1.0 - NormalDist().cdf(abs(delta) / se)) if se > 0 else (1.0 if delta == 0 else 0.0)
    return delta - z * se, delta + z * se, p
