"""The run's spine: read it top to bottom to see what `accbench run` does.

Preflight (every check that needs no weights), load the model, evaluate it, transform it (quantize) or train
variants of it, evaluating each position as it becomes ready, then OpenCompass, compare and report. Only
this module, cli.py and config.py know `RunConfig` (and preflight.py and resume.py, which look at it whole):
each stage module takes its own config section and plain values, and hands what it computes back to
`RunContext.record`, which files it into results.json and saves at once, so an interruption keeps everything
computed so far. On --resume an entry is reused only where its fingerprint matches (pipeline/resume.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from accbench.config import RunConfig, dump_config
from accbench.pipeline import compare, opencompass, positions, preflight, quantize, sparsify, tasks, train
from accbench.pipeline.positions import EvalData, prepare_eval_data
from accbench.pipeline.records import Fact, ModelPath, OpenCompassResult, StaleFidelity, TaskOrder, Timing, timed
from accbench.fingerprints import ResumeLog
from accbench.iofaults import atomic_write_text
from accbench.pipeline.resume import check_config_change, position_fingerprints, position_pending
from accbench.provenance import collect_provenance
from accbench.results import (FidelityEntry, PplEntry, QuantInfo, RealQuantInfo, Results, SparseInfo, TaskEntry,
                              TrainEntry, collect_versions)

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel
    from accbench.quant.kvcache import KVCacheQuantizer
    from accbench.store import SampleStore

log = logging.getLogger("accbench")
E = TypeVar("E")


def run_pipeline(cfg: RunConfig, run_dir: Path, console: "Console", resume: bool = False,
                 strict: bool = False) -> Results:
    """Run everything the config asks for; return the results (also on disk in run_dir).

    On resume a stored result is reused only when its fingerprint matches what this config gives
    (pipeline/resume.py); `strict` refuses a resume whose config changed in a key that can change a number."""
    results = Results.load(run_dir) if resume and (run_dir / "results.json").is_file() else Results()
    if resume:
        check_config_change(cfg, run_dir, console, strict)
    results.run_dir, results.status, results.error = str(run_dir), "running", None
    results.versions = collect_versions()
    results.resume = {}
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    results.provenance = collect_provenance(cfg, dump_config(cfg))
    ctx = RunContext(cfg, run_dir, results, console, resume, baseline=baseline_position(cfg),
                     resumed=ResumeLog(resume, console))
    ctx.save()
    checked = preflight.check_run(cfg, run_dir)  # every weight-free check, before the model loads
    seed_everything(cfg.base.seed)
    calib_batches = _prepare_inputs(ctx)  # data problems surface before any weights load
    with timed(ctx.record, "load_model"):
        loaded = _load(cfg)
    ctx.record(ModelPath("pretrain", loaded.path))
    ctx.fps = position_fingerprints(cfg, loaded.path, calib_batches)

    if cfg.train is not None:
        train.run_training(cfg.train, cfg.model, cfg.runner.num_gpus, ctx.baseline, loaded, run_dir, resume,
                           list(results.train), ctx.record, lambda pos, model: evaluate_position(ctx, pos, model),
                           console, ctx.fps, ctx.resumed)
    else:
        if "pretrain" in cfg.positions():
            evaluate_position(ctx, "pretrain", loaded)
        if cfg.quant is not None:
            _quantize(ctx, loaded, calib_batches)
        elif cfg.sparse is not None:
            _sparsify(ctx, loaded, calib_batches)
    if cfg.opencompass is not None:
        opencompass.run_opencompass(cfg.opencompass, checked.opencompass, dict(results.models), cfg.positions(),
                                    results.opencompass_output, run_dir, resume, ctx.record, console)
    results.compare = compare.compare_positions(results, cfg.compare, ctx.record)
    ctx.save()
    compare.write_run_reports(results, run_dir, ctx.record)
    if resume:
        results.resume = ctx.resumed.summary()
        console.print(f"resume: reused {len(results.resume['reused'])} stored result(s), recomputed "
                      f"{len(results.resume['recomputed'])}", markup=False)
    results.status = "complete"
    ctx.save()
    return results


def _prepare_inputs(ctx: "RunContext") -> list | None:
    """Before the model loads: tokenize every eval dataset (into ctx.evals) and build the calibration batches
    (None when the method needs none), with the model's tokenizer alone."""
    from accbench.errors import ModelLoadError
    from accbench.models import load_tokenizer, resolve_model_path

    cfg, m = ctx.cfg, ctx.cfg.model
    where = m.tokenizer_path or resolve_model_path(m.path)
    try:
        tokenizer = load_tokenizer(where, m.trust_remote_code, m.tokenizer_mode == "fast")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer from {where}: {exc}",
                             "check model.path / model.tokenizer_path (the folder needs the tokenizer files)") from None
    ctx.evals = [prepare_eval_data(e, tokenizer) for e in cfg.eval]
    if cfg.sparse is not None and cfg.calib is not None and cfg.sparse.needs_calibration():
        with timed(ctx.record, "calib_data"):
            return quantize.build_calib_batches(cfg.calib, tokenizer)
    q = cfg.quant
    if q is None or cfg.calib is None:
        return None
    from accbench.quant.methods import needs_calibration

    if not needs_calibration(q.method, q.act is not None and q.act.static):
        return None
    with timed(ctx.record, "calib_data"):
        return quantize.build_calib_batches(cfg.calib, tokenizer, m.type)


