"""Benchmark: requests pooled across the tasks of a position against each task run alone.

Many small tasks (MMLU-style subjects, a few generation sets) on one model: run one after another, each
with its own engine (what accbench did before pooling), against the same tasks through the request pool
(one engine pass per request kind, as `accbench run` does now). Same in-memory model, same batch-size
setting, CPU. Checks that both give the same per-sample results, then prints the time ratio.

    PYTHONPATH=. python3 bench/bench_pool.py [--mc-tasks 8] [--questions 25] [--gen-tasks 4] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import _texts, add_model_args, build_task, model_from_args  # noqa: E402


def build_gen(out: Path, n: int, seed: int) -> Path:
    rnd = random.Random(seed)
    texts = [t for t in _texts() if len(t) > 600]
    items = []
    for i in range(n):
        t = rnd.choice(texts)
        s = rnd.randrange(0, len(t) - 300)
        items.append({"prompt": t[s : s + rnd.randrange(60, 240)], "target": "the"})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gen_{seed}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in items))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mc-tasks", type=int, default=8)
    ap.add_argument("--questions", type=int, default=25)
    ap.add_argument("--gen-tasks", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", default="auto")
    add_model_args(ap)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.config import GenerateTask, MultipleChoiceTask
    from accbench.evaluate.backends.hf import HFBackend as Engine
    from accbench.evaluate.pool import RequestPool
    from accbench.evaluate.tasks import run_task

    bs = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    work = Path(args.work)
    model_dir = model_from_args(args)
    tasks = []
    for i in range(args.mc_tasks):
        path = build_task(work / f"pool_mc{i}_{args.questions}", args.questions, seed=100 + i)
        tasks.append(MultipleChoiceTask(name=f"mc{i}", type="multiple_choice", path=str(path), batch_size=bs))
    for i in range(args.gen_tasks):
        path = build_gen(work / "pool_gen", args.prompts, seed=200 + i)
        tasks.append(GenerateTask(name=f"gen{i}", type="generate", path=str(path), max_new_tokens=args.max_new_tokens,
                                  metric="contains", batch_size=bs))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    print(f"model: random Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}; {args.mc_tasks} "
          f"multiple-choice tasks x {args.questions} questions x 4 choices, {args.gen_tasks} generate tasks x "
          f"{args.prompts} prompts x {args.max_new_tokens} tokens; batch size {bs}; {args.threads} CPU threads")

    t_alone, t_pooled = [], []
    for _ in range(args.repeats):  # interleaved, best of `repeats`: the machine is shared
        t0 = time.perf_counter()
        alone = {t.name: run_task(t, Engine(model, tok, "cpu", t.batch_size)) for t in tasks}
        t_alone.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        engine = Engine(model, tok, "cpu", bs)
        pool = RequestPool(lambda b: engine)
        for t in tasks:
            pool.add(t.name, lambda client, t=t: run_task(t, client), t.batch_size, engine)
        pooled: dict = {}
        pool.run(lambda name, res, err: pooled.__setitem__(name, res if err is None else err))
        t_pooled.append(time.perf_counter() - t0)
        bad = [n for n, r in alone.items()
               if isinstance(pooled[n], BaseException) or pooled[n].per_sample != r.per_sample]
        if bad:
            sys.exit(f"pooled results differ from the tasks run alone: {bad}")
    print("per-sample results: identical (accuracies and generated texts)")
    print(f"pool: {pool.stats.rounds} round(s), passes {pool.stats.passes}, batch sizes {engine.stats.batch_sizes}")
    print(f"{'each task alone':<24}{min(t_alone):8.2f} s")
    print(f"{'pooled':<24}{min(t_pooled):8.2f} s")
    print(f"speed-up (alone / pooled): {min(t_alone) / min(t_pooled):.2f}x")


if __name__ == "__main__":
    main()
