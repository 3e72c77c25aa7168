"""One row of bench/bench_methods.py, in its own process: llmc-shaped configs run through the pipeline's quantize or
sparsify stage, the result scored against the float model (perplexity, KL, top-1 agreement over every predicted
token), the stage's wall and CPU time without evaluations and saves, and its peak resident memory."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch


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


def _evaluate(loaded: Any, stream: Any, e: Any, ref: Any | None) -> tuple[float, Scores, float]:
    """Perplexity as `accbench run` computes it for the eval section `e`, with the scores against `ref`."""
    from accbench.evaluate.perplexity import perplexity

    sc, t0 = Scores(ref), time.perf_counter()
    res = perplexity(loaded.model, stream, e.seq_len, e.bs, loaded.device, max_windows=e.num_samples,
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


def measure_steps(configs: list[dict], work: Path) -> dict:
    """Run the llmc-shaped `configs` one after the other (each step on the model the previous one saved): the last
    step's scores against the first step's model, the quantization time and memory of all steps."""
    from accbench.config import validate_config
    from accbench.models import load_model
    from accbench.pipeline.positions import prepare_eval_data
    from accbench.pipeline.records import Timing
    from accbench.pipeline.spine import seed_everything
    from accbench.results import QuantInfo, SparseInfo

    out: dict[str, Any] = {"stage_timings": {}, "steps": configs}
    clock, ref, stream = StageClock(), None, None

    def record(fact: Any) -> None:
        if isinstance(fact, Timing):
            out["stage_timings"][fact.name] = out["stage_timings"].get(fact.name, 0.0) + fact.seconds
        elif isinstance(fact, SparseInfo):
            out.update(achieved_sparsity=fact.achieved_sparsity, removed_layers=fact.removed_layers)
        elif isinstance(fact, QuantInfo) and fact.epoch_losses:
            out["final_epoch_losses"] = {k: v[-1] for k, v in fact.epoch_losses.items()}

    for k, raw in enumerate(configs):
        last = k == len(configs) - 1
        cfg = validate_config(raw)
        seed_everything(cfg.base.seed)  # as the spine: before the calibration data and the model
        loaded = load_model(cfg.model.path, cfg.model.torch_dtype, device="cpu")
        batches = _calib_batches(cfg, loaded.tokenizer)
        if ref is None:  # the float model: the reference of every score
            stream = prepare_eval_data(cfg.eval[0], loaded.tokenizer).stream
            out["float_ppl"], sc, _ = _evaluate(loaded, stream, cfg.eval[0], None)
            ref = torch.cat(sc.rows)
        target = "fake_quant" if cfg.quant is not None else "transformed"

        def evaluate(pos: str, model: Any, last: bool = last, target: str = target, e: Any = cfg.eval[0]) -> None:
            clock.pause()
            if not last:
                return  # step 1 of a two-step recipe: its transform is what counts; the save and the rest not
            if pos == target:
                ppl, sc, secs = _evaluate(model, stream, e, ref)
                out.update(ppl=ppl, kl=sc.kl / sc.n, top1=sc.agree / sc.n, eval_s=secs, tokens=sc.n)
            clock.resume()

        clock.start_stage()
        _run_stage(cfg, loaded, batches, work / f"run{k}", evaluate, record)
        clock.pause()
        del loaded
    clock.close()
    out.update(quant_wall_s=clock.wall, quant_cpu_s=clock.cpu, peak_rss_delta_mb=clock.peak_delta / 2**20,
               status="ok")
    return out
