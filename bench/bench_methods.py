"""Every quantization and sparsity method on the built-in model, under one protocol: the table of docs/quantization.md.

One protocol for every row: the built-in model (`builtin:tiny-llama`, float32, CPU), 16 calibration windows of
256 tokens from the built-in calib split (`random_truncate_txt`, seed 42, one batch; OmniQuant takes them as
batches of 1, one AdamW step per window, as llmc's OmniQuant configs), perplexity, KL divergence to the float
model and top-1 agreement on the first 48 windows of 256 tokens of the built-in test text (the setting of
tests/test_quant_builtin.py), torch threads pinned (`--threads`, default 1).

Each row is an llmc-shaped config (the `quant` or `sparse` section a user writes) validated by accbench's config
code and run through the pipeline's own quantize / sparsify stage (`run_quantization`, `run_sparsification`),
perplexity by `accbench.evaluate.perplexity`: the numbers are what `accbench run` gives. Two-step recipes
(`quarot_comb_gptq`, `awq_comb_omni`) run as a user runs them: step 1 saves its transformed model
(`save_trans`), step 2 loads it. Every row runs in a fresh process, so its peak memory is its own.

Quantization time is the stage's work without the evaluations and saves (step 1 of a two-step recipe: its
transform only), as wall time and as process CPU time (user + system, all threads; on a shared machine the CPU
time is the steadier of the two). Memory: the largest resident set size sampled every 5 ms while quantizing,
minus the resident set size when the stage started. LLM.int8() quantizes at run time: its cost shows in `eval s`.

    PYTHONPATH=. nice python bench/bench_methods.py --out methods.json            # the full table
    PYTHONPATH=. python bench/bench_methods.py --quick --only RTN,Wanda           # a few rows, 4 + 8 windows
    PYTHONPATH=. python bench/bench_methods.py --list                             # the rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Protocol:
    """What every row shares."""

    model: str = "builtin:tiny-llama"
    data: str = "builtin:pydoc"
    calib_windows: int = 16
    test_windows: int = 48
    seq_len: int = 256
    preproc: str = "random_truncate_txt"
    seed: int = 42
    eval_bs: int = 8
    max_epochs: int | None = None  # --quick: OmniQuant's epochs capped


QUICK = dict(calib_windows=4, test_windows=8, max_epochs=1)


@dataclass(frozen=True)
class Row:
    """One method at one setting: its llmc-shaped steps ({"quant": ...} or {"sparse": ...}, optional "calib"
    overrides), run one after the other, each on the model the previous one saved."""

    setting: str
    method: str
    steps: tuple[dict, ...]
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.setting}/{self.method}"


def _q(method: str, weight: dict, act: dict | None = None, quant_out: bool = False, bs: int | None = None,
       **special: Any) -> dict:
    step: dict = {"quant": {"method": method, "weight": weight, **({"act": act} if act else {}),
                            **({"special": special} if special else {}), "quant_out": quant_out}}
    return {**step, "calib": {"bs": bs}} if bs is not None else step


def _s(method: str, **weight: Any) -> dict:
    return {"sparse": {"method": method, "weight": weight, "sparsity_out": False}}


W3 = {"bit": 3, "symmetric": False, "granularity": "per_group", "group_size": 128}
W3_LEARN = {**W3, "calib_algo": "learnable"}
W4 = {"bit": 4, "symmetric": False, "granularity": "per_channel", "group_size": -1}
A4 = {"bit": 4, "symmetric": False, "granularity": "per_token"}
W8 = {"bit": 8, "symmetric": True, "granularity": "per_channel", "group_size": -1}
A8 = {"bit": 8, "symmetric": True, "granularity": "per_token"}
ROTATE = dict(rotate_mode="hadamard", online_rotate=True, fp32_had=True)  # llmc's QuaRot configs
GPTQ_STEP2 = dict(actorder=True, static_groups=True, percdamp=0.01, blocksize=128, true_sequential=True)
OMNI_LET = dict(lwc=True, let=True, alpha=0.75, let_lr=0.001, epochs=20)  # llmc's omniq_w_a, its W4A4 notes

ROWS: tuple[Row, ...] = (
    Row("W3 g128", "RTN", (_q("RTN", W3),)),
    Row("W3 g128", "AWQ", (_q("Awq", W3),), "scale search only (the defaults)"),
    Row("W3 g128", "AWQ+clip", (_q("Awq", W3, weight_clip=True, clip_sym=True),), "llmc's awq_w_only: + clip search"),
    Row("W3 g128", "GPTQ", (_q("GPTQ", W3, actorder=True),), "actorder"),
    Row("W3 g128", "OmniQuant", (_q("OmniQuant", W3_LEARN, quant_out=True, bs=1, lwc=True, epochs=20),),
        "LWC, llmc's omniq_w_only (20 epochs)"),
    Row("W3 g128", "AWQ+OmniQuant", ({**_q("Awq", W3, trans_version="v1")},
                                     _q("OmniQuant", W3_LEARN, quant_out=True, bs=1, lwc=True, epochs=5,
                                        aug_loss=True, search_clip_init=True)),
        "llmc's awq_comb_omni (two runs)"),
    Row("W3 g128", "HQQ", (_q("HQQ", {**W3, "round_zp": False}, axis=0, lp_norm=0.7, beta=10, kappa=1.01,
                               iters=20),), "llmc's hqq_w_only (axis 0, float zero)"),
    Row("W3 g128", "QuaRot", (_q("Quarot", W3, **ROTATE),), "rotation + RTN, weights only"),
    Row("W4A4", "RTN", (_q("RTN", W4, A4),)),
    Row("W4A4", "SmoothQuant", (_q("SmoothQuant", W4, A4, alpha=0.8),), "alpha 0.8"),
    Row("W4A4", "GPTQ", (_q("GPTQ", {**W4, "calib_algo": "mse"}, A4, quant_out=True, **GPTQ_STEP2),),
        "no rotation"),
    Row("W4A4", "QuaRot", (_q("Quarot", W4, A4, **ROTATE),), "llmc's quarot_w_a at 4 bits"),
    Row("W4A4", "QuaRot+GPTQ", (_q("Quarot", W4, A4, **ROTATE),
                                _q("GPTQ", {**W4, "calib_algo": "mse"}, A4, quant_out=True, **GPTQ_STEP2,
                                   online_rotate=True, fp32_had=True)),
        "llmc's quarot_comb_gptq (two runs)"),
    Row("W4A4", "OmniQuant", (_q("OmniQuant", {**W4, "calib_algo": "learnable"}, A4, quant_out=True, bs=1,
                                 **OMNI_LET),), "LWC + LET (alpha 0.75, let_lr 0.001, 20 epochs)"),
    Row("W8A8", "RTN", (_q("RTN", W8, A8),)),
    Row("W8A8", "SmoothQuant", (_q("SmoothQuant", W8, A8, alpha=0.8),), "llmc's smoothquant_w_a"),
    Row("W8A8", "QuaRot", (_q("Quarot", W8, A8, **ROTATE),), "llmc's quarot_w_a"),
    Row("W8A8", "LLM.int8()", (_q("LlmInt8", W8, A8, threshold=6.0),), "threshold 6 (llmc's llmint8_w_only)"),
    Row("50% unstructured", "Magnitude", (_s("Magnitude", sparsity=0.5),)),
    Row("50% unstructured", "Wanda", (_s("Wanda", sparsity=0.5),)),
    Row("2:4", "Magnitude", (_s("Magnitude", sparsity=0.5, sparsity_type="2:4"),)),
    Row("2:4", "Wanda", (_s("Wanda", sparsity=0.5, sparsity_type="2:4"),)),
    Row("2 of 4 blocks", "ShortGPT", (_s("ShortGPT", n_prune_layers=2),), "50% of the decoder blocks"),
)
ROWS_BY_ID = {r.id: r for r in ROWS}


def select_rows(only: str | None) -> list[Row]:
    """Rows whose method label or id is in the comma-separated `only` (any letter case); all when None."""
    if not only:
        return list(ROWS)
    wanted = [w.strip().lower() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(w in (r.method.lower(), r.id.lower()) for r in ROWS)]
    if unknown:
        raise ValueError(f"--only: no row named {unknown}; methods: {sorted({r.method for r in ROWS})}, "
                         f"or a row id from --list")
    return [r for r in ROWS if r.method.lower() in wanted or r.id.lower() in wanted]


# ----------------------------------------------------------------------------- one row, in its own process


def run_config(p: Protocol, step: dict, model_path: str, save_path: str | None) -> dict:
    """The llmc-shaped config of one step (what a user writes), on the protocol's model, data and windows."""
    quant = "quant" in step
    section = {k: step[k] for k in ("quant", "sparse") if k in step}
    if p.max_epochs is not None and quant and "epochs" in section["quant"].get("special", {}):
        special = section["quant"]["special"]
        section = {"quant": {**section["quant"], "special": {**special, "epochs": min(special["epochs"],
                                                                                       p.max_epochs)}}}
    calib = {"name": p.data, "download": False, "n_samples": p.calib_windows, "bs": -1, "seq_len": p.seq_len,
             "preproc": p.preproc, "seed": p.seed, **step.get("calib", {})}
    return {"base": {"seed": p.seed}, "model": {"path": model_path, "torch_dtype": "float32"}, "calib": calib,
            "eval": {"eval_pos": ["pretrain", "fake_quant" if quant else "transformed"], "name": p.data,
                     "download": False, "seq_len": p.seq_len, "bs": p.eval_bs, "num_samples": p.test_windows},
            "save": {"save_trans": save_path is not None, "save_fake": False,
                     **({"save_path": save_path} if save_path else {})}, **section}


