"""Time and peak CPU memory of each quantization method, on the built-in tiny model and a random Llama.

Each (model, method) runs in a fresh child process, so peak memory is that run's alone. Memory is the
process's resident set size (RSS) from psutil: `rss0` after importing torch/transformers, `model`
the parameter bytes, `peak` the largest RSS sampled every 5 ms while quantizing (transform + fake
quant), and `peak/model` = (peak - rss0) / model bytes: what blockwise quantization costs on top of
holding the model (the issue's bound: about 1.3x plus calibration activations). ru_maxrss (the kernel's
own peak, which also covers loading) is printed next to it. On the tiny model the table also has the
fake-quant perplexity on the built-in test text.

Calibration activations (a block's inputs and outputs, what AWQ and GPTQ capture inside a block, the
forward's own intermediates) grow with calib.n_samples x seq_len; the issue's bound is on the rest
("about 1.3x the model's size plus activations"). So every (model, method) runs at two calibration sizes
and the second table fits peak = model x ratio + per_sample x n_samples through them: `ratio` is the peak
without activations, in model sizes (the model itself counts 1), and `MB/sample` the activation cost.

    python bench/bench_quant.py                      # tiny model + random ~110M Llama, all methods
    python bench/bench_quant.py --models random --methods GPTQ --n-samples 4 16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import threading
import time
from typing import Any

METHOD_SPECS = {
    "RTN": dict(bit=4, symmetric=False, granularity="per_group", group_size=128, act=None, special={}),
    "Awq": dict(bit=4, symmetric=False, granularity="per_group", group_size=128, act=None,
                special={"weight_clip": True, "clip_version": "v2"}),
    "GPTQ": dict(bit=4, symmetric=False, granularity="per_group", group_size=128, act=None,
                 special={"actorder": True}),
    "SmoothQuant": dict(bit=8, symmetric=True, granularity="per_channel", group_size=128, act="per_token",
                        special={"alpha": 0.8}),
}
RANDOM_LLAMA = dict(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _child(model_kind: str, method: str, n_samples: int, seq_len: int, threads: int, q: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from accbench.quant.methods import METHOD_SPECIAL_KEYS
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.quant.spec import QuantSpec

    rss0 = _rss()
    stream = None
    if model_kind == "tiny":
        from accbench.data.calib import calib_batches, calib_samples
        from accbench.data.text import load_texts, ppl_token_stream
        from accbench.models import load_model

        loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
        model, tok = loaded.model, loaded.tokenizer
        samples = calib_samples(load_texts("builtin:pydoc", builtin_split="calib"), tok, "random_truncate_txt",
                                n_samples, seq_len, 42)
        batches = calib_batches(samples, -1)
        stream = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), tok, seq_len)
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**RANDOM_LLAMA)).eval()
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, RANDOM_LLAMA["vocab_size"], (n_samples, seq_len), generator=g)]
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ms = METHOD_SPECS[method]
    spec = QuantSpec(method, WeightQuantSpec(ms["bit"], ms["symmetric"], ms["granularity"], ms["group_size"]),
                     ActQuantSpec(8, True, ms["act"]) if ms["act"] else None,
                     {**METHOD_SPECIAL_KEYS[method], **ms["special"]}, False, seq_len)
    rss_loaded = _rss()
    peak = [rss_loaded]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    state = transform_model(model, spec, batches, "cpu")
    t1 = time.perf_counter()
    fake_quantize_model(model, spec, batches, "cpu", state)
    t2 = time.perf_counter()
    stop.set()
    th.join()
    out = dict(model=model_kind, method=method, n_samples=n_samples, params=sum(p.numel() for p in model.parameters()),
               model_mb=model_bytes / 2**20, rss0_mb=rss0 / 2**20, loaded_mb=rss_loaded / 2**20,
               peak_mb=peak[0] / 2**20, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               transform_s=t1 - t0, quantize_s=t2 - t1,
               act_mb=sum(b.numel() for b in batches) * model.config.hidden_size * 4 / 2**20)
    if stream is not None:
        from accbench.evaluate.perplexity import perplexity

        out["ppl"] = perplexity(model, stream, seq_len, 8, "cpu", max_windows=40, progress=False).ppl
    q.put(out)


def run(models: list[str], methods: list[str], n_samples: list[int], seq_len: int, threads: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for mk in models:
        for m in methods:
            for n in n_samples:
                q = ctx.Queue()
                p = ctx.Process(target=_child, args=(mk, m, n, seq_len, threads, q))
                p.start()
                rows.append(q.get())
                p.join()
                print(json.dumps(rows[-1]), flush=True)
    return rows


def fit(rows: list[dict]) -> str:
    """peak - rss0 = model_mb x ratio + per_sample x n_samples, through the smallest and largest n."""
    head = ("model", "method", "n_samples", "peak-rss0 / model", "MB/sample (activations)",
            "ratio without activations")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in dict.fromkeys((r["model"], r["method"]) for r in rows):
        rs = sorted((r for r in rows if (r["model"], r["method"]) == key), key=lambda r: r["n_samples"])
        if len(rs) < 2 or rs[0]["n_samples"] == rs[-1]["n_samples"]:
            continue
        a, b = rs[0], rs[-1]
        used = [r["peak_mb"] - r["rss0_mb"] for r in (a, b)]
        per = (used[1] - used[0]) / (b["n_samples"] - a["n_samples"])
        ratio = (used[0] - per * a["n_samples"]) / a["model_mb"]
        lines.append("| " + " | ".join([key[0], key[1], f"{a['n_samples']} / {b['n_samples']}",
                                        f"{used[0] / a['model_mb']:.2f} / {used[1] / b['model_mb']:.2f}",
                                        f"{per:.1f}", f"{ratio:.2f}"]) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("model", "method", "n_samples", "params", "model MB", "time s", "peak RSS MB", "peak-rss0 / model", "maxrss MB", "ppl")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["method"], str(r["n_samples"]), f"{r['params'] / 1e6:.1f}M", f"{r['model_mb']:.0f}",
            f"{r['transform_s'] + r['quantize_s']:.1f} ({r['transform_s']:.1f}+{r['quantize_s']:.1f})",
            f"{r['peak_mb']:.0f}", f"{(r['peak_mb'] - r['rss0_mb']) / r['model_mb']:.2f}",
            f"{r['maxrss_mb']:.0f}", f"{r['ppl']:.3f}" if "ppl" in r else "-"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "random"], choices=["tiny", "random"])
    ap.add_argument("--methods", nargs="+", default=list(METHOD_SPECS), choices=list(METHOD_SPECS))
    ap.add_argument("--n-samples", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = ap.parse_args()
    rows = run(a.models, a.methods, a.n_samples, a.seq_len, a.threads)
    print()
    print(table(rows))
    print()
    print(fit(rows))


if __name__ == "__main__":
    main()
