"""Perplexity throughput against the raw forward pass of the same model at the same shapes.

The figure is the ratio ours/raw (goal >= 0.9): the cost of the loss on top of the forward. The raw pass is
`model(input_ids).logits` under inference_mode; ours is accbench.evaluate.perplexity.perplexity.
Run: python bench/bench_ppl.py [--vocab 32000 --hidden 1024 --layers 6 --seq-len 512 --bs 2 --windows 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accbench.evaluate.perplexity import perplexity


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=args.seq_len)
    model = LlamaForCausalLM(cfg).eval()
    stream = torch.randint(0, args.vocab, (args.windows * args.seq_len,))
    windows = stream.view(args.windows, args.seq_len)

    def raw() -> None:
        with torch.inference_mode():
            for i in range(0, args.windows, args.bs):
                model(input_ids=windows[i : i + args.bs], use_cache=False).logits

    def ours() -> None:
        perplexity(model, stream, args.seq_len, args.bs, "cpu", progress=False)

    raw(), ours()  # warm-up
    t_raw, t_ours = best_of(raw, args.repeats), best_of(ours, args.repeats)
    tokens = args.windows * args.seq_len
    print(f"model: llama vocab={args.vocab} hidden={args.hidden} layers={args.layers}; "
          f"{args.windows} windows x {args.seq_len}, bs={args.bs}, threads={torch.get_num_threads()}")
    print(f"raw forward : {tokens / t_raw:10.1f} tokens/s")
    print(f"perplexity  : {tokens / t_ours:10.1f} tokens/s")
    print(f"ratio ours/raw = {t_raw / t_ours:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
