"""Charts that mean something: one with nothing to show is left out and the report says why; colour marks only
what failed a gate; the KL histogram knows its gate."""

from __future__ import annotations

from pathlib import Path

from accbench.compare import run_comparison
from accbench.config import CompareCfg, GateCfg
from accbench.report.html import write_reports
from accbench.report.plots import kld_gate, make_plots, skipped_charts
from accbench.report.tables import all_tables
from compare_fixtures import compression_results


def test_identical_candidate_skips_delta_and_flip_charts_and_says_so(tmp_path: Path):
    res = compression_results(tmp_path, c2w=0, w2c=0)
    for e in res.tasks:  # the candidate answers exactly as the baseline
        if e.model == "fake_quant":
            base = next(b for b in res.tasks if b.model == "pretrain" and b.task == e.task)
            e.metrics, e.per_sample, e.stderr = dict(base.metrics), dict(base.per_sample), dict(base.stderr)
    res.compare = run_comparison(res, CompareCfg(bootstrap_resamples=200))
    plots = make_plots(res)
    assert "task_deltas.png" not in plots and "flips.png" not in plots and "ppl.png" in plots
    assert set(skipped_charts(res, plots)) == {"task_deltas.png", "flips.png"}
    write_reports(res, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "left out: every task delta is 0" in html and "left out: no sample flipped" in html
    assert "What flipped" not in html
    assert "left out: no sample flipped" in (tmp_path / "report.md").read_text()


def test_only_failing_gates_are_marked(tmp_path: Path):
    res = compression_results(tmp_path)  # +3.06% perplexity, significant; mc acc -0.05
    res.compare = run_comparison(res, CompareCfg(gates=[GateCfg(metric="ppl", max_relative_increase=0.05),
                                                        GateCfg(task="mc", metric="acc", max_drop=0.01),
                                                        GateCfg(max_kld=0.06)], bootstrap_resamples=200))
    tables = {t.title: t for t in all_tables(res)}
    ppl = tables["Perplexity"]
    assert ppl.marks == ["", ""]  # significant, but within its gate: no colour
    deltas = next(t for title, t in tables.items() if title.startswith("Task deltas"))
    marked = [row[1:3] for row, m in zip(deltas.rows, deltas.marks) if m]
    assert marked == [["mc", "acc"]] and set(deltas.marks) == {"", "bad"}
    assert "mcnemar_exact: CI by paired bootstrap" in deltas.note and "paired_bootstrap: CI and p" in deltas.note
    assert "normal_unpaired" not in deltas.note  # no row used it
    assert tables["Gates"].marks == ["", "bad", ""]
    assert kld_gate(res) == 0.06
