"""Statistics (accbench/stats.py) and comparisons and gates (accbench/compare.py) against hand-computed cases
and scipy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from accbench.compare import (compare_results, compare_task_metric, evaluate_gates, gates_from_config,
                              metric_direction, run_comparison)
from accbench.config import CompareCfg, GateCfg
from accbench.errors import AccbenchError
from accbench.results import Results, TaskEntry
from accbench.stats import bootstrap_means, bootstrap_p_value, mcnemar_exact, percentile_ci
from compare_fixtures import compression_results, flipped, mc_pattern, training_results

# ----------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("b,c,expected", [
    (0, 0, 1.0),
    (3, 0, 0.25),  # 2 * (1/2)^3
    (10, 4, 2 * (1 + 14 + 91 + 364 + 1001) / 2 ** 14),  # 2 * P(X <= 4), X ~ Bin(14, 1/2)
    (7, 7, 1.0),
    (1, 0, 1.0),
])
def test_mcnemar_hand_computed(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_equals_scipy_binomtest_on_discordant_pairs():
    from scipy.stats import binomtest

    for b, c in [(1, 5), (12, 2), (40, 25), (500, 430), (0, 9)]:  # exact rational path
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    for b, c in [(600, 450), (3000, 2890), (30000, 29500), (100000, 99000)]:  # log-space path, large n
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-7)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_vectorised_paths_agree():
    d = np.array([1.0] * 30 + [-1.0] * 10 + [0.0] * 160)  # few levels: multinomial path
    a, b = bootstrap_means(d, 10_000, 7), bootstrap_means(d, 10_000, 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, bootstrap_means(d, 10_000, 8))
    # the index path (forced with many distinct levels) has the same distribution: mean and sd of the mean
    jitter = d + np.linspace(-1e-9, 1e-9, d.size)
    c = bootstrap_means(jitter, 10_000, 7)
    sd = d.std() / math.sqrt(d.size)  # bootstrap sd of a mean = population sd / sqrt(n)
    for boot in (a, c):
        assert boot.mean() == pytest.approx(d.mean(), abs=0.1 * sd)
        assert boot.std() == pytest.approx(sd, rel=0.05)


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    a = rng.normal(5.0, 1.0, 300)
    b = a + rng.normal(-0.1, 0.5, 300)  # paired scores, candidate a little worse
    ours = percentile_ci(bootstrap_means(b - a, 20_000, 0), 0.95)
    ref = bootstrap((b - a,), np.mean, n_resamples=20_000, confidence_level=0.95, method="percentile",
                    random_state=1).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.006)
    assert ours[1] == pytest.approx(ref.high, abs=0.006)
    assert ours[1] < 0  # the drop is real


def test_bootstrap_p_value_extremes():
    assert bootstrap_p_value(np.zeros(1000)) == 1.0
    assert bootstrap_p_value(np.full(999, 0.5)) == pytest.approx(2 / 1000)


# ----------------------------------------------------------------------------- comparisons


def test_task_comparison_hand_case():
    a = TaskEntry(model="pretrain", task="t", metrics={"acc": 4 / 6},
                  per_sample={"acc": {"s0": 1, "s1": 1, "s2": 1, "s3": 0, "s4": 0, "s5": 1}})
    b = TaskEntry(model="q", task="t", metrics={"acc": 3 / 6},
                  per_sample={"acc": {"s0": 1, "s1": 0, "s2": 1, "s3": 1, "s4": 0, "s5": 0}})
    c = compare_task_metric(a, b, "acc", "pretrain", "q", "q", 10_000, 0.95, 0)
    assert (c.correct_to_wrong, c.wrong_to_correct) == (2, 1)  # s1, s5 lost; s3 gained
    assert c.delta == pytest.approx(-1 / 6)
    assert c.worsening == pytest.approx(1 / 6)
    assert c.p_value == pytest.approx(1.0)  # 2 * P(Bin(3, .5) <= 1) = 2 * 4/8
    assert c.test == "mcnemar_exact" and c.n == 6
    assert c.ci_low <= c.delta <= c.ci_high


def test_unpaired_fallback_without_per_sample_values():
    a = TaskEntry(model="pretrain", task="t", metrics={"acc": 0.70}, stderr={"acc": 0.03})
    b = TaskEntry(model="q", task="t", metrics={"acc": 0.64}, stderr={"acc": 0.04})
    c = compare_task_metric(a, b, "acc", "pretrain", "q", "q", 1000, 0.95, 0)
    assert c.test == "normal_unpaired"
    half = 1.959964 * 0.05  # hypot(0.03, 0.04) = 0.05
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.06 - half, -0.06 + half), abs=1e-5)
    assert c.p_value == pytest.approx(0.2301393, abs=1e-5)  # 2 * (1 - Phi(1.2))


def test_directions():
    assert metric_direction("ppl") == "lower" and metric_direction("word_perplexity") == "lower"
    assert metric_direction("acc") == "higher" and metric_direction("pass@1") == "higher"
    assert metric_direction("kld_mean") == "lower" and metric_direction("score") == "higher"


def test_run_comparisons_cover_every_kind(tmp_path: Path):
    res = compression_results(tmp_path)
    comps = compare_results(res, "pretrain", 2000, 0.95, 0)
    by = {(c.kind, c.task or c.dataset, c.metric): c for c in comps}
    ppl = by[("ppl", "wikitext2", "ppl")]
    assert ppl.relative_delta == pytest.approx(res.ppl[1].ppl / res.ppl[0].ppl - 1, rel=1e-12)
    assert ppl.ci_low < ppl.relative_delta < ppl.ci_high and ppl.ci_low > 0  # a consistent increase
    assert ppl.direction == "lower" and ppl.worsening > 0
    mc = by[("task", "mc", "acc")]
    assert (mc.correct_to_wrong, mc.wrong_to_correct) == (12, 2)
    assert mc.delta == pytest.approx(-10 / 200)
    from scipy.stats import binomtest

    assert mc.p_value == pytest.approx(binomtest(12, 14, 0.5).pvalue)
    score = by[("task", "mtbench", "score")]
    assert score.test == "paired_bootstrap" and score.correct_to_wrong is None
    assert by[("fidelity", "wikitext2", "kld_mean")].candidate_value == 0.05
    assert ("task", "mtbench", "category/writing") in by  # aggregate-only metrics are still compared


def test_training_run_baseline_is_first_variant_and_original_is_not_a_candidate(tmp_path: Path):
    res = training_results(tmp_path, loss_gap=0.003)
    out = run_comparison(res, CompareCfg(max_train_loss_diff=0.01))
    assert out.baseline == "native"
    assert {c.candidate for c in out.comparisons} == {"compiled"}
    train = next(c for c in out.comparisons if c.kind == "train")
    assert train.delta == pytest.approx(0.003)
    assert train.extra["speedup"] == pytest.approx(6.5 / 5.785)
    assert out.all_held and out.exit_code == 0


def test_unknown_baseline_is_a_clear_error(tmp_path: Path):
    with pytest.raises(AccbenchError, match="compare.baseline 'fp16'.*pretrain, fake_quant"):
        run_comparison(compression_results(tmp_path), CompareCfg(baseline="fp16"))


# ----------------------------------------------------------------------------- gates


def _gates(res: Results, *gates: GateCfg, **cfg) -> dict:
    return run_comparison(res, CompareCfg(gates=list(gates), bootstrap_resamples=2000, **cfg))


def test_gates_that_hold_and_that_fail_all_reported(tmp_path: Path):
    res = compression_results(tmp_path)  # ppl +3.06%, mc acc -0.05 (p=0.013), kld 0.05
    out = _gates(res,
                 GateCfg(metric="ppl", dataset="wikitext2", max_relative_increase=0.05),  # holds
                 GateCfg(metric="ppl", max_relative_increase=0.01),  # fails
                 GateCfg(task="mc", metric="acc", max_drop=0.02),  # fails
                 GateCfg(max_kld=0.1),  # holds
                 GateCfg(max_kld=0.01, position="fake_quant"))  # fails
    verdicts = [(g.gate, g.held) for g in out.gates]
    assert verdicts == [(0, True), (1, False), (2, False), (3, True), (4, False)]
    ppl_gate = out.gates[0]
    assert ppl_gate.observed == pytest.approx(res.ppl[1].ppl / res.ppl[0].ppl - 1)
    assert ppl_gate.limit == 0.05
    assert out.gates[2].observed == pytest.approx(0.05)
    assert not out.all_held and out.exit_code == 3


def test_significance_gate_fails_only_when_drop_is_significant(tmp_path: Path):
    gate = GateCfg(task="mc", metric="acc", max_drop=0.01, significance=0.05)
    # -0.05 with 12 vs 2 flips: p = 0.013 -> significant -> fails
    out = _gates(compression_results(tmp_path), gate)
    assert not out.gates[0].held and "significant" in out.gates[0].reason
    # -0.02 with 6 vs 2 flips: p = 0.29 -> over the limit but not significant -> holds
    out = _gates(compression_results(tmp_path, c2w=6, w2c=2), gate)
    assert out.gates[0].held and "not significant" in out.gates[0].reason
    assert out.gates[0].p_value == pytest.approx(mcnemar_exact(6, 2))
    assert out.exit_code == 0


def test_gate_matching_nothing_fails_and_says_so(tmp_path: Path):
    out = _gates(compression_results(tmp_path), GateCfg(task="humaneval", metric="pass@1", max_drop=0.02))
    g = out.gates[0]
    assert not g.held and g.target == "(nothing)"
    assert "matches no comparison" in g.reason and "mc:acc" in g.reason
    assert out.exit_code == 3


def test_shorthands_train_loss_and_score_drop(tmp_path: Path):
    cfg = CompareCfg(max_train_loss_diff=0.01, max_score_drop=0.02)
    assert [g.train_loss_diff for g in gates_from_config(cfg)] == [0.01, None]
    ok = run_comparison(training_results(tmp_path, loss_gap=0.004), cfg)
    assert ok.all_held, ok.gates
    bad = run_comparison(training_results(tmp_path, loss_gap=0.02), cfg)
    failed = [g for g in bad.gates if not g.held]
    assert [g.bound for g in failed] == ["train_loss_diff"]
    assert failed[0].observed == pytest.approx(0.02)


def test_evaluate_gates_with_no_comparisons_fails_every_gate():
    checks = evaluate_gates([GateCfg(max_drop=0.1), GateCfg(train_loss_diff=0.1)], [])
    assert [c.held for c in checks] == [False, False]


def test_flipped_helper_is_what_the_tests_assume():
    base = mc_pattern(8)
    assert flipped(base, 2, 1) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_training_baseline_flag_wins_over_order(tmp_path: Path):
    res = training_results(tmp_path)
    res.train[0].baseline, res.train[1].baseline = False, True  # the train stage marks its baseline variant
    assert run_comparison(res, CompareCfg()).baseline == "compiled"


def test_compare_runs_compares_kld_between_runs(tmp_path: Path):
    from accbench.compare import compare_runs

    a, b = compression_results(tmp_path), compression_results(tmp_path)
    b.fidelity[0].kld_mean, b.fidelity[0].kld_stderr = 0.08, 0.0015
    merged, out = compare_runs([("a", a), ("b", b)], CompareCfg(gates=[GateCfg(max_kld=0.06)],
                                                                 bootstrap_resamples=500))
    kl = next(c for c in out.comparisons if c.kind == "fidelity")
    assert (kl.baseline, kl.candidate, kl.position) == ("a/fake_quant", "b/fake_quant", "fake_quant")
    assert kl.delta == pytest.approx(0.03)
    assert (kl.ci_low, kl.ci_high) == pytest.approx((0.03 - 1.959964 * 0.0025, 0.03 + 1.959964 * 0.0025),
                                                          abs=1e-6)  # hypot(0.002, 0.0015) = 0.0025
    assert [g.observed for g in out.gates] == [0.08] and out.exit_code == 3
    assert [f.position for f in merged.fidelity] == ["a/fake_quant", "b/fake_quant"]
    b.fidelity[0].tokens = 100
    with pytest.raises(AccbenchError, match="fake_quant fidelity wikitext2: 3072 tokens in a, 100 in b"):
        compare_runs([("a", a), ("b", b)], CompareCfg())


def test_significance_on_perplexity_and_without_per_sample_data(tmp_path: Path):
    res = compression_results(tmp_path)  # +3.06% on every window: significant
    out = _gates(res, GateCfg(metric="ppl", max_relative_increase=0.01, significance=0.05))
    assert not out.gates[0].held and out.gates[0].p_value < 0.01
    for e in res.tasks:  # aggregates only: no test possible, an over-limit drop counts as significant
        e.per_sample = {}
        e.stderr = {}
    out = _gates(res, GateCfg(task="mc", metric="acc", max_drop=0.01, significance=0.05))
    assert not out.gates[0].held and "counted as significant" in out.gates[0].reason


def test_opencompass_scores_appear_in_the_report_tables_and_missing_stays_missing(tmp_path: Path):
    from accbench.report.markdown import render_markdown
    from accbench.report.tables import all_tables
    from accbench.results import Results

    res = Results(run_dir=str(tmp_path), status="complete")
    res.opencompass = [{"position": "pretrain", "dataset": "quick_mc", "metric": "accuracy", "mode": "ppl",
                        "score": 31.25, "raw": "31.25"},
                       {"position": "fake_quant", "dataset": "quick_mc", "metric": "accuracy", "mode": "ppl",
                        "score": None, "raw": "-"}]
    (oc,) = [t for t in all_tables(res) if t.title == "OpenCompass"]
    assert oc.rows == [["pretrain", "quick_mc", "accuracy", "ppl", "31.25"],
                       ["fake_quant", "quick_mc", "accuracy", "ppl", "missing"]]
    assert oc.marks == ["", "bad"]
    md = render_markdown(res, [])
    assert "31.25" in md and "missing" in md