def _rss() -> int:
    """Resident set size in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class StageClock:
    """Wall and process CPU time while running, and the peak resident set above where each stage started."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.peak_delta = 0
        self._running = False
        self._t = (0.0, 0.0)
        self._base = self._peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self._running:
                self._peak = max(self._peak, _rss())
            time.sleep(0.005)

    def start_stage(self) -> None:
        self._base = self._peak = _rss()
        self.resume()

    def resume(self) -> None:
        if not self._running:
            self._t, self._running = (time.perf_counter(), time.process_time()), True

    def pause(self) -> None:
        if self._running:
            self._running = False
            self.wall += time.perf_counter() - self._t[0]
            self.cpu += time.process_time() - self._t[1]
            self.peak_delta = max(self.peak_delta, max(self._peak, _rss()) - self._base)

    def close(self) -> None:
        self.pause()
        self._stop.set()


class Scores:
    """Perplexity, KL(float ‖ model) and top-1 agreement over the predicted tokens, from the reference's
    log-probabilities (kept whole: the built-in model's vocabulary is small)."""

    def __init__(self, ref: Any | None) -> None:
        self.ref, self.kl, self.agree, self.n = ref, 0.0, 0, 0
        self.rows: list = []

    def hook(self, offset: int, logp: Any, labels: Any) -> None:
        if self.ref is None:
            self.rows.append(logp.detach().clone())
            return
        ref = self.ref[offset: offset + logp.shape[0]]
        self.kl += float((ref.exp() * (ref - logp)).sum(-1).double().sum())
        self.agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
        self.n += logp.shape[0]


