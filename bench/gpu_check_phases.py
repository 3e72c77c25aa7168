"""The measuring phases of bench/gpu_check.py: perplexity, the engine, out-of-memory halving (and the
device and memory helpers bench/gpu_check_quant.py shares).

Each phase takes gpu_check's Ctx and returns a dict of figures (seconds, tokens/s, GB). Perplexity and
the engine run through accbench's CLI (`cli.main`, in this process so the CUDA peak is readable) next to
the building blocks (Engine) the pipeline calls, with the model placed as a run places it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from gpu_check import Ctx, gb, host_rss_bytes, texts


def engine_api() -> tuple[Any, Callable[[Any, Any], int]]:
    """(the HF backend class, resolve_max_length), imported when a phase runs so the script starts light."""
    from accbench.evaluate.backends.hf import HFBackend, resolve_max_length

    return HFBackend, resolve_max_length


def _cuda(ctx: Ctx) -> bool:
    return ctx.device.startswith("cuda")


def _sync(ctx: Ctx) -> None:
    import torch

    if _cuda(ctx):
        torch.cuda.synchronize(torch.device(ctx.device))


def _reset_peak(ctx: Ctx) -> None:
    import torch

    if _cuda(ctx):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(torch.device(ctx.device))


def _peak_gpu(ctx: Ctx) -> dict:
    import torch

    if not _cuda(ctx):
        return {"peak_gpu_allocated_gb": None, "peak_gpu_reserved_gb": None}
    d = torch.device(ctx.device)
    return {"peak_gpu_allocated_gb": gb(torch.cuda.max_memory_allocated(d)),
            "peak_gpu_reserved_gb": gb(torch.cuda.max_memory_reserved(d))}


@contextlib.contextmanager
def _host_peak() -> Iterator[dict]:
    """Peak resident memory of this process while the block runs, sampled every 10 ms."""
    box = {"peak": host_rss_bytes()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            box["peak"] = max(box["peak"], host_rss_bytes())
            time.sleep(0.01)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield box
    finally:
        stop.set()
        th.join()
        box["peak"] = max(box["peak"], host_rss_bytes())


def _cli(args: list[str]) -> float:
    """`accbench ARGS` in this process; its wall time. The run's model is collected before the next one loads."""
    import gc

    from accbench import cli

    t0 = time.perf_counter()
    code = cli.main(args)
    wall = time.perf_counter() - t0
    gc.collect()
    if code != 0:
        raise RuntimeError(f"accbench {' '.join(args)} exited {code}")
    return wall


def _text_file(ctx: Ctx) -> Path:
    """The help topics, repeated so that 8b's perplexity windows and calibration never run out."""
    path = ctx.work / "text.txt"
    if not path.is_file():
        path.write_text("\n\n".join(texts() * 4), encoding="utf-8")
    return path


def _window(ctx: Ctx, tokenizer: Any) -> int:
    from types import SimpleNamespace

    from transformers import AutoConfig

    model = SimpleNamespace(config=AutoConfig.from_pretrained(ctx.model_path))  # the window, without the weights
    return min(ctx.size.seq_len, engine_api()[1](model, tokenizer))


# ---------------------------------------------------------------------------------------------- perplexity


