"""The console summary printed at the end of a run."""

from __future__ import annotations

from typing import Any

from accbench.results import Results


def ppl_table(results: Results) -> Any:
    from rich.table import Table

    table = Table(title="Perplexity", show_lines=False)
    for col in ("position", "dataset", "seq_len", "windows", "ppl", "Δ vs pretrain"):
        table.add_column(col, justify="right" if col not in ("position", "dataset") else "left")
    base = {(p.dataset, p.seq_len): p.ppl for p in results.ppl if p.position == "pretrain"}
    for p in results.ppl:
        ref = base.get((p.dataset, p.seq_len))
        delta = f"{(p.ppl / ref - 1) * 100:+.2f}%" if ref and p.position != "pretrain" else ""
        table.add_row(p.position, p.dataset, str(p.seq_len), str(p.windows), f"{p.ppl:.4f}", delta)
    return table


def fidelity_table(results: Results) -> Any:
    from rich.table import Table

    table = Table(title="Fidelity to the baseline (per token)", show_lines=False)
    cols = ("position", "dataset", "vs", "KL mean ± se", "KL median", "KL p99", "top-1 agree", "Δp mean",
            "Δp rms", "ppl ratio", "tokens")
    for col in cols:
        table.add_column(col, justify="left" if col in ("position", "dataset", "vs") else "right")
    for f in results.fidelity:
        table.add_row(f.position, f.dataset, str(getattr(f, "baseline", "") or ""),
                      f"{f.kld_mean:.4g} ± {f.kld_stderr:.2g}", f"{f.kld_median:.4g}", f"{f.kld_p99:.4g}",
                      f"{f.top1_agreement:.2%}", f"{f.delta_p_mean:+.4f}", f"{f.delta_p_rms:.4f}",
                      f"{f.ppl_ratio:.4f}", str(f.tokens))
    return table


def print_summary(results: Results, console: Any) -> None:
    if results.ppl:
        console.print(ppl_table(results))
    if results.fidelity:
        console.print(fidelity_table(results))
    console.print(f"results: {results.run_dir}/results.json")