def _evaluate(loaded: Any, stream: Any, p: Protocol, ref: Any | None) -> tuple[float, Scores, float]:
    from accbench.evaluate.perplexity import perplexity

    sc, t0 = Scores(ref), time.perf_counter()
    res = perplexity(loaded.model, stream, p.seq_len, p.eval_bs, loaded.device, max_windows=p.test_windows,
                     on_logits=sc.hook, progress=False)
    return res.ppl, sc, time.perf_counter() - t0


def _run_stage(cfg: Any, loaded: Any, batches: list | None, work: Path, evaluate: Callable, record: Callable) -> None:
    """The pipeline's quantize or sparsify stage, as the spine calls it (no resume)."""
    from rich.console import Console

    from accbench.fingerprints import ResumeLog
    from accbench.pipeline.quantize import QuantResume, quant_spec, run_quantization
    from accbench.pipeline.sparsify import run_sparsification

    console = Console(file=sys.stderr, width=120)
    resume = QuantResume({p: "bench_methods" for p in ("transformed", "fake_quant", "real_quant")},
                         ResumeLog(False), lambda pos: True, lambda pos, path: None, cfg.positions())
    if cfg.sparse is not None:
        run_sparsification(cfg.sparse, cfg.calib, cfg.save, loaded, work, record, evaluate, console, batches, resume)
    else:
        run_quantization(quant_spec(cfg.quant, cfg.calib, cfg.ignored_layers), cfg.quant, cfg.calib, cfg.save,
                         loaded, work, record, evaluate, console, batches, resume)


