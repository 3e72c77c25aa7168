"""The worded significance verdict beside every delta: direction-aware and tied to the p value."""

from __future__ import annotations

from accbench.report.tables import significance
from accbench.results import Comparison


def _c(p, worsening, direction="higher"):
    return Comparison(kind="task", baseline="pretrain", candidate="fake_quant", metric="acc", direction=direction,
                      baseline_value=0.5, candidate_value=0.4, p_value=p, worsening=worsening)


def test_significance_follows_p_and_direction():
    assert significance(_c(0.01, 0.1)) == "significantly worse (p < 0.05)"
    assert significance(_c(0.01, -0.1)) == "significantly better (p < 0.05)"
    assert significance(_c(0.05, 0.1)) == "not significant (p ≥ 0.05)"  # the boundary is not significant
    assert significance(_c(0.3, -0.2, direction="lower")) == "not significant (p ≥ 0.05)"
    assert significance(_c(None, 0.1)) == "no test"
