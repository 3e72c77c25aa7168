"""Stage: compare every position/variant with the baseline and evaluate the gates; then write the reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from accbench.config import CompareCfg
from accbench.pipeline.records import Record, timed
from accbench.results import Results

if TYPE_CHECKING:
    from accbench.results import CompareBlock

log = logging.getLogger("accbench")


def compare_positions(results: Results, cfg: CompareCfg, record: Record) -> "CompareBlock":
    """The compare block of results.json: comparisons with the baseline, gates, the exit code."""
    from accbench.compare import run_comparison

    with timed(record, "compare"):
        block = run_comparison(results, cfg)
        if results.real_quant is not None:
            results.real_quant.vs_fake_quant = real_quant_vs_fake_quant(results, cfg)
    log.info("compare: baseline %s, %d comparisons, gates %s", block.baseline, len(block.comparisons),
             "held" if block.all_held else "FAILED")
    return block


def real_quant_vs_fake_quant(results: Results, cfg: CompareCfg) -> list:
    """The exported checkpoint against the model it was exported from: perplexity and task metrics paired, and
    the KL to the baseline of both (aggregates only: unpaired)."""
    from accbench.compare import compare_fidelity_across_runs, compare_pair

    out = compare_pair(results, "fake_quant", "real_quant", "real_quant", cfg.bootstrap_resamples, cfg.confidence,
                       cfg.seed)
    fake = {(f.dataset, f.seq_len): f for f in results.fidelity if f.position == "fake_quant"}
    for f in results.fidelity:
        if f.position == "real_quant" and (f.dataset, f.seq_len) in fake:
            out.append(compare_fidelity_across_runs(fake[(f.dataset, f.seq_len)], f, "fake_quant", "real_quant",
                                                    "real_quant", cfg.confidence))
    return out


def write_run_reports(results: Results, run_dir: Path, record: Record) -> None:
    """report.md, report.html and plots/ of a finished run (its compare block included)."""
    from accbench.report.html import write_reports

    with timed(record, "report"):
        write_reports(results, run_dir)
