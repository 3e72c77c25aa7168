"""Perplexity, KL divergence to the dense model and time of each sparsity method on the built-in model.

The setting of tests/test_quant_builtin.py (the quantization table in docs/quantization.md): 16 calibration
windows of 256 tokens from the built-in calib split (random_truncate_txt, seed 42), perplexity and KL on the
first 48 windows of 256 tokens of the built-in test text, float32 on CPU, one thread. Rows: Magnitude and Wanda
at 50% unstructured and 2:4, ShortGPT removing 1 and 2 of the 4 blocks. Prints a Markdown table
(docs/sparsity.md holds it).

    python bench/bench_sparse.py
"""

from __future__ import annotations

import copy
import math
import time

import torch

ROWS = [("Magnitude", 0.5, None, 0), ("Wanda", 0.5, None, 0), ("Magnitude", 0.5, (2, 4), 0),
        ("Wanda", 0.5, (2, 4), 0), ("ShortGPT", 0.0, None, 1), ("ShortGPT", 0.0, None, 2)]


def setup() -> tuple:
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_model

    loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
    tok = loaded.tokenizer
    batches = calib_batches(calib_samples(load_texts("builtin:pydoc", builtin_split="calib"), tok,
                                          "random_truncate_txt", 16, 256, 42), -1)
    windows = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), tok, 256)[: 48 * 256].view(48, 256)
    return loaded.model, batches, windows


def log_probs(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.log_softmax(model(input_ids=windows[i: i + 8]).logits.float(), -1)
                          for i in range(0, len(windows), 8)])


def ppl_and_kl(lp: torch.Tensor, ref: torch.Tensor, windows: torch.Tensor) -> tuple[float, float]:
    nll = -lp[:, :-1].gather(-1, windows[:, 1:, None]).mean().item()
    return math.exp(nll), (ref.exp() * (ref - lp)).sum(-1).mean().item()


def main() -> None:
    from accbench.sparse.runner import sparsify_model
    from accbench.sparse.spec import SparseSpec

    torch.set_num_threads(1)
    model, batches, windows = setup()
    ref = log_probs(model, windows)
    ppl0, _ = ppl_and_kl(ref, ref, windows)
    print("| method | pattern | achieved sparsity | ppl | KL vs dense | time s |\n|---|---|---|---|---|---|")
    print(f"| dense | | 0 | {ppl0:.3f} | 0 | |")
    for method, sparsity, n_m, n_layers in ROWS:
        m = copy.deepcopy(model)
        spec = SparseSpec(method, sparsity, n_m, n_layers)
        t0 = time.perf_counter()
        outcome, stats = sparsify_model(m, spec, batches, "cpu")
        secs = time.perf_counter() - t0
        ppl, kl = ppl_and_kl(log_probs(m, windows), ref, windows)
        pattern = spec.pattern + (f" ({n_layers}: blocks {outcome.removed_layers})" if n_layers else "")
        print(f"| {method} | {pattern} | {stats.achieved_sparsity:.4f} | {ppl:.3f} ({ppl / ppl0 - 1:+.1%}) | "
              f"{kl:.4f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