def _transform_resume(ctx: "RunContext", loaded: "LoadedModel") -> quantize.QuantResume:
    """What the quantize or sparsify stage needs to skip its work on resume (pipeline/resume.py)."""
    from accbench.pipeline.train import load_checkpoint

    cfg, r = ctx.cfg, ctx.results
    wanted = cfg.positions()
    evals = {p: [e for e in ctx.evals if p in e.cfg.eval_pos] for p in wanted}
    return quantize.QuantResume(
        ctx.fps, ctx.resumed, wanted=wanted,
        pending=lambda p: position_pending(p, evals[p], position_tasks(cfg, p), ctx.fps, ctx.baseline, r.ppl,
                                           r.fidelity, r.tasks),
        load_saved=lambda p, path: load_checkpoint(cfg.model, cfg.runner.num_gpus, path, loaded.path, p),
        load_export=lambda path: _load(cfg, path, decompress=True))


def _sparsify(ctx: "RunContext", loaded: "LoadedModel", calib_batches: list | None) -> None:
    """The sparsification stage (llmc's sparse section): the transformed position is the sparsified model."""
    cfg = ctx.cfg
    assert cfg.sparse is not None
    wanted = cfg.positions()
    sparsify.run_sparsification(
        cfg.sparse, cfg.calib, cfg.save, loaded, ctx.run_dir, ctx.record,
        lambda pos, model: evaluate_position(ctx, pos, model) if pos in wanted else None, ctx.console,
        calib_batches, _transform_resume(ctx, loaded))


def _quantize(ctx: "RunContext", loaded: "LoadedModel", calib_batches: list | None) -> None:
    """The quantization stage, with what a resume needs to skip it (pipeline/resume.py)."""
    cfg = ctx.cfg
    wanted = cfg.positions()
    kv = quantize.kv_quantizer(cfg.quant)
    quantize.run_quantization(
        quantize.quant_spec(cfg.quant, cfg.calib, cfg.ignored_layers), cfg.quant, cfg.calib, cfg.save, loaded,
        ctx.run_dir, ctx.record,
        lambda pos, model: evaluate_position(ctx, pos, model, kv if pos == "fake_quant" else None)
        if pos in wanted else None,
        ctx.console, calib_batches, _transform_resume(ctx, loaded), kv)


@dataclass
class RunContext:
    """The spine's state: the config, the results it files every stage's facts into, the datasets tokenized
    once, the per-sample store (opened by the first task). Stages never see it."""

    cfg: RunConfig
    run_dir: Path
    results: Results
    console: "Console"
    resume: bool = False
    evals: list[EvalData] = field(default_factory=list)
    store: "SampleStore | None" = None
    baseline: str = "pretrain"  # the position (or variant) whose output distributions fidelity compares against
    fps: dict[str, str] = field(default_factory=dict)  # position/variant -> fingerprint of the model there
    resumed: ResumeLog = field(default_factory=lambda: ResumeLog(False))

    def save(self) -> None:
        self.results.save(self.run_dir)

    def record(self, fact: Fact) -> None:
        """File one fact a stage handed back into results.json (replacing an earlier one of the same position
        and dataset/task/variant, as a recomputation on --resume does), and save."""
        r = self.results
        if isinstance(fact, PplEntry):
            r.ppl = _replace(r.ppl, fact, lambda e: (e.position, e.dataset, e.seq_len))
        elif isinstance(fact, FidelityEntry):
            r.fidelity = _replace(r.fidelity, fact, lambda e: (e.position, e.dataset, e.seq_len))
        elif isinstance(fact, StaleFidelity):
            r.fidelity = [e for e in r.fidelity if (e.position, e.dataset, e.seq_len)
                          != (fact.position, fact.dataset, fact.seq_len)]
        elif isinstance(fact, TaskEntry):
            r.tasks = _replace(r.tasks, fact, lambda e: (e.model, e.task))
        elif isinstance(fact, TrainEntry):
            r.train = [e for e in r.train if e.variant != fact.variant] + [fact]
        elif isinstance(fact, QuantInfo):
            r.quant = fact
        elif isinstance(fact, RealQuantInfo):
            r.real_quant = fact
        elif isinstance(fact, SparseInfo):
            r.sparse = fact
        elif isinstance(fact, Timing):
            r.timings[fact.name] = round(r.timings.get(fact.name, 0.0) + fact.seconds, 3)
            return  # a timing alone is saved with the next fact
        elif isinstance(fact, ModelPath):
            if fact.path is None:
                r.models.pop(fact.position, None)
            else:
                r.models[fact.position] = fact.path
        elif isinstance(fact, TaskOrder):
            r.tasks = tasks.in_config_order(r.tasks, fact.position, fact.names)
        elif isinstance(fact, OpenCompassResult):
            r.opencompass, r.opencompass_output = fact.scores, fact.output
        self.save()


