"""The run, as one short function: load, evaluate at each position, transform, evaluate again, compare.

Only this module (and cli.py) knows the config's shape; every stage below calls building blocks with
plain arguments. results.json is saved after every stage, so an interruption keeps what was computed.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accbench.config import EvalCfg, RunConfig, dump_config
from accbench.errors import AccbenchError
from accbench.results import PplEntry, Results, Timer, collect_versions

log = logging.getLogger("accbench")


@dataclass
class EvalData:
    """One evaluation dataset, tokenized once for the whole run."""

    cfg: EvalCfg
    name: str
    stream: Any  # 1-D LongTensor
    recipe: str


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    results: Results
    console: Any
    resume: bool = False
    evals: list[EvalData] = field(default_factory=list)

    def save(self) -> None:
        self.results.save(self.run_dir)


def resolve_run_dir(cfg: RunConfig, output: str | None) -> Path:
    if output:
        return Path(output)
    name = cfg.base.run_name or time.strftime("%Y%m%d_%H%M%S")
    return Path(cfg.base.output_dir) / name


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run directory; refuse to clobber an existing run unless asked to."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise AccbenchError(f"run directory {run_dir} already holds a run",
                                "pass --resume to continue it, --overwrite to replace it, or -o another directory")
    elif resume:
        raise AccbenchError(f"--resume: no run to resume in {run_dir}", "drop --resume to start a new run")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)


def setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("accbench")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def run_pipeline(cfg: RunConfig, run_dir: Path, console: Any, resume: bool = False) -> Results:
    """Run everything the config asks for; return the results (also on disk in run_dir)."""
    results = Results.load(run_dir) if resume and (run_dir / "results.json").is_file() else Results()
    results.run_dir, results.status, results.error = str(run_dir), "running", None
    results.versions = collect_versions()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    ctx = RunContext(cfg, run_dir, results, console, resume)
    ctx.save()

    if cfg.quant is not None:
        precheck_quant(cfg)  # quant settings vs the model's shapes, before any weights load
    with Timer(results.timings, "load_model"):
        loaded = _load(cfg)
    results.models["pretrain"] = loaded.path
    ctx.evals = [prepare_eval_data(e, loaded.tokenizer) for e in cfg.eval]

    if cfg.train is not None:
        run_training_stage(ctx, loaded)
    else:
        if "pretrain" in cfg.positions():
            evaluate_position(ctx, "pretrain", loaded)
        if cfg.quant is not None:
            run_quant_stage(ctx, loaded)
    if cfg.opencompass is not None:
        run_opencompass_stage(ctx)
    run_compare_stage(ctx)
    results.status = "complete"
    ctx.save()
    return results


def run_quant_stage(ctx: RunContext, loaded: Any) -> None:
    """Calibrate and quantize block by block; evaluate `transformed` and `fake_quant`; save as asked."""
    from accbench.models import save_model
    from accbench.quant.methods import needs_calibration
    from accbench.quant.runner import check_quant, fake_quantize_model, transform_model

    cfg, res = ctx.cfg, ctx.results
    spec = quant_spec(cfg)
    check_quant(loaded.model, spec, cfg.calib is not None)
    batches = None
    if cfg.calib is not None and needs_calibration(spec.method, spec.act is not None and spec.act.static):
        with Timer(res.timings, "calib_data"):
            batches = build_calib_batches(cfg, loaded.tokenizer)
        n = sum(len(b) for b in batches)
        ctx.console.print(f"calibration: {n} samples x {cfg.calib.seq_len} tokens ({cfg.calib.preproc}, "
                          f"{len(batches)} batch{'es' if len(batches) != 1 else ''})")
    res.quant = {"method": spec.method, "weight": cfg.quant.weight.model_dump(),
                 "act": cfg.quant.act.model_dump() if cfg.quant.act else None, "special": spec.special,
                 "quant_out": spec.quant_out, "calib_samples": sum(len(b) for b in batches) if batches else 0}
    save_root = Path(cfg.save.save_path) if cfg.save.save_path else ctx.run_dir / "models"

    with Timer(res.timings, "quant_transform"):
        state = transform_model(loaded.model, spec, batches, loaded.device)
    ctx.save()
    if "transformed" in cfg.positions():
        evaluate_position(ctx, "transformed", loaded)
    if cfg.save.save_trans:
        with Timer(res.timings, "save_transformed"):
            res.models["transformed"] = str(save_model(loaded.model, loaded.tokenizer, save_root / "transformed"))
        ctx.console.print(f"saved transformed model → {res.models['transformed']}")
        ctx.save()

    with Timer(res.timings, "quant_fake"):
        fake_quantize_model(loaded.model, spec, batches, loaded.device, state)
    if state.losses:
        res.quant["gptq_error_sum"] = sum(state.losses.values())
    ctx.save()
    if "fake_quant" in cfg.positions():
        evaluate_position(ctx, "fake_quant", loaded)
    if cfg.save.save_fake:
        with Timer(res.timings, "save_fake_quant"):
            res.models["fake_quant"] = str(save_model(loaded.model, loaded.tokenizer, save_root / "fake_quant"))
        ctx.console.print(f"saved fake-quantized model → {res.models['fake_quant']}"
                          + (" (weights only: activation quantization is applied at run time, not saved)"
                             if spec.act is not None else ""))
        ctx.save()
    if spec.special.get("save_scale") or spec.special.get("save_clip"):
        import torch

        save_root.mkdir(parents=True, exist_ok=True)
        if spec.special.get("save_scale"):
            torch.save(state.scales, save_root / "scales.pt")
        if spec.special.get("save_clip"):
            torch.save(state.clips, save_root / "clips.pt")


def quant_spec(cfg: RunConfig) -> Any:
    """The quant section as the plain spec the quantizer takes."""
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec
    from accbench.quant.spec import QuantSpec

    q = cfg.quant
    if q.weight.int_range is not None:
        raise AccbenchError("quant.weight.int_range is an llmc option accbench does not support yet",
                            "remove it; the integer range follows from bit and symmetric")
    try:
        w = WeightQuantSpec(q.weight.bit, q.weight.symmetric, q.weight.granularity, q.weight.group_size,
                            q.weight.calib_algo)
        a = ActQuantSpec(q.act.bit, q.act.symmetric, q.act.granularity, q.act.static) if q.act else None
    except ValueError as exc:
        raise AccbenchError(f"quant section: {exc}", "see docs/quantization.md for the valid settings") from None
    clip_tokens = cfg.calib.seq_len if cfg.calib is not None else 512
    return QuantSpec(q.method, w, a, q.special_with_defaults(), q.quant_out, clip_tokens)


def build_calib_batches(cfg: RunConfig, tok: Any) -> list:
    """Calibration token batches from the calib section (llmc's preprocessing and grouping)."""
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts

    c = cfg.calib
    texts = load_texts(c.name, c.path, c.download, c.text_column, c.split, builtin_split="calib")
    return calib_batches(calib_samples(texts, tok, c.preproc, c.n_samples, c.seq_len, c.seed), c.bs)


def precheck_quant(cfg: RunConfig) -> None:
    """Check the quant section against the model's shapes (from config.json, no weights) before loading."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from accbench.models import resolve_model_path
    from accbench.quant.runner import check_quant

    spec = quant_spec(cfg)
    try:
        mcfg = AutoConfig.from_pretrained(resolve_model_path(cfg.model.path),
                                          trust_remote_code=cfg.model.trust_remote_code)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return  # load_model reports an unloadable model with its own message
    check_quant(meta, spec, cfg.calib is not None)


def run_training_stage(ctx: RunContext, loaded: Any) -> None:
    """Train the baseline and every variant the same way; evaluate the original and each checkpoint."""
    raise AccbenchError("training (the train section) is not implemented in this version yet",
                        "remove the train section")


def run_opencompass_stage(ctx: RunContext) -> None:
    """Evaluate the saved models with the user's OpenCompass config and read its summary back."""
    raise AccbenchError("the opencompass section is not implemented in this version yet",
                        "remove the opencompass section")


def run_compare_stage(ctx: RunContext) -> None:
    """Compare every position/variant with the baseline, evaluate gates, write the reports."""
    return None


def _load(cfg: RunConfig) -> Any:
    from accbench.models import load_model

    m = cfg.model
    placement = "offload" if any(e.inference_per_block for e in cfg.eval) else m.placement
    if cfg.runner.num_gpus > 1 and placement == "single":
        placement = "device_map"
    log.info("loading model %s (%s, %s)", m.path, m.torch_dtype, placement)
    return load_model(m.path, m.torch_dtype, m.trust_remote_code, m.tokenizer_path, m.device, placement,
                      cfg.runner.num_gpus, m.attn_implementation, m.tokenizer_mode == "fast")


def prepare_eval_data(e: EvalCfg, tokenizer: Any) -> EvalData:
    from accbench.data.text import load_texts, ppl_token_stream, recipe_description

    texts = load_texts(e.name, e.path, e.download, e.text_column, e.split)
    stream = ppl_token_stream(e.name, texts, tokenizer, e.seq_len)
    return EvalData(e, e.name, stream, recipe_description(e.name))


def evaluate_position(ctx: RunContext, position: str, loaded: Any) -> None:
    """Perplexity on every eval dataset that lists this position; saved as soon as each number exists."""
    from accbench.evaluate.perplexity import perplexity

    for ev in ctx.evals:
        if position not in ev.cfg.eval_pos:
            continue
        if any(p.position == position and p.dataset == ev.name and p.seq_len == ev.cfg.seq_len
               for p in ctx.results.ppl):
            log.info("resume: ppl %s/%s already computed", position, ev.name)
            continue
        with Timer(ctx.results.timings, f"ppl_{position}"):
            res = perplexity(loaded.model, ev.stream, ev.cfg.seq_len, ev.cfg.bs, loaded.device,
                             max_windows=ev.cfg.num_samples, desc=f"ppl {position} {ev.name}")
        ctx.results.ppl.append(PplEntry(position=position, dataset=ev.name, ppl=res.ppl, seq_len=res.seq_len,
                                        windows=res.windows, tokens=res.tokens, recipe=ev.recipe,
                                        window_losses=res.window_losses))
        log.info("ppl %s %s = %.4f (%d windows)", position, ev.name, res.ppl, res.windows)
        ctx.console.print(f"[bold]{position}[/] {ev.name}: ppl = {res.ppl:.4f}  ({res.windows} windows x {res.seq_len})")
        ctx.save()
    run_tasks(ctx, position, loaded)


def run_tasks(ctx: RunContext, position: str, loaded: Any) -> None:
    """Downstream tasks (the `tasks` section) on the model as it is at this position."""
    if ctx.cfg.tasks:
        raise AccbenchError("downstream tasks (the tasks section) are not implemented in this version yet",
                            "remove the tasks section")