def phase_ppl(ctx: Ctx) -> dict:
    """`accbench run` perplexity against a raw batched forward over the same windows (the limit)."""
    import torch
    import yaml

    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_model, load_tokenizer

    s = ctx.size
    text = _text_file(ctx)
    seq_len = _window(ctx, load_tokenizer(ctx.model_path))
    run_dir = ctx.work / "run_ppl"
    cfg = {"model": {"path": ctx.model_path, "torch_dtype": s.dtype, "device": ctx.device},
           "eval": {"name": "custom", "path": str(text), "seq_len": seq_len, "bs": s.ppl_bs,
                    "eval_pos": ["pretrain"], "num_samples": s.ppl_windows}}
    (ctx.work / "ppl.yaml").write_text(yaml.safe_dump(cfg))
    _reset_peak(ctx)
    cli_s = _cli(["run", str(ctx.work / "ppl.yaml"), "-o", str(run_dir), "--overwrite"])
    peak_cli = _peak_gpu(ctx)
    res = json.loads((run_dir / "results.json").read_text())
    ppl, t = res["ppl"][0], res["timings"]

    loaded = load_model(ctx.model_path, s.dtype, device=ctx.device)
    stream = ppl_token_stream("custom", load_texts("custom", str(text)), loaded.tokenizer, seq_len)
    n = min(stream.numel() // seq_len, s.ppl_windows)
    windows = stream[: n * seq_len].view(n, seq_len)
    _reset_peak(ctx)
    with torch.inference_mode():
        t0 = time.perf_counter()
        loaded.model(windows[: s.ppl_bs].to(ctx.device), use_cache=False)  # warm-up: kernels, allocator
        _sync(ctx)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, n, s.ppl_bs):
            loaded.model(windows[i : i + s.ppl_bs].to(ctx.device), use_cache=False)
        _sync(ctx)
        raw_s = time.perf_counter() - t0
    peak_raw = _peak_gpu(ctx)
    ours = ppl["tokens"] / t["ppl_pretrain"]
    raw = n * seq_len / raw_s
    return dict(seq_len=seq_len, bs=s.ppl_bs, windows=ppl["windows"], tokens=ppl["tokens"], ppl=ppl["ppl"],
                cli_wall_s=round(cli_s, 2), cli_load_model_s=t.get("load_model"), ppl_s=t["ppl_pretrain"],
                tokens_per_s=round(ours, 1), raw_forward_s=round(raw_s, 3), raw_tokens_per_s=round(raw, 1),
                ratio_to_raw=round(ours / raw, 3), peak_gpu_allocated_gb=peak_cli["peak_gpu_allocated_gb"],
                peak_gpu_reserved_gb=peak_cli["peak_gpu_reserved_gb"],
                raw_peak_gpu_allocated_gb=peak_raw["peak_gpu_allocated_gb"],
                raw_warmup_batch_s=round(warm_s, 3),
                raw_note="logits of every position, no loss; timed after one warm-up batch (accbench's is not)")


# ---------------------------------------------------------------------------------------------- engine


def _task_files(ctx: Ctx) -> tuple[Path, Path]:
    from bench_engine import build_task

    s = ctx.size
    mc = build_task(ctx.work / f"mc_{s.mc_questions}", s.mc_questions)
    rnd = random.Random(1)
    long_texts = [t for t in texts() if len(t) > 1000]
    gen = ctx.work / "gen.jsonl"
    with gen.open("w") as f:
        for i in range(s.gen_prompts):
            t = rnd.choice(long_texts)
            a = rnd.randrange(0, len(t) - 400)
            f.write(json.dumps({"id": f"g{i}", "prompt": t[a : a + 300], "target": t[a + 300 : a + 320]}) + "\n")
    return mc, gen


def _timed(ctx: Ctx, fn: Any) -> tuple[Any, float]:
    _sync(ctx)
    t0 = time.perf_counter()
    out = fn()
    _sync(ctx)
    return out, time.perf_counter() - t0


