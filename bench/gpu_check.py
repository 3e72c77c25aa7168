"""GPU check: speed and memory of accbench's GPU paths on a Llama-3-8B-shaped model, as one JSON document.

On the given device it builds a model with random weights from its config (no download) and saves it
once, then measures through accbench's own CLI and building blocks, one phase at a time:
  env     versions (python, torch, CUDA, transformers, accbench), the GPU and the host;
  build   the model (8b: Llama-3-8B shapes, bf16, a BPE tokenizer trained on Python's help topics;
          mini: the same code at a CPU size; tiny: accbench's built-in model), saved once and reused;
  ppl     `accbench run` perplexity at seq_len 2048 (tiny: the model window) against a raw forward pass of
          the same windows (the limit), tokens/s and peak GPU memory of each;
  engine  the engine with batch_size auto on the placed model: multiple-choice scoring and generation
          tokens/s and the batch size it picked; then both tasks end to end through `accbench eval`;
  oom     scoring and generation at a batch size that does not fit: it halves until it does, and the
          answers equal those of a run at the batch size that held (GPU: a real CUDA out-of-memory under a
          per-process memory cap; CPU: a simulated one above a row limit);
  gptq, awq  W4 g128 block by block with the rest of the model on CPU (placement offload on GPU): wall
          time, peak GPU memory, peak host memory (on 8b the first --quant-blocks blocks; the full-model
          time is extrapolated per block and labelled so).
After every phase the whole document (finished phases, the rest marked) is written to --out, so a
time-out still leaves figures. On GPU each phase runs in its own process with a time budget; on CPU
they run in this process (`--isolate` forces processes).

    python bench/gpu_check.py --size tiny --device cpu --out /tmp/gpu_check.json      # < 1 minute
    python bench/gpu_check.py --size 8b --device cuda --out $OUT/gpu_check.json      # see bench/gpu_check.sh
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SCHEMA = "accbench.gpu_check/1"
PHASES = ("env", "build", "ppl", "engine", "oom", "gptq", "awq")
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)
MODEL_MARKER = "gpu_check_model.json"  # written last: a folder without it is an unfinished build


@dataclass(frozen=True)
class Size:
    """What each phase runs at one model size (time budgets in seconds, per phase)."""

    name: str
    model: dict | None  # a Llama config built with random weights; None: the built-in model
    dtype: str
    seq_len: int  # perplexity window (capped at the model window)
    ppl_windows: int
    ppl_bs: int
    mc_questions: int
    gen_prompts: int
    gen_tokens: int
    oom_fit_bs: int  # the batch size that fits; the oom phase asks for 4x
    oom_context_chars: int
    calib_samples: int
    calib_seq_len: int
    quant_blocks: int | None  # None: every block
    budgets: dict[str, int] = field(default_factory=dict)


SIZES = {
    "8b": Size("8b", LLAMA3_8B, "bfloat16", 2048, 64, 4, 400, 64, 64, 8, 6000, 32, 512, 8,
               dict(env=60, build=240, ppl=120, engine=120, oom=90, gptq=150, awq=150)),
    # the 8b code path (tokenizer, bf16 build and save, GQA, the 128k vocabulary) at a size a CPU runs
    "mini": Size("mini", {**LLAMA3_8B, "hidden_size": 256, "intermediate_size": 896, "num_hidden_layers": 4,
                          "num_attention_heads": 4, "num_key_value_heads": 1},
                 "bfloat16", 512, 4, 2, 20, 4, 8, 2, 1500, 4, 128, 2,
                 dict(env=60, build=120, ppl=60, engine=60, oom=60, gptq=60, awq=60)),
    "tiny": Size("tiny", None, "float32", 2048, 8, 2, 40, 8, 16, 4, 2000, 8, 256, None,
                 dict(env=60, build=300, ppl=60, engine=60, oom=60, gptq=60, awq=60)),
}


@dataclass
class Ctx:
    """What a phase is given: the size, the device, the work folder and (after build) the model."""

    size: Size
    device: str
    work: Path
    model_path: str = ""


# ---------------------------------------------------------------------------------------------- helpers


def host_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def gb(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def texts() -> list[str]:
    """Python's help topics (ship with CPython): the text every phase reads."""
    from accbench.builtin import builtin_texts

    return [t for s in ("train", "calib", "test") for t in builtin_texts("pydoc-plain", s)]


