"""The report's "Real-quant checkpoint vs fake_quant" table: the exported checkpoint's weights check, then every
perplexity / task metric and KL of `real_quant` beside `fake_quant`, with the paired difference."""

from __future__ import annotations

from accbench.report.table import Table
from accbench.report.tables import fmt, fmt_p, fmt_pct, fmt_signed
from accbench.results import Results


def real_quant_table(results: Results) -> Table | None:
    rq = results.real_quant
    if rq is None:
        return None
    t = Table("Real-quant checkpoint vs fake_quant", ["metric", "fake_quant", "real_quant", "Δ", "95% CI", "p"])
    same = rq.tensors_compared > 0 and rq.tensors_equal == rq.tensors_compared
    weights = (f"{rq.tensors_equal}/{rq.tensors_compared} tensors bit for bit" if rq.tensors_compared
               else "not compared")
    t.add(["weights (reloaded vs fake-quant)", "", weights, fmt(rq.max_abs_diff, 3) if rq.max_abs_diff else "0",
           "", ""], "" if same or not rq.tensors_compared else "bad")
    for c in rq.vs_fake_quant:
        what = {"ppl": f"ppl {c.dataset}", "fidelity": f"KL to the baseline {c.dataset}"}.get(c.kind,
                                                                                           f"{c.task} {c.metric}")
        d = 5 if c.kind == "fidelity" else 4
        if c.kind == "ppl":
            delta, ci = fmt_pct(c.relative_delta), f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]"
        else:
            delta, ci = fmt_signed(c.delta, d), f"[{fmt_signed(c.ci_low, d)}, {fmt_signed(c.ci_high, d)}]"
        t.add([what, fmt(c.baseline_value, d), fmt(c.candidate_value, d), delta, "–" if c.ci_low is None else ci,
               fmt_p(c.p_value)])
    t.note = (f"{rq.format} checkpoint {rq.path}; {rq.quantized_linears} linears quantized. real_quant is the "
              "checkpoint decompressed by transformers (compressed-tensors), activations quantized as it declares.")
    return t
