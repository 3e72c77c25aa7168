"""GPTQ side by side: accbench vs llm-compressor, same model, same calibration tokens, same perplexity code.

llm-compressor pins another transformers, so it lives in its own virtual environment that reuses this
machine's torch (`python -m venv --system-site-packages VENV && VENV/bin/pip install llmcompressor`).
Run this script once with each interpreter; each prints one JSON line, and `--table A.json B.json`
prints the comparison:

    python bench/compare_llmcompressor.py --impl accbench > acc.json
    VENV/bin/python bench/compare_llmcompressor.py --impl llmcompressor > lc.json
    python bench/compare_llmcompressor.py --table acc.json lc.json

Settings matched to llm-compressor's `W4A16` preset: 4-bit symmetric weights, groups of 128,
dampening 0.01, block size 128, no act-order, every linear of a layer quantized from one Hessian pass
(`true_sequential: false`), the quantized layer's outputs feeding the next (`quant_out: true`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _data(n_samples: int, seq_len: int):
    from accbench.data.calib import calib_samples
    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_tokenizer, resolve_model_path

    path = resolve_model_path("builtin:tiny-llama")
    tok = load_tokenizer(path)
    samples = calib_samples(load_texts("builtin:pydoc", builtin_split="calib"), tok, "random_truncate_txt",
                            n_samples, seq_len, 42)
    stream = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), tok, seq_len)
    return path, samples, stream


def run_accbench(path: str, samples: list, seq_len: int):
    import torch
    from transformers import AutoModelForCausalLM

    from accbench.data.calib import calib_batches
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.quant.spec import QuantSpec

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spec = QuantSpec("GPTQ", WeightQuantSpec(4, True, "per_group", 128), None,
                     {"blocksize": 128, "percdamp": 0.01, "actorder": False, "static_groups": False,
                      "true_sequential": False}, True, seq_len)
    batches = calib_batches(samples, 1)
    t0 = time.perf_counter()
    fake_quantize_model(model, spec, batches, "cpu", transform_model(model, spec, batches, "cpu"))
    return model, time.perf_counter() - t0


def run_llmcompressor(path: str, samples: list, seq_len: int):
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ds = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], block_size=128,
                          dampening_frac=0.01, actorder=None)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=seq_len, num_calibration_samples=len(samples))
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["accbench", "llmcompressor"])
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--table", nargs=2, metavar="JSON")
    a = ap.parse_args()
    if a.table:
        rows = [json.loads(Path(p).read_text().strip().splitlines()[-1]) for p in a.table]
        print("| impl | GPTQ time s | ppl pretrain | ppl W4 g128 sym |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['impl']} | {r['seconds']:.1f} | {r['ppl_pretrain']:.4f} | {r['ppl']:.4f} |")
        print(f"\ntime ratio {rows[0]['impl']}/{rows[1]['impl']}: {rows[0]['seconds'] / rows[1]['seconds']:.2f}; "
              f"ppl ratio: {rows[0]['ppl'] / rows[1]['ppl']:.5f}")
        return
    import torch

    torch.set_num_threads(1)
    from accbench.evaluate.perplexity import perplexity

    path, samples, stream = _data(a.n_samples, a.seq_len)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pre = perplexity(base, stream, a.seq_len, 8, "cpu", progress=False).ppl
    run = run_accbench if a.impl == "accbench" else run_llmcompressor
    model, seconds = run(path, samples, a.seq_len)
    ppl = perplexity(model, stream, a.seq_len, 8, "cpu", progress=False).ppl
    print(json.dumps({"impl": a.impl, "seconds": seconds, "ppl_pretrain": pre, "ppl": ppl,
                      "n_samples": len(samples), "seq_len": a.seq_len, "python": sys.executable}))


if __name__ == "__main__":
    main()
