"""The report's sparsity section: what the sparse method was asked for and what it achieved (results.json
`sparse`), so a perplexity change is read next to how much of the model went."""

from __future__ import annotations

from accbench.report.table import Table
from accbench.results import Results


def sparsity_table(results: Results) -> Table | None:
    s = results.sparse
    if s is None:
        return None
    t = Table("Sparsity", ["method", "pattern", "target", "achieved", "pruned / total", "layers", "removed blocks"],
              note="achieved = zero weights in the decoder-block linears (Magnitude, Wanda) or decoder-block "
                   "parameters removed with whole blocks (ShortGPT); embeddings and LM head are never pruned")
    if s.removed_layers or s.n_prune_layers:
        target = f"{s.n_prune_layers} blocks"
    else:
        target = f"{s.sparsity:.2%}" if s.sparsity is not None else ""
    removed = ", ".join(f"{i} (BI {s.block_influence[i]:.4f})" if i < len(s.block_influence) else str(i)
                        for i in s.removed_layers)
    t.add([s.method, s.sparsity_type, target, f"{s.achieved_sparsity:.2%}", f"{s.pruned} / {s.total}",
           f"{s.layers_before} → {s.layers_after}", removed])
    return t
