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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    Row("W3 g128", "AWQ+OmniQuant", (_q("Awq", W3, trans_version="v1"),
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


# ----------------------------------------------------------------------------- a row's configs; the row, in its process


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


def row_configs(row: Row, p: Protocol, work: Path) -> list[dict]:
    """The configs of a row's steps; step k > 0 runs on the model step k - 1 saves under `work`."""
    out, model = [], p.model
    for k, step in enumerate(row.steps):
        save = None if k == len(row.steps) - 1 else str(work / f"step{k}")
        out.append(run_config(p, step, model, save))
        model = f"{save}/transformed_model"
    return out


def _child(row_id: str, quick: bool, threads: int, out_path: Path, work: Path) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from methods_measure import measure_steps

    torch.set_num_threads(threads)
    row, t0 = ROWS_BY_ID[row_id], time.perf_counter()
    res = measure_steps(row_configs(row, Protocol(**QUICK) if quick else Protocol(), work), work)
    res.update(id=row.id, setting=row.setting, method=row.method, note=row.note, row_s=time.perf_counter() - t0,
               torch_threads=torch.get_num_threads())
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
    t0, results, status = time.perf_counter(), [], "complete"

    def save(state: str) -> None:  # after every row, so an interrupted run keeps what it measured
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({"schema": "accbench.bench_methods/1", "status": state, "environment": env,
                                         "protocol": asdict(proto), "quick": a.quick,
                                         "total_s": time.perf_counter() - t0, "rows": results}, indent=1))

    try:
        for r in rows:
            res = run_row(r, a.quick, a.threads, work, a.timeout)
            results.append(res)
            summary = (f"ppl {res['ppl']:.3f} KL {res['kl']:.5f} quant {res['quant_wall_s']:.2f} s wall / "
                       f"{res['quant_cpu_s']:.2f} s CPU" if res["status"] == "ok" else res["error"])
            print(f"{r.id}: {summary} (row {res['row_s']:.0f} s)", flush=True)
            save("running")
    except KeyboardInterrupt:
        status = "interrupted"
    env["loadavg_end"] = list(os.getloadavg())
    save(status)
    print(f"\n{table(results)}\n\n{len(results)} rows in {time.perf_counter() - t0:.0f} s ({status}); torch "
          f"{env['torch']}, {a.threads} thread(s), {env['cpu']} ({env['cpu_count']} cores), load average "
          f"{env['loadavg_start'][0]:.1f} → {env['loadavg_end'][0]:.1f}", flush=True)
    if status == "interrupted":
        return 130
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