def _replace(entries: list[E], new: E, key: Callable[[E], tuple]) -> list[E]:
    """`entries` with `new` in place of the entry of the same key, or appended."""
    k = key(new)
    i = next((i for i, e in enumerate(entries) if key(e) == k), None)
    if i is None:
        entries.append(new)
    else:
        entries[i] = new
    return entries


def evaluate_position(ctx: RunContext, position: str, loaded: "LoadedModel",
                      kv: "KVCacheQuantizer | None" = None) -> None:
    """Perplexity (and fidelity) on every eval dataset that lists this position, then the downstream tasks;
    `kv`: the KV-cache quantization the perplexities and the downstream tasks run with here (quant.kvcache at
    fake_quant)."""
    cfg = ctx.cfg
    evals = ctx.evals if cfg.train is not None else [e for e in ctx.evals if position in e.cfg.eval_pos]
    positions.evaluate_perplexity(evals, position, loaded, ctx.baseline, ctx.run_dir, ctx.results.ppl,
                                  ctx.results.fidelity, ctx.record, ctx.console, ctx.fps, ctx.resumed, kv)
    todo = tasks.pending(position_tasks(cfg, position), ctx.results.tasks, position, ctx.fps.get(position),
                         ctx.resumed)
    if not todo:
        return
    if ctx.store is None:
        from accbench.store import SampleStore

        ctx.store = SampleStore(ctx.run_dir)
    change = cfg.quant or cfg.sparse
    transform = change.model_dump(mode="json") if change is not None and position != "pretrain" else None
    tasks.run_tasks(todo, [t.name for t in cfg.tasks], position, pairwise_baseline(cfg, position), loaded, cfg.model,
                    cfg.runner, ctx.store, transform, ctx.run_dir, ctx.record, ctx.console, ctx.fps.get(position), kv)


def position_tasks(cfg: RunConfig, position: str) -> list:
    """The downstream tasks run at `position` (at fake_quant with the KV-cache quantization, at fake_quant_wo_kv
    without it)."""
    return cfg.tasks_at(position)


def pairwise_baseline(cfg: RunConfig, position: str) -> str:
    """The model a candidate is judged against head to head (MT-bench pairwise); "" for a model that is not
    compared with the baseline (the baseline itself; the original model in a training run)."""
    base = baseline_position(cfg)
    if position == base or (cfg.train is not None and position not in cfg.train.variants):
        return ""
    return base


def _load(cfg: RunConfig, path: str | None = None, decompress: bool = False) -> "LoadedModel":
    """The model of `cfg` (or the checkpoint at `path`, with its tokenizer; `decompress`: a compressed-tensors
    checkpoint dequantized by transformers as it loads)."""
    from accbench.models import load_model

    m = cfg.model
    extra = dict(m.from_pretrained or {})
    if decompress:
        from transformers import CompressedTensorsConfig

        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    placement = "offload" if any(e.inference_per_block for e in cfg.eval) else m.placement
    if cfg.runner.num_gpus > 1 and placement == "single":
        placement = "device_map"
    log.info("loading model %s (%s, %s)", m.path, m.torch_dtype, placement)
    if path is not None:
        return load_model(path, m.torch_dtype, m.trust_remote_code, m.tokenizer_path, m.device, placement,
                          cfg.runner.num_gpus, m.attn_implementation, m.tokenizer_mode == "fast", None, None, extra)
    return load_model(m.path, m.torch_dtype, m.trust_remote_code, m.tokenizer_path, m.device, placement,
                      cfg.runner.num_gpus, m.attn_implementation, m.tokenizer_mode == "fast", m.revision, m.peft,
                      extra)


def seed_everything(seed: int) -> None:
    """base.seed, as llmc uses it: Python's, NumPy's and torch's (CPU and every GPU) random generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def baseline_position(cfg: RunConfig) -> str:
    """The reference model: compare.baseline if set, else 'pretrain', or the baseline training variant."""
    if cfg.train is not None:
        return train.training_baseline(list(cfg.train.variants), cfg.compare.baseline)
    return cfg.compare.baseline or "pretrain"