# ---------------------------------------------------------------------------------------------- env, build


def phase_env(ctx: Ctx) -> dict:
    import platform

    import torch
    import transformers

    import accbench

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split() if Path("/proc/meminfo").exists() else []
    out: dict[str, Any] = dict(python=platform.python_version(), platform=platform.platform(),
                               torch=torch.__version__, torch_cuda=torch.version.cuda,
                               transformers=transformers.__version__, accbench=accbench.__version__,
                               accbench_commit=commit, cpu_count=os.cpu_count(),
                               host_memory_gb=gb(int(meminfo[1]) * 1024) if len(meminfo) > 1 else None,
                               cuda_available=torch.cuda.is_available(), gpu=None)
    if ctx.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {ctx.device} but torch {torch.__version__} sees no CUDA device")
        p = torch.cuda.get_device_properties(torch.device(ctx.device))
        out.update(gpu=p.name, gpu_memory_gb=gb(p.total_memory), gpu_count=torch.cuda.device_count(),
                   gpu_capability=f"{p.major}.{p.minor}")
    return out


def _train_tokenizer(vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   model_max_length=LLAMA3_8B["max_position_embeddings"])


def phase_build(ctx: Ctx) -> dict:
    """8b: a random bf16 Llama-3-8B-shaped model built on the device and saved once; tiny: the built-in."""
    import torch

    if ctx.size.model is None:
        from accbench.builtin import builtin_model_path

        t0 = time.perf_counter()
        path = builtin_model_path("tiny-llama")
        meta = json.loads((path / "accbench_builtin.json").read_text())
        return dict(model_path=str(path), params=meta["params"], dtype=ctx.size.dtype, build_s=None,
                    find_or_build_s=round(time.perf_counter() - t0, 2), reused=True,
                    disk_gb=gb(sum(f.stat().st_size for f in path.glob("*.safetensors"))))
    out = ctx.work / f"llama3-{ctx.size.name}-random"
    if (out / MODEL_MARKER).is_file():
        return {**json.loads((out / MODEL_MARKER).read_text()), "reused": True}
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    tok = _train_tokenizer(32000)
    t_tok = time.perf_counter() - t0
    cfg = LlamaConfig(**ctx.size.model, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    default, dtype = torch.get_default_dtype(), getattr(torch, ctx.size.dtype)
    torch.set_default_dtype(dtype)  # built in bf16 where it lives: no float32 copy of 8B weights
    try:
        with torch.device(ctx.device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.config.dtype = dtype  # what the saved config says
    t_build = time.perf_counter() - t0 - t_tok
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    t_save = time.perf_counter() - t1
    info = dict(model_path=str(out), params=sum(p.numel() for p in model.parameters()), dtype=ctx.size.dtype,
                config=ctx.size.model, tokenizer_vocab=len(tok), tokenizer_s=round(t_tok, 2), build_s=round(t_build, 2),
                save_s=round(t_save, 2), disk_gb=gb(sum(f.stat().st_size for f in out.glob("*.safetensors"))))
    (out / MODEL_MARKER).write_text(json.dumps(info, indent=2))
    return {**info, "reused": False}


# ---------------------------------------------------------------------------------------------- the runner


def phase_functions() -> dict[str, Callable[[Ctx], dict]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_check_phases as ph
    import gpu_check_quant as q

    return {"env": phase_env, "build": phase_build, "ppl": ph.phase_ppl, "engine": ph.phase_engine,
            "oom": ph.phase_oom, "gptq": lambda c: q.phase_quant(c, "GPTQ"), "awq": lambda c: q.phase_quant(c, "Awq")}


def run_phase_here(name: str, ctx: Ctx) -> dict:
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON document only
            figures = phase_functions()[name](ctx)
        return {"status": "ok", "seconds": round(time.perf_counter() - t0, 2), **figures}
    except Exception as exc:  # a failed phase is a figure too: the others still run
        return {"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def run_phase_isolated(name: str, ctx: Ctx, args: argparse.Namespace, timeout: float) -> dict:
    """The phase in a fresh process (its own peak memory, a clean GPU), killed after `timeout` seconds."""
    frag = ctx.work / f"phase_{name}.json"
    frag.unlink(missing_ok=True)
    (ctx.work / f"phase_{name}.progress.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--fragment", str(frag),
           "--size", ctx.size.name, "--device", ctx.device, "--work", str(ctx.work), "--model-path", ctx.model_path]
    if args.quant_blocks is not None:
        cmd += ["--quant-blocks", str(args.quant_blocks)]
    log = ctx.work / f"phase_{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the phase and anything it started
            proc.wait()
    secs = round(time.perf_counter() - t0, 2)
    text = log.read_text(errors="replace")
    sys.stderr.write(text)  # the phase's own log, in order, into this process's log
    sys.stderr.flush()
    if proc.returncode == -signal.SIGKILL and secs >= timeout:
        progress = ctx.work / f"phase_{name}.progress.json"  # what a phase had done when it was stopped
        return {"status": "timeout", "seconds": secs, "budget_s": round(timeout, 1),
                "progress": json.loads(progress.read_text()) if progress.is_file() else None,
                "log_tail": text[-2000:]}
    if frag.is_file():
        return json.loads(frag.read_text())
    return {"status": "failed", "seconds": secs, "error": f"the phase process exited {proc.returncode} without figures",
            "log_tail": text[-4000:]}


def write_doc(doc: dict, out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, out)


def run_all(args: argparse.Namespace, ctx: Ctx) -> dict:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := [p for p in phases if p not in PHASES]:
        sys.exit(f"gpu_check: unknown phase(s) {unknown}; valid: {','.join(PHASES)}")
    isolate = args.isolate if args.isolate is not None else ctx.device.startswith("cuda")
    budgets = dict(ctx.size.budgets)
    for item in args.budget:
        k, _, v = item.partition("=")
        budgets[k] = int(v)
    doc: dict[str, Any] = dict(schema=SCHEMA, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               command=" ".join([Path(sys.executable).name, *sys.argv]), size=ctx.size.name,
                               device=ctx.device, settings=asdict(ctx.size), isolated=isolate, status="running",
                               phases={p: {"status": "pending"} for p in phases})
    write_doc(doc, args.out)
    t_start = time.perf_counter()
    for name in phases:
        left = args.deadline - (time.perf_counter() - t_start)
        if name != "env" and name != "build" and not ctx.model_path:
            res = {"status": "skipped", "error": "no model: the build phase did not finish"}
        elif left < 5:
            res = {"status": "skipped", "error": f"the --deadline of {args.deadline} s was reached"}
        elif isolate:
            res = run_phase_isolated(name, ctx, args, min(budgets.get(name, 120), left))
        else:
            res = run_phase_here(name, ctx)
        if name == "build" and res.get("status") == "ok":
            ctx.model_path = res["model_path"]
        doc["phases"][name] = res
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        write_doc(doc, args.out)
        print(f"gpu_check: {name}: {res['status']} ({res.get('seconds', 0)} s)", file=sys.stderr, flush=True)
    doc["status"] = "complete" if all(r["status"] == "ok" for r in doc["phases"].values()) else "partial"
    write_doc(doc, args.out)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="8b")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--out", type=Path, help="also write the JSON document here (rewritten after every phase)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "accbench_gpu_check",
                    help="model, data and run folders")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--quant-blocks", type=int, help="blocks GPTQ/AWQ run on (default: 8 on 8b, all on tiny)")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds for all phases together")
    ap.add_argument("--budget", action="append", default=[], metavar="PHASE=S", help="a phase's time budget")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--isolate", dest="isolate", action="store_true", default=None, help="one process per phase")
    g.add_argument("--no-isolate", dest="isolate", action="store_false")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, write --fragment
    ap.add_argument("--fragment", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    size = SIZES[args.size]
    if args.quant_blocks is not None:
        size = replace(size, quant_blocks=args.quant_blocks)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(size, args.device, args.work, args.model_path)
    if args.phase:
        write_doc(run_phase_here(args.phase, ctx), args.fragment)
        return 0
    doc = run_all(args, ctx)
    print(json.dumps(doc, indent=2, default=str), flush=True)
    return 0 if doc["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
