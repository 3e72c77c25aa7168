"""What fidelity costs: the baseline's recording pass and a model's fidelity pass, each against a plain
perplexity pass over the same windows, printed as time ratios (goal: <= 1.10 each).

    PYTHONPATH=. python3 bench/bench_fidelity.py                      # the built-in model (built once)
    PYTHONPATH=. python3 bench/bench_fidelity.py --model PATH --data wikitext2 --data-path DIR --seq-len 2048
    PYTHONPATH=. python3 bench/bench_fidelity.py --random-llama 128256,1024,4   # vocab,hidden,layers

Passes are interleaved (plain, record, compare) `--repeats` times and the medians compared; on CPU the
clock is this process's CPU time (other load on a shared machine stretches wall time, not CPU time). The fidelity pass compares the
model with its own recording: its cost does not depend on how far the two models are apart.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    import torch

    from accbench.data.text import load_texts, ppl_token_stream

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.random_llama:
        from transformers import LlamaConfig, LlamaForCausalLM

        vocab, hidden, layers = (int(x) for x in args.random_llama.split(","))
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                          num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                          max_position_embeddings=max(args.seq_len, 512))
        model = LlamaForCausalLM(cfg).eval().to(device)
        stream = torch.randint(0, vocab, (args.seq_len * args.windows,), generator=torch.Generator().manual_seed(0))
        return model, stream, f"random Llama vocab {vocab}, hidden {hidden}, {layers} layers"
    from accbench.models import load_model

    loaded = load_model(args.model, args.dtype, device=device)
    texts = load_texts(args.data, args.data_path)
    stream = ppl_token_stream(args.data, texts, loaded.tokenizer, args.seq_len)
    return loaded.model, stream, f"{args.model} on {args.data}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny-llama")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--data", default="builtin:pydoc")
    p.add_argument("--data-path", default=None)
    p.add_argument("--random-llama", default=None, help="vocab,hidden,layers of a random Llama instead of --model")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--bs", type=int, default=4)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from accbench.evaluate.fidelity import DistributionRecorder, FidelityComparer
    from accbench.evaluate.perplexity import perplexity

    model, stream, what = load(args)
    device = str(next(model.parameters()).device)
    n_windows = min(args.windows, stream.numel() // args.seq_len)
    n_tokens = n_windows * (args.seq_len - 1)
    rec_path = Path(tempfile.mkdtemp(prefix="bench_fidelity_")) / "rec"

    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time  # CPU: our own CPU time, blind to other load

    def run(hook: Any) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        perplexity(model, stream, args.seq_len, args.bs, device, max_windows=n_windows, on_logits=hook,
                   progress=False)
        if cuda:
            torch.cuda.synchronize()
        return clock() - t0

    run(None)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "record": [], "compare": []}
    for _ in range(args.repeats):
        times["plain"].append(run(None))
        rec = DistributionRecorder(rec_path, n_tokens, args.top_k, {"position": "bench", "dataset": args.data,
                                                                      "seq_len": args.seq_len})
        times["record"].append(run(rec))
        rec.finish()
        cmp = FidelityComparer(rec_path)
        times["compare"].append(run(cmp))
        cmp.entry("bench")

    best = {k: statistics.median(v) for k, v in times.items()}
    print(f"{what}: {n_windows} windows x {args.seq_len} tokens, bs {args.bs}, top_k {args.top_k}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} ({'wall' if cuda else 'process CPU'} time)")
    for k in times:
        print(f"  {k:8s} {best[k]:8.3f} s   (all: {', '.join(f'{t:.3f}' for t in times[k])})")
    size = sum(f.stat().st_size for f in rec_path.iterdir())
    print(f"  recording pass / plain pass = {best['record'] / best['plain']:.3f}   (goal <= 1.10)")
    print(f"  fidelity pass  / plain pass = {best['compare'] / best['plain']:.3f}   (goal <= 1.10)")
    print(f"  recording: {size / 1e6:.2f} MB for {n_tokens} tokens = {size / n_tokens:.0f} bytes/token")
    shutil.rmtree(rec_path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