def _calib_batches(cfg: Any, tok: Any) -> list | None:
    """Calibration batches when the method calibrates (the spine's rule)."""
    from accbench.pipeline.quantize import build_calib_batches
    from accbench.quant.methods import needs_calibration

    if cfg.sparse is not None:
        return build_calib_batches(cfg.calib, tok) if cfg.sparse.needs_calibration() else None
    q = cfg.quant
    return build_calib_batches(cfg.calib, tok, cfg.model.type) \
        if needs_calibration(q.method, q.act is not None and q.act.static) else None


def measure_row(row: Row, p: Protocol, work: Path) -> dict:
    """Quantize or sparsify the built-in model as `row` says; its scores, times and memory."""
    from accbench.config import validate_config
    from accbench.models import load_model
    from accbench.pipeline.positions import prepare_eval_data
    from accbench.pipeline.records import Timing
    from accbench.pipeline.spine import seed_everything
    from accbench.results import QuantInfo, SparseInfo

    out: dict[str, Any] = {"id": row.id, "setting": row.setting, "method": row.method, "note": row.note,
                           "stage_timings": {}, "steps": []}
    clock, model_path, ref, stream = StageClock(), p.model, None, None

    def record(fact: Any) -> None:
        if isinstance(fact, Timing):
            out["stage_timings"][fact.name] = out["stage_timings"].get(fact.name, 0.0) + fact.seconds
        elif isinstance(fact, SparseInfo):
            out.update(achieved_sparsity=fact.achieved_sparsity, removed_layers=fact.removed_layers)
        elif isinstance(fact, QuantInfo) and fact.epoch_losses:
            out["final_epoch_losses"] = {k: v[-1] for k, v in fact.epoch_losses.items()}

    for k, step in enumerate(row.steps):
        last = k == len(row.steps) - 1
        raw = run_config(p, step, model_path, None if last else str(work / f"step{k}"))
        out["steps"].append(raw)
        cfg = validate_config(raw)
        seed_everything(cfg.base.seed)  # as the spine: before the calibration data and the model
        loaded = load_model(cfg.model.path, cfg.model.torch_dtype, device="cpu")
        batches = _calib_batches(cfg, loaded.tokenizer)
        if ref is None:
            stream = prepare_eval_data(cfg.eval[0], loaded.tokenizer).stream
            out["float_ppl"], sc, _ = _evaluate(loaded, stream, p, None)
            import torch

            ref = torch.cat(sc.rows)
        target = "fake_quant" if cfg.quant is not None else "transformed"

        def evaluate(pos: str, model: Any, last: bool = last, target: str = target) -> None:
            clock.pause()
            if not last:
                return  # step 1 of a two-step recipe: its transform is what counts; the save and the rest not
            if pos == target:
                ppl, sc, secs = _evaluate(model, stream, p, ref)
                out.update(ppl=ppl, kl=sc.kl / sc.n, top1=sc.agree / sc.n, eval_s=secs, tokens=sc.n)
            clock.resume()

        clock.start_stage()
        _run_stage(cfg, loaded, batches, work / f"run{k}", evaluate, record)
        clock.pause()
        if not last:
            model_path = str(work / f"step{k}" / "transformed_model")
        del loaded
    clock.close()
    out.update(quant_wall_s=clock.wall, quant_cpu_s=clock.cpu, peak_rss_delta_mb=clock.peak_delta / 2**20,
               status="ok")
    return out