def _engine_throughput(ctx: Ctx, mc: Path, gen: Path) -> dict:
    """The engine (batch_size auto) on the model placed as a run places it: exact token counts from its stats."""
    from accbench.evaluate.requests import GenerateRequest, ScoreRequest
    from accbench.models import load_model

    Engine = engine_api()[0]
    loaded = load_model(ctx.model_path, ctx.size.dtype, device=ctx.device)
    docs = [json.loads(line) for line in mc.read_text().splitlines()]
    reqs = [ScoreRequest(d["context"], " " + c) for d in docs for c in d["choices"]]
    eng = Engine(loaded.model, loaded.tokenizer, loaded.device, "auto")
    _reset_peak(ctx)
    lls, secs = _timed(ctx, lambda: eng.score(reqs))
    pairs = [eng.encode_pair(r.context, r.continuation) for r in reqs]
    request_tokens = sum(len(c) + len(t) - 1 for c, t in pairs)  # what lm-eval runs: one row per request
    k, acc = 0, 0
    for d in docs:  # acc from the engine's own numbers, to set next to the CLI's
        n = len(d["choices"])
        best = max(range(n), key=lambda j: lls[k + j][0])
        acc, k = acc + (best == d["label"]), k + n
    out = {"mc": dict(requests=len(reqs), request_tokens=request_tokens, forward_tokens=eng.stats.forward_tokens,
                      seconds=round(secs, 3), tokens_per_s=round(request_tokens / secs, 1),
                      forward_tokens_per_s=round(eng.stats.forward_tokens / secs, 1),
                      batch_size_picked=eng.stats.batch_sizes["score"], acc=acc / len(docs), **_peak_gpu(ctx))}
    prompts = [json.loads(line)["prompt"] for line in gen.read_text().splitlines()]
    greqs = [GenerateRequest(p, ctx.size.gen_tokens) for p in prompts]
    eng = Engine(loaded.model, loaded.tokenizer, loaded.device, "auto")
    _reset_peak(ctx)
    _, secs = _timed(ctx, lambda: eng.generate(greqs))
    made = eng.stats.forward_tokens + len(greqs)  # one token per decode step per row, plus each row's first
    out["gen"] = dict(prompts=len(greqs), max_new_tokens=ctx.size.gen_tokens, generated_tokens=made,
                      seconds=round(secs, 3), tokens_per_s=round(made / secs, 1),
                      batch_size_picked=eng.stats.batch_sizes["generate"], **_peak_gpu(ctx))
    return out


def phase_engine(ctx: Ctx) -> dict:
    """Scoring and generation throughput of the engine at the batch size it picks, then the same two tasks
    end to end through `accbench eval` (its batch sizes, wall time and accuracy next to the engine's)."""
    import gc

    import yaml

    mc, gen = _task_files(ctx)
    out = _engine_throughput(ctx, mc, gen)
    gc.collect()
    tasks = [{"name": "mc", "type": "multiple_choice", "path": str(mc), "batch_size": "auto"},
             {"name": "gen", "type": "generate", "path": str(gen), "batch_size": "auto", "stop": [],
              "max_new_tokens": ctx.size.gen_tokens, "metric": "contains"}]
    (ctx.work / "tasks.yaml").write_text(yaml.safe_dump({"tasks": tasks}))
    run_dir = ctx.work / "run_eval"
    _reset_peak(ctx)
    wall = _cli(["eval", "--model", ctx.model_path, "--config", str(ctx.work / "tasks.yaml"), "--dtype",
                 ctx.size.dtype, "--device", ctx.device, "-o", str(run_dir), "--overwrite"])
    res = json.loads((run_dir / "results.json").read_text())
    t = res["timings"]
    out["cli"] = dict(wall_s=round(wall, 2), load_model_s=t.get("load_model"), tasks_s=t.get("tasks_pretrain"),
                      **{e["task"]: dict(n=e["n"], metrics=e["metrics"], batch_size_picked=e["batch_sizes"])
                         for e in res["tasks"]}, **_peak_gpu(ctx))
    return out


# ---------------------------------------------------------------------------------------------- out of memory


def _oom_requests(ctx: Ctx) -> list:
    from accbench.evaluate.requests import ScoreRequest

    rnd = random.Random(2)
    body = "\n\n".join(texts())
    reqs = []
    for _ in range(4 * ctx.size.oom_fit_bs):  # 4x the fitting batch of distinct contexts: two halvings
        a = rnd.randrange(0, len(body) - ctx.size.oom_context_chars - 100)
        ctx_text = body[a : a + ctx.size.oom_context_chars]
        reqs += [ScoreRequest(ctx_text, " " + body[b : b + 40]) for b in (a + ctx.size.oom_context_chars, a)]
    return reqs


