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
        what = f"ppl {c.dataset}" if c.kind == "ppl" else f"{c.task} {c.metric}"
        delta = fmt_pct(c.relative_delta) if c.kind == "ppl" else fmt_signed(c.delta)
        ci = "–" if c.ci_low is None else (f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]" if c.kind == "ppl"
                                           else f"[{fmt_signed(c.ci_low)}, {fmt_signed(c.ci_high)}]")
        t.add([what, fmt(c.baseline_value), fmt(c.candidate_value), delta, ci, fmt_p(c.p_value)])
    kl = {(f.position, f.dataset): f for f in results.fidelity}
    for (pos, ds), f in kl.items():
        fake = kl.get(("fake_quant", ds))
        if pos == "real_quant" and fake is not None:
            t.add([f"KL vs {results.compare.baseline or 'baseline'} {ds}", fmt(fake.kld_mean, 5), fmt(f.kld_mean, 5),
                   fmt_signed(f.kld_mean - fake.kld_mean, 5), "", ""])
    t.note = (f"{rq.format} checkpoint {rq.path}; {rq.quantized_linears} linears quantized. real_quant is the "
              "checkpoint decompressed by transformers (compressed-tensors), activations quantized as it declares.")
    return t