def _child(row_id: str, quick: bool, threads: int, out_path: Path, work: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    p = Protocol(**QUICK) if quick else Protocol()
    t0 = time.perf_counter()
    res = measure_row(ROWS_BY_ID[row_id], p, work)
    res.update(row_s=time.perf_counter() - t0, torch_threads=torch.get_num_threads())
    out_path.write_text(json.dumps(res))


# ----------------------------------------------------------------------------- the parent: rows, table, JSON


def environment(threads: int) -> dict:
    """What the numbers were measured on."""
    import torch
    import transformers

    import accbench

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "accbench": accbench.__version__,
            "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "loadavg_start": list(os.getloadavg()), "git_commit": commit}


def run_row(row: Row, quick: bool, threads: int, work: Path, timeout_s: int) -> dict:
    """One row in a fresh process; a failure becomes a row with its error (the other rows still run)."""
    rdir = work / row.id.replace("/", "__").replace(" ", "_").replace(":", "-").replace("%", "pct")
    rdir.mkdir(parents=True, exist_ok=True)
    out_path, log_path = rdir / "row.json", rdir / "row.log"
    out_path.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", row.id, "--threads", str(threads),
           "--row-out", str(out_path), "--work", str(rdir)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    if rc == 0 and out_path.is_file():
        return json.loads(out_path.read_text())
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.is_file() else []
    return {"id": row.id, "setting": row.setting, "method": row.method, "note": row.note, "status": "error",
            "error": f"exit {rc}" + (f" after {timeout_s} s (timeout)" if rc == -1 else "") + ": " + " | ".join(tail),
            "row_s": time.perf_counter() - t0, "log": str(log_path)}


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _rel(x: float) -> str:
    return format(x, "+.2%" if abs(x) < 0.01 else "+.1%")


def table(rows: list[dict]) -> str:
    """The Markdown table: the float model first, then every row."""
    floats = [r["float_ppl"] for r in rows if "float_ppl" in r]
    head = ("setting", "method", "ppl", "Δppl", "KL vs float", "top-1 agree", "quant wall s", "quant CPU s",
            "peak RSS Δ MB", "eval s", "notes")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if floats:
        out.append(f"| float | | {floats[0]:.3f} | | 0 | 100% | | | | | |")
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {r['setting']} | {r['method']} | error | | | | | | | | {r.get('error', '')[:200]} |")
            continue
        note = r["note"]
        if r.get("achieved_sparsity") is not None:
            note = ", ".join(x for x in (note, f"achieved {r['achieved_sparsity']:.4f}"
                                         + (f", blocks {r['removed_layers']} removed" if r.get("removed_layers")
                                            else "")) if x)
        out.append("| " + " | ".join([
            r["setting"], r["method"], f"{r['ppl']:.3f}", _rel(r["ppl"] / r["float_ppl"] - 1), _f(r["kl"], ".5f"),
            f"{r['top1']:.1%}", _f(r["quant_wall_s"], ".2f"), _f(r["quant_cpu_s"], ".2f"),
            _f(r["peak_rss_delta_mb"], ".0f"), _f(r.get("eval_s"), ".1f"), note]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated method labels or row ids (see --list); default: every row")
    ap.add_argument("--quick", action="store_true",
                    help=f"a smoke run: {QUICK['calib_windows']} calibration and {QUICK['test_windows']} test "
                         f"windows, OmniQuant capped at {QUICK['max_epochs']} epoch (not the table's numbers)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every row (default 1)")
    ap.add_argument("--out", type=Path, help="write the results (environment, protocol, rows) as JSON here")
    ap.add_argument("--work", type=Path, help="per-row logs and saved step-1 models (default: a temporary folder)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per row before it is stopped (default 3600)")
    ap.add_argument("--list", action="store_true", help="print the rows and exit")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.row:
        _child(a.row, a.quick, a.threads, a.row_out, a.work)
        return 0
    try:
        rows = select_rows(a.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.list:
        print("\n".join(f"{r.id:32} {r.note}" for r in rows))
        return 0
    if a.threads < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_methods_"))
    env = environment(a.threads)
    proto = Protocol(**QUICK) if a.quick else Protocol()
    print(json.dumps({"environment": env, "protocol": asdict(proto)}, indent=1), flush=True)
    t0, results = time.perf_counter(), []
    for r in rows:
        res = run_row(r, a.quick, a.threads, work, a.timeout)
        results.append(res)
        summary = (f"ppl {res['ppl']:.3f} KL {res['kl']:.5f} quant {res['quant_wall_s']:.2f} s wall / "
                   f"{res['quant_cpu_s']:.2f} s CPU" if res["status"] == "ok" else res["error"])
        print(f"{r.id}: {summary} (row {res['row_s']:.0f} s)", flush=True)
    env["loadavg_end"] = list(os.getloadavg())
    total = time.perf_counter() - t0
    print(f"\n{table(results)}\n\n{len(results)} rows in {total:.0f} s; torch {env['torch']}, {a.threads} thread(s), "
          f"{env['cpu']} ({env['cpu_count']} cores), load average {env['loadavg_start'][0]:.1f} → "
          f"{env['loadavg_end'][0]:.1f}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"schema": "accbench.bench_methods/1", "environment": env,
                                     "protocol": asdict(proto), "quick": a.quick, "total_s": total,
                                     "rows": results}, indent=1))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
