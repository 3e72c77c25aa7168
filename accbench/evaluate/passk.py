"""pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over problems.

Each problem has n samples of which c passed; its pass@k is the probability that at least one of k samples
drawn without replacement from its n passes. The benchmark's pass@k is the mean over problems, reported with
the standard error of that mean (sample standard deviation over problems / sqrt(number of problems)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accbench.errors import AccbenchError


def pass_at_k_problem(n: int, c: int, k: int) -> float:
    """pass@k of one problem with n samples, c of them correct. Computed as a product so large n stays exact
    enough in floating point (the binomials themselves overflow floats quickly)."""
    if not 0 <= c <= n:
        raise ValueError(f"correct count {c} must lie in [0, n={n}]")
    if k < 1 or k > n:
        raise AccbenchError(f"pass@{k} needs at least {k} samples per problem, but a problem has n={n}",
                            f"generate n_samples >= {k}, or drop k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass(frozen=True)
class PassAtK:
    k: int
    mean: float
    stderr: float | None  # None with a single problem
    per_problem: dict[str, float]


def pass_at_k(counts: dict[str, tuple[int, int]], k: int) -> PassAtK:
    """`counts` maps problem id -> (n samples, c correct)."""
    if not counts:
        raise AccbenchError("pass@k of zero problems", "check that the samples name problems of the problem file")
    per = {pid: pass_at_k_problem(n, c, k) for pid, (n, c) in counts.items()}
    vals = list(per.values())
    mean = sum(vals) / len(vals)
    stderr = None
    if len(vals) > 1:
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        stderr = math.sqrt(var / len(vals))
    return PassAtK(k, mean, stderr, per)