@contextlib.contextmanager
def _oom_above(ctx: Ctx, model: Any, fit_bytes: int, fit_rows: int) -> Iterator[str]:
    """GPU: cap this process's CUDA memory so the fitting batch fits and twice it does not (a real
    OutOfMemoryError from the allocator). CPU: raise one when a forward gets more rows than fit."""
    import torch

    if _cuda(ctx):
        d = torch.device(ctx.device)
        torch.cuda.empty_cache()
        cap = torch.cuda.memory_reserved(d) + int(1.5 * fit_bytes) + 64 * 2**20
        total = torch.cuda.get_device_properties(d).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), d)
        try:
            yield f"CUDA memory capped at {gb(cap)} GB (set_per_process_memory_fraction)"
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, d)
        return
    from accbench.models import find_parts

    def hook(mod: Any, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[0] > fit_rows:
            raise torch.OutOfMemoryError(f"out of memory (simulated on CPU: {h.shape[0]} rows > {fit_rows})")

    handle = find_parts(model).blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield f"simulated: torch.OutOfMemoryError above {fit_rows} rows per forward"
    finally:
        handle.remove()


def _halving(ctx: Ctx, loaded: Any, kind: str, answer: Callable[[Any], list]) -> tuple[dict, list, list]:
    """answer(engine) at the fitting batch size, then at 4x it under the memory limit: the batch size must
    halve until it fits and the answers must equal those of a run at the batch size that held."""
    import torch

    Engine = engine_api()[0]
    fit = ctx.size.oom_fit_bs
    dev = torch.device(ctx.device) if _cuda(ctx) else None
    _reset_peak(ctx)
    base = torch.cuda.memory_allocated(dev) if dev is not None else 0
    ref, ref_s = _timed(ctx, lambda: answer(Engine(loaded.model, loaded.tokenizer, ctx.device, batch_size=fit)))
    fit_bytes = torch.cuda.max_memory_allocated(dev) - base if dev is not None else 0
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: warnings.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("accbench.engine").addHandler(handler)
    eng = Engine(loaded.model, loaded.tokenizer, ctx.device, batch_size=4 * fit)
    try:
        with _oom_above(ctx, loaded.model, fit_bytes, fit) as how:
            got, oom_s = _timed(ctx, lambda: answer(eng))
    finally:
        logging.getLogger("accbench.engine").removeHandler(handler)
    final = eng.stats.batch_sizes[kind]
    if final != fit:  # compare with a run at the batch size that held (same chunks, same kernels)
        ref = answer(Engine(loaded.model, loaded.tokenizer, ctx.device, batch_size=final))
    halvings = sum("out of memory" in w for w in warnings)
    fig = dict(mode=how, requested_bs=4 * fit, final_bs=final, halvings=halvings,
               identical=ref == got and halvings > 0, fit_extra_gpu_gb=gb(fit_bytes) if dev is not None else None,
               reference_s=round(ref_s, 3), oom_run_s=round(oom_s, 3))
    return fig, ref, got


def phase_oom(ctx: Ctx) -> dict:
    """Scoring and generation at 4x a batch size that fits, under a memory limit (see _oom_above)."""
    from accbench.evaluate.requests import GenerateRequest
    from accbench.models import load_model

    loaded = load_model(ctx.model_path, ctx.size.dtype, device=ctx.device)
    reqs = _oom_requests(ctx)
    score, ref, got = _halving(ctx, loaded, "score", lambda e: e.score(reqs))
    score.update(requests=len(reqs), max_abs_ll_diff=max(abs(a[0] - b[0]) for a, b in zip(ref, got)))
    greqs = [GenerateRequest(r.context, 8) for r in reqs[::2]]
    gen, ref, got = _halving(ctx, loaded, "generate", lambda e: e.generate(greqs))
    gen.update(requests=len(greqs), max_new_tokens=8, texts_equal=sum(a == b for a, b in zip(ref, got)))
    return dict(context_chars=ctx.size.oom_context_chars, score=score, generate=gen)
