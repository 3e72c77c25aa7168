"""Benchmark: accbench's engine against lm-eval's `hf` model on a 400-question local multiple-choice task.

Same model (a random Llama built here, offline), same documents, same batch size, CPU. Reports
  1. end to end: `lm_eval --model hf ...` against `accbench eval ...` (both as a user runs them),
  2. scoring only, in-process: HFLM.loglikelihood against Engine.score on the identical requests,
  3. tokens/s: the engine (request tokens as lm-eval counts them, and tokens actually run) against a raw
     batched forward pass over the same sequences.
and checks that both tools give the same accuracy.

    PYTHONPATH=. python3 bench/bench_engine.py [--questions 400] [--batch-size 16] [--threads 2] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASK_YAML = """task: bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _texts() -> list[str]:
    import pydoc_data.topics as t

    return [t.topics[k] for k in sorted(t.topics)]


def build_model(out: Path, vocab: int, hidden: int, layers: int) -> Path:
    """A random Llama with a BPE tokenizer trained on Python's help topics (timing needs no training)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out / "config.json").is_file():
        return out
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                  model_max_length=1024)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=1024, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_task(out: Path, n: int, n_choices: int = 4, seed: int = 0) -> Path:
    """n questions: ~300 characters of a help topic, the true next ~40 characters and 3 from elsewhere."""
    rnd = random.Random(seed)
    texts = [t for t in _texts() if len(t) > 1000]
    docs = []
    for i in range(n):
        t = rnd.choice(texts)
        s = rnd.randrange(0, len(t) - 400)
        ctx = " ".join(t[s : s + 300].split()[1:-1])
        cut = lambda x: " ".join(x.split()[:6]) or "none"  # noqa: E731
        right = cut(t[s + 300 :].split(" ", 1)[-1][:60])
        wrong = [cut(" ".join(rnd.choice(texts)[j : j + 80].split()[1:])) for j in
                 (rnd.randrange(0, 900) for _ in range(n_choices - 1))]
        label = rnd.randrange(n_choices)
        choices = wrong[:label] + [right] + wrong[label:]
        docs.append({"id": f"q{i}", "context": ctx, "choices": choices, "label": label})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_mc.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "bench_mc.yaml").write_text(TASK_YAML.format(path=path.resolve()))
    (out / "tasks.yaml").write_text(f"tasks:\n  - {{name: bench_mc, type: multiple_choice, path: {path.resolve()}, "
                                    "batch_size: BS}\n")
    return path


def run_cli(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return dt


def bench_cli(model: Path, task_dir: Path, bs: int, threads: int, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    tasks_yaml = work / "tasks_bs.yaml"
    tasks_yaml.write_text((task_dir / "tasks.yaml").read_text().replace("BS", str(bs)))
    lm_out = work / "lm_eval_out"
    lm = run_cli(["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
                  "--tasks", "bench_mc", "--include_path", str(task_dir), "--batch_size", str(bs), "--device", "cpu",
                  "--output_path", str(lm_out), "--log_samples"], env)
    ours_dir = work / "accbench_out"
    shutil.rmtree(ours_dir, ignore_errors=True)
    ours = run_cli([sys.executable, "-m", "accbench.cli", "eval", "--model", str(model), "--config", str(tasks_yaml),
                    "--dtype", "float32", "--device", "cpu", "-o", str(ours_dir)], env)
    res = json.loads((ours_dir / "results.json").read_text())["tasks"][0]["metrics"]
    lm_res = json.loads(next(lm_out.rglob("results_*.json")).read_text())["results"]["bench_mc"]
    return {"lm_eval_s": lm, "accbench_s": ours, "acc": (lm_res["acc,none"], res["acc"]),
            "acc_norm": (lm_res["acc_norm,none"], res["acc_norm"])}


def bench_in_process(model_dir: Path, task_path: Path, bs: int, repeats: int) -> dict:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.evaluate.backends.hf import HFBackend as Engine
    from accbench.evaluate.requests import ScoreRequest

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = [json.loads(line) for line in task_path.read_text().splitlines()]
    reqs = [ScoreRequest(d["context"], " " + c) for d in docs for c in d["choices"]]
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, device="cpu")  # lm-eval's defaults (logits cache on)
    inst = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs)]
    t_lm, t_ours, stats = [], [], None
    for _ in range(repeats):  # interleaved, best of `repeats`: the machine is shared
        t0 = time.perf_counter()
        theirs = hf.loglikelihood(inst, disable_tqdm=True)
        t_lm.append(time.perf_counter() - t0)
        eng = Engine(model, tok, "cpu", batch_size=bs)
        t0 = time.perf_counter()
        ours = eng.score(reqs)
        t_ours.append(time.perf_counter() - t0)
        stats = eng.stats
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    pairs = [eng.encode_pair(r.context, r.continuation) for r in reqs]
    request_tokens = sum(len(c) + len(t) - 1 for c, t in pairs)  # what lm-eval runs: one row per request

    # raw forward: the same sequences, length-sorted, batched, logits only (no log-softmax, no bookkeeping)
    seqs = sorted(((c + t)[:-1] for c, t in pairs), key=len, reverse=True)
    t_raw = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(seqs), bs):
                part = seqs[s : s + bs]
                ids = torch.zeros(len(part), len(part[0]), dtype=torch.long)
                for i, q in enumerate(part):
                    ids[i, : len(q)] = torch.tensor(q)
                model(ids, use_cache=False)
        t_raw.append(time.perf_counter() - t0)
    return {"lm_eval_s": min(t_lm), "engine_s": min(t_ours), "raw_forward_s": min(t_raw), "max_abs_ll_diff": max_diff,
            "request_tokens": request_tokens, "engine_forward_tokens": stats.forward_tokens, "requests": len(reqs)}


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The options every engine benchmark shares: the random model, threads, repeats, work folder."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/accbench_bench")


def model_from_args(args: argparse.Namespace) -> Path:
    """Set the thread count and build (or reuse) the random model the options describe."""
    import torch

    torch.set_num_threads(args.threads)
    return build_model(Path(args.work) / f"llama_h{args.hidden}_l{args.layers}_v{args.vocab}", args.vocab,
                       args.hidden, args.layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-cli", action="store_true", help="only the in-process comparison")
    add_model_args(ap)
    args = ap.parse_args()

    import torch

    work = Path(args.work)
    model = model_from_args(args)
    task_path = build_task(work / f"task_{args.questions}", args.questions)
    print(f"model: random Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}; "
          f"{args.questions} questions x 4 multi-token choices; batch size {args.batch_size}; "
          f"{args.threads} CPU threads; torch {torch.__version__}")

    r = bench_in_process(model, task_path, args.batch_size, args.repeats)
    print(f"\nscoring only (in-process, best of {args.repeats}):")
    print(f"  lm-eval HFLM.loglikelihood : {r['lm_eval_s']:8.2f} s")
    print(f"  accbench Engine.score      : {r['engine_s']:8.2f} s   -> {r['lm_eval_s'] / r['engine_s']:.2f}x faster")
    print(f"  max |log-likelihood diff|  : {r['max_abs_ll_diff']:.2e}")
    print(f"  tokens/s (request tokens)  : engine {r['request_tokens'] / r['engine_s']:,.0f}   "
          f"raw forward {r['request_tokens'] / r['raw_forward_s']:,.0f}   "
          f"lm-eval {r['request_tokens'] / r['lm_eval_s']:,.0f}")
    print(f"  tokens run by the engine   : {r['engine_forward_tokens']:,} of {r['request_tokens']:,} request tokens "
          f"(shared contexts run once); engine {r['engine_forward_tokens'] / r['engine_s']:,.0f} tokens/s actually run")
    if not args.skip_cli:
        c = bench_cli(model, task_path.parent, args.batch_size, args.threads, work)
        print("\nend to end (CLI, one run each, process start and task loading included):")
        print(f"  lm_eval --model hf         : {c['lm_eval_s']:8.2f} s")
        print(f"  accbench eval              : {c['accbench_s']:8.2f} s   -> {c['lm_eval_s'] / c['accbench_s']:.2f}x faster")
        print(f"  acc      lm-eval {c['acc'][0]:.4f}   accbench {c['acc'][1]:.4f}")
        print(f"  acc_norm lm-eval {c['acc_norm'][0]:.4f}   accbench {c['acc_norm'][1]:.4f}")


if __name__ == "__main__":
    main()
