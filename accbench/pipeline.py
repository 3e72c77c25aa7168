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
from typing import Any, Callable

from accbench.config import EvalCfg, RunConfig, dump_config
from accbench.errors import AccbenchError
from accbench.results import FidelityEntry, PplEntry, Results, Timer, collect_versions

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
    store: Any = None  # the per-sample store (accbench.store.SampleStore), opened by the first task
    baseline: str = "pretrain"  # the position (or variant) whose output distributions fidelity compares against

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
    ctx = RunContext(cfg, run_dir, results, console, resume, baseline=baseline_position(cfg))
    ctx.save()
    if cfg.opencompass is not None:
        oc_ready = check_opencompass_ready(ctx)  # a wrong OpenCompass setup fails now, not after the quantization

    if cfg.tasks:  # bad task data or an unknown lm-eval task fails now, not after the model has loaded
        from accbench.evaluate.tasks import check_tasks

        check_tasks(cfg.tasks)
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
        run_opencompass_stage(ctx, oc_ready)
    run_compare_stage(ctx)
    results.status = "complete"
    ctx.save()
    return results


def run_quant_stage(ctx: RunContext, loaded: Any) -> None:
    """Calibrate and quantize block by block; evaluate `transformed` and `fake_quant`; save as asked."""
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
        _save_position(ctx, loaded, "transformed", save_root, "transformed model")

    with Timer(res.timings, "quant_fake"):
        fake_quantize_model(loaded.model, spec, batches, loaded.device, state)
    if state.losses:
        res.quant["gptq_error_sum"] = sum(state.losses.values())
    ctx.save()
    if "fake_quant" in cfg.positions():
        evaluate_position(ctx, "fake_quant", loaded)
    if cfg.save.save_fake:
        _save_position(ctx, loaded, "fake_quant", save_root, "fake-quantized model"
                       + (" (weights only: activation quantization is applied at run time, not saved)"
                          if spec.act is not None else ""))
    if spec.special.get("save_scale") or spec.special.get("save_clip"):
        import torch

        save_root.mkdir(parents=True, exist_ok=True)
        if spec.special.get("save_scale"):
            torch.save(state.scales, save_root / "scales.pt")
        if spec.special.get("save_clip"):
            torch.save(state.clips, save_root / "clips.pt")


def _save_position(ctx: RunContext, loaded: Any, position: str, root: Path, what: str) -> None:
    """Save the model as it is at `position` under root/position and record where it went."""
    from accbench.models import save_model

    with Timer(ctx.results.timings, f"save_{position}"):
        ctx.results.models[position] = str(save_model(loaded.model, loaded.tokenizer, root / position))
    ctx.console.print(f"saved {what} → {ctx.results.models[position]}")
    ctx.save()


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
    """Train the baseline and every variant the same way; evaluate the original and each checkpoint.

    The original model is the position `pretrain`; each variant's checkpoint is the position named after
    the variant. Every eval block and task applies to all of them (eval_pos is ignored in training runs).
    Each variant trains in its own process (log: logs/train_<variant>.log); the baseline trains first.
    """
    from accbench.data.text import load_texts
    from accbench.train.clm import build_train_blocks
    from accbench.train.variants import baseline_trainer_args, check_trainer_args, variant_trainer_args

    t, run_dir = ctx.cfg.train, ctx.run_dir
    baseline = _training_baseline(ctx.cfg)
    order = [baseline] + [n for n in t.variants if n != baseline]
    base_args = baseline_trainer_args(t.seed, t.per_device_train_batch_size, t.gradient_accumulation_steps,
                                      t.num_train_epochs, t.max_steps, t.learning_rate, t.trainer_args)
    check_trainer_args(t.trainer_args, "train.trainer_args")
    variant_args = {}
    for name in order:
        v = t.variants[name]
        variant_args[name] = variant_trainer_args(base_args, v.torch_compile, v.bf16, v.fp16, v.optim,
                                                  v.gradient_checkpointing, v.trainer_args)
        check_trainer_args(v.trainer_args, f"train.variants.{name}.trainer_args")
        check_trainer_args(variant_args[name], f"train.variants.{name}")

    with Timer(ctx.results.timings, "train_data"):  # before any evaluation: data problems surface first
        d = t.dataset
        texts = load_texts(d.name, d.path, d.download, d.text_column, d.split, builtin_split="train")
        max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
        if max_pos and t.block_size > max_pos:
            raise AccbenchError(f"train.block_size {t.block_size} exceeds the model's max_position_embeddings "
                                f"{max_pos}", f"set train.block_size to at most {max_pos}")
        data_dir = run_dir / "train_data"
        data_dir.mkdir(exist_ok=True)
        _save_train_data(build_train_blocks(texts, loaded.tokenizer, t.block_size), texts, data_dir)

    evaluate_position(ctx, "pretrain", loaded)
    _release_device_memory(loaded)  # the variants' processes need the accelerator, not our copy of the model

    for name in order:
        entry = _train_variant(ctx, loaded, name, variant_args[name], data_dir, baseline)
        ckpt = entry.checkpoint
        ctx.results.models[name] = ckpt
        ctx.save()
        model_v = _load_checkpoint(ctx.cfg, ckpt, loaded.path, name)
        evaluate_position(ctx, name, model_v)
        del model_v
        if not t.save_checkpoints:
            shutil.rmtree(ckpt, ignore_errors=True)
            entry.checkpoint = None
            ctx.results.models.pop(name, None)
            ctx.save()


def _training_baseline(cfg: RunConfig) -> str:
    """compare.baseline when it names a variant, else the first variant."""
    names = list(cfg.train.variants)
    base = cfg.compare.baseline
    if base is None or base == "pretrain":
        return names[0]
    if base not in names:
        raise AccbenchError(f"compare.baseline '{base}' is not a training variant (variants: {', '.join(names)})",
                            "set compare.baseline to one of train.variants, usually the plain PyTorch one")
    return base


def _release_device_memory(loaded: Any) -> None:
    import torch

    if str(loaded.device).startswith("cuda") and loaded.placement == "single":
        loaded.model.to("cpu")
        torch.cuda.empty_cache()


def _save_train_data(blocks: Any, texts: list[str], data_dir: Path) -> None:
    """blocks.pt for built-in variants; train.json (JSON lines {"text"}) for a command's {train_file}."""
    import json

    import torch

    torch.save(blocks, data_dir / "blocks.pt")
    with open(data_dir / "train.json", "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")


def _train_variant(ctx: RunContext, loaded: Any, name: str, trainer_args: dict, data_dir: Path,
                   baseline: str) -> Any:
    """Train one variant in its own process (or reuse it on --resume) and record its TrainEntry."""
    from accbench.results import TrainEntry
    from accbench.train.clm import TrainSpec
    from accbench.train.launch import child_env, run_logged, worker_command
    from accbench.train.variants import fill_placeholders, read_trainer_results

    t, m = ctx.cfg.train, ctx.cfg.model
    v = t.variants[name]
    out = ctx.run_dir / "models" / name
    log_path = ctx.run_dir / "logs" / f"train_{name}.log"
    done = next((e for e in ctx.results.train if e.variant == name), None)
    if done is not None and ctx.resume and (out / "config.json").is_file():
        log.info("resume: variant %s already trained", name)
        return done
    if out.exists():  # a partial run of this variant: start it clean
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ctx.console.print(f"training [bold]{name}[/] → {log_path}")
    t0 = time.perf_counter()
    if v.command is not None:
        cmd = fill_placeholders(v.command, {"model": loaded.path, "output_dir": str(out), "seed": str(t.seed),
                                            "train_file": str(data_dir / "train.json")})
        run_logged(name, cmd, log_path, child_env(v.env))
    else:
        spec = TrainSpec(loaded.path, str(data_dir / "blocks.pt"), str(out), trainer_args, m.torch_dtype,
                         m.trust_remote_code, v.attn_implementation or m.attn_implementation, m.tokenizer_path)
        spec_path = spec.save(ctx.run_dir / "train_data" / f"spec_{name}.json")
        argv = worker_command(spec_path, t.launcher.type, t.launcher.nproc_per_node, t.launcher.extra_args)
        run_logged(name, argv, log_path, child_env(v.env))
    wall = time.perf_counter() - t0
    ctx.results.timings[f"train_{name}"] = round(wall, 3)
    res = read_trainer_results(out, name)
    base = next((e for e in ctx.results.train if e.variant == baseline), None)
    sps = res.train_steps_per_second
    speedup = 1.0 if name == baseline else (
        sps / base.train_steps_per_second if base and sps and base.train_steps_per_second else None)
    entry = TrainEntry(variant=name, train_loss=res.train_loss, train_runtime=res.train_runtime,
                       train_steps_per_second=sps, checkpoint=str(out), baseline=name == baseline,
                       speedup=speedup, global_step=res.global_step, wall_time=round(wall, 3), log=str(log_path),
                       kind="command" if v.command is not None else "builtin", loss_curve=res.loss_curve)
    ctx.results.train = [e for e in ctx.results.train if e.variant != name] + [entry]
    log.info("trained %s: loss %.6f, %s steps/s, %.1f s", name, res.train_loss, sps, wall)
    ctx.console.print(f"[bold]{name}[/]: train loss = {res.train_loss:.6f}, steps/s = {sps}, "
                      f"runtime = {res.train_runtime} s")
    return entry


def _load_checkpoint(cfg: RunConfig, ckpt: str, original: str, variant: str) -> Any:
    """Load a variant's checkpoint for evaluation; its own tokenizer if it saved one, else the original's."""
    from accbench.models import load_model

    p = Path(ckpt)
    if not (p / "config.json").is_file():
        raise AccbenchError(f"training variant '{variant}' left no model in {p} (no config.json)",
                            "the training must save the final model to its output_dir (trainer.save_model())")
    m = cfg.model
    has_tok = (p / "tokenizer_config.json").is_file() or (p / "tokenizer.json").is_file()
    tok = m.tokenizer_path or (None if has_tok else original)
    return load_model(ckpt, m.torch_dtype, m.trust_remote_code, tok, m.device, m.placement, cfg.runner.num_gpus,
                      m.attn_implementation, m.tokenizer_mode == "fast")


def run_opencompass_stage(ctx: RunContext, ready: tuple[Path, Any, Any]) -> None:
    """Evaluate the saved models with the user's OpenCompass config and read its summary back.

    `ready` is what check_opencompass_ready returned before the model loaded (config path, environment, the
    probed config): reading the user's config takes OpenCompass's interpreter ~15 s, so it is done once."""
    from dataclasses import asdict

    from accbench.integrations import opencompass as oc

    occ = ctx.cfg.opencompass
    assert occ is not None
    cfg_path, env, probed = ready
    oc_dir = (ctx.run_dir / "opencompass").resolve()
    work_dir = Path(occ.output_path).expanduser().resolve() if occ.output_path else oc_dir
    log_path = (ctx.run_dir / "logs" / "opencompass.log").resolve()
    paths = _opencompass_models(ctx, occ.eval_pos, oc_dir)
    entries, abbr_to_position = oc.build_models(probed.models, paths, occ.num_gpus, str(cfg_path))
    queue_note = oc.check_gpus(occ.num_gpus, occ.max_num_workers)
    if queue_note:
        ctx.console.print(f"[yellow]{queue_note}[/]")
    generated = oc.write_generated_config(oc_dir / oc.GENERATED_CONFIG, cfg_path, entries,
                                          oc.runner_settings(probed.infer, occ.max_num_workers))
    ctx.console.print(f"OpenCompass: {len(entries)} model(s) x {probed.n_datasets} dataset(s) "
                      f"({', '.join(abbr_to_position)}); log: {log_path}")
    log.info("opencompass: %s -> %s (work dir %s)", cfg_path, generated, work_dir)
    started = time.time()
    with Timer(ctx.results.timings, "opencompass"):
        earlier = Path(ctx.results.opencompass_output.get("experiment_dir", "")).name or None
        oc.run_opencompass(env, generated, work_dir, occ.max_num_workers, ctx.resume, log_path, oc_dir, Path.cwd(),
                           earlier)
    summary = oc.find_summary(work_dir, started, log_path)
    scores = oc.parse_summary_csv(summary, abbr_to_position)
    ctx.results.opencompass = [asdict(s) for s in scores]
    ctx.results.opencompass_output = {"summary_csv": str(summary), "summary_txt": str(summary.with_suffix(".txt")),
                                      "experiment_dir": str(summary.parent.parent), "work_dir": str(work_dir),
                                      "log": str(log_path), "config": str(generated)}
    ctx.save()
    ctx.console.print(oc.scores_table(scores))
    missing = [f"{s.position or s.abbr}/{s.dataset}" for s in scores if s.score is None]
    if missing:
        ctx.console.print(f"[yellow]OpenCompass produced no score for {', '.join(missing)}: reported as missing; "
                          f"its task logs are in {summary.parent.parent / 'logs'}[/]")
    ctx.console.print(f"OpenCompass summary: {summary}")


def check_opencompass_ready(ctx: RunContext) -> tuple[Path, Any, Any]:
    """Everything about the opencompass section that can fail before a model loads: the config file, the
    OpenCompass environment, the config's model entries, the GPUs and the positions asked for."""
    from accbench.integrations import opencompass as oc

    occ = ctx.cfg.opencompass
    assert occ is not None
    cfg_path = Path(occ.cfg_path).expanduser()
    if not cfg_path.is_file():
        raise AccbenchError(f"opencompass.cfg_path: {occ.cfg_path} not found",
                            "point it to an OpenCompass config (.py), see docs/opencompass.md for examples")
    needs = {"transformed": ("save_trans", ctx.cfg.save.save_trans), "fake_quant": ("save_fake", ctx.cfg.save.save_fake)}
    unsaved = [f"{p} (needs save.{needs[p][0]}: true)" for p in occ.eval_pos or [] if p in needs and not needs[p][1]]
    if unsaved:
        raise AccbenchError(f"opencompass.eval_pos lists models this run does not save: {', '.join(unsaved)}",
                            "set the save flag or remove the position from opencompass.eval_pos")
    oc_dir = (ctx.run_dir / "opencompass").resolve()
    oc_dir.mkdir(parents=True, exist_ok=True)
    env = oc.find_env(occ.python)
    probed = oc.probe_config(env, cfg_path.resolve(), oc_dir, (ctx.run_dir / "logs" / "opencompass.log").resolve(),
                             oc_dir)
    oc.check_model_entries(probed.models, str(cfg_path))
    oc.check_gpus(occ.num_gpus, occ.max_num_workers)
    return cfg_path.resolve(), env, probed


def _opencompass_models(ctx: RunContext, eval_pos: list[str] | None, oc_dir: Path) -> dict[str, str]:
    """position -> model folder for OpenCompass: the original (when evaluated) and every saved model."""
    from accbench.integrations.hf_v4_view import v4_compatible_model_dir

    models = ctx.results.models
    if eval_pos is not None:
        absent = [p for p in eval_pos if p not in models]
        if absent:
            raise AccbenchError(f"opencompass.eval_pos lists {absent} but this run has no model for "
                                f"{'it' if len(absent) == 1 else 'them'} (it has: {', '.join(models) or 'none'})",
                                "save the model (save.save_trans: true for transformed, save.save_fake: true "
                                "for fake_quant) or remove it from opencompass.eval_pos")
        wanted = list(eval_pos)
    else:
        wanted = [p for p in models if p != "pretrain" or "pretrain" in ctx.cfg.positions()]
    if not wanted:
        raise AccbenchError("opencompass: this run has no model to evaluate with OpenCompass",
                            "set save.save_trans: true or save.save_fake: true, or add pretrain to eval_pos")
    paths = {}
    for p in wanted:
        path = Path(models[p]).expanduser()
        if not path.is_dir():
            raise AccbenchError(f"opencompass: the {p} model is not on disk at {path}",
                                "OpenCompass evaluates saved models: check save.save_path and the save flags")
        # OpenCompass runs transformers 4: it gets a view of the folder that 4.x reads as 5.x meant it
        view, changes = v4_compatible_model_dir(path.resolve(), oc_dir / "models" / p)
        if changes:
            log.info("opencompass: %s model seen through %s: %s", p, view, "; ".join(changes))
        paths[p] = str(view)
    return paths


def run_compare_stage(ctx: RunContext) -> None:
    """Compare every position/variant with the baseline, evaluate gates, write the reports."""
    from accbench.compare import run_comparison
    from accbench.report.html import write_reports

    with Timer(ctx.results.timings, "compare"):
        ctx.results.compare = run_comparison(ctx.results, ctx.cfg.compare)
    ctx.save()
    with Timer(ctx.results.timings, "report"):
        write_reports(ctx.results, ctx.run_dir)
    log.info("compare: baseline %s, %d comparisons, gates %s", ctx.results.compare["baseline"],
             len(ctx.results.compare["comparisons"]), "held" if ctx.results.compare["all_held"] else "FAILED")


def baseline_position(cfg: RunConfig) -> str:
    """The reference model: compare.baseline if set, else 'pretrain', or the baseline training variant."""
    if cfg.train is not None:
        return _training_baseline(cfg)
    return cfg.compare.baseline or "pretrain"


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
        if ctx.cfg.train is None and position not in ev.cfg.eval_pos:  # training runs: every block, every model
            continue
        fidelity = _fidelity_hook(ctx, position, ev, loaded)
        have_ppl = any(p.position == position and p.dataset == ev.name and p.seq_len == ev.cfg.seq_len
                       for p in ctx.results.ppl)
        if have_ppl and fidelity is None:
            log.info("resume: ppl %s/%s already computed", position, ev.name)
            continue
        with Timer(ctx.results.timings, f"ppl_{position}"):
            res = perplexity(loaded.model, ev.stream, ev.cfg.seq_len, ev.cfg.bs, loaded.device,
                             max_windows=ev.cfg.num_samples, desc=f"ppl {position} {ev.name}", on_logits=fidelity)
        if not have_ppl:
            ctx.results.ppl.append(PplEntry(position=position, dataset=ev.name, ppl=res.ppl, seq_len=res.seq_len,
                                            windows=res.windows, tokens=res.tokens, recipe=ev.recipe,
                                            window_losses=res.window_losses))
            log.info("ppl %s %s = %.4f (%d windows)", position, ev.name, res.ppl, res.windows)
            ctx.console.print(f"[bold]{position}[/] {ev.name}: ppl = {res.ppl:.4f}  ({res.windows} windows x {res.seq_len})")
        if fidelity is not None:
            _finish_fidelity(ctx, position, ev, fidelity)
        ctx.save()
    run_tasks(ctx, position, loaded)


def _fidelity_hook(ctx: RunContext, position: str, ev: EvalData, loaded: Any) -> Any:
    """The perplexity hook fidelity needs here: record at the baseline, compare elsewhere, or None."""
    from accbench.evaluate.fidelity import DistributionRecorder, FidelityComparer, recording_complete, recording_dir

    top_k = ev.cfg.fidelity_top_k()
    if top_k is None:
        return None
    path = recording_dir(ctx.run_dir, ev.name, ev.cfg.seq_len)
    if position == ctx.baseline:
        if recording_complete(path):
            return None
        n_windows = ev.stream.numel() // ev.cfg.seq_len
        if ev.cfg.num_samples is not None:
            n_windows = min(n_windows, ev.cfg.num_samples)
        return DistributionRecorder(path, n_windows * (ev.cfg.seq_len - 1), top_k,
                                    {"position": position, "dataset": ev.name, "seq_len": ev.cfg.seq_len})
    if any(f.position == position and f.dataset == ev.name and getattr(f, "seq_len", None) == ev.cfg.seq_len
           for f in ctx.results.fidelity):
        return None
    if not recording_complete(path):
        log.warning("fidelity skipped at %s %s: no recording of the baseline %s", position, ev.name, ctx.baseline)
        ctx.console.print(f"[yellow]fidelity skipped at {position} {ev.name}: the baseline '{ctx.baseline}' was "
                          f"not evaluated on it first (add {ctx.baseline} to eval_pos)[/]")
        return None
    return FidelityComparer(path)


def _finish_fidelity(ctx: RunContext, position: str, ev: EvalData, hook: Any) -> None:
    from accbench.evaluate.fidelity import DistributionRecorder

    if isinstance(hook, DistributionRecorder):
        path = hook.finish()
        log.info("fidelity: recorded %s distributions (top %d) to %s", position, hook.meta["top_k"], path)
        return
    e: FidelityEntry = hook.entry(position)
    ctx.results.fidelity.append(e)
    log.info("fidelity %s %s vs %s: %s", position, ev.name, ctx.baseline, e.model_dump_json())
    ctx.console.print(f"[bold]{position}[/] {ev.name}: KL vs {ctx.baseline} = {e.kld_mean:.4g} ± {e.kld_stderr:.2g} "
                      f"(median {e.kld_median:.4g}, p99 {e.kld_p99:.4g}), top-1 agree {e.top1_agreement:.2%}, "
                      f"Δp {e.delta_p_mean:+.4f} (rms {e.delta_p_rms:.4f}), ppl ratio {e.ppl_ratio:.4f}")


def run_tasks(ctx: RunContext, position: str, loaded: Any) -> None:
    """Downstream tasks (the `tasks` section) on the model as it is at this position.

    The tasks' requests are pooled (evaluate/pool.py): answered once per kind across all tasks, behind the
    per-sample store. Each task's result is saved as soon as it is complete; a task that fails does not stop
    the others, and its error is raised once they have finished and been saved."""
    todo = [t for t in ctx.cfg.tasks
            if not any(e.model == position and e.task == t.name for e in ctx.results.tasks)]
    for t in ctx.cfg.tasks:
        if t not in todo:
            log.info("resume: task %s/%s already evaluated", position, t.name)
    if not todo:
        return
    from accbench.evaluate.engine import Engine
    from accbench.evaluate.pool import RequestPool
    from accbench.evaluate.tasks import TaskContext, run_task
    from accbench.results import TaskEntry
    from accbench.store import StoredAnswerer

    task_ctx = TaskContext(loaded.tokenizer, ctx.run_dir, position, lambda j: _load_hf_judge(j, loaded.device))
    fp = _position_fingerprint(ctx, position, loaded)
    workers = _start_workers(ctx, position, loaded)
    engines: dict[str, Any] = {}

    def backend(batch_size: Any) -> Any:
        """What answers a pooled pass: the worker pool, or one engine per batch-size setting (the batch sizes
        an engine finds then serve every task with that setting)."""
        if workers is not None:
            workers.batch_size = batch_size
            return workers
        key = repr(batch_size)
        if key not in engines:
            engines[key] = Engine(loaded.model, loaded.tokenizer, loaded.device, batch_size)
        return engines[key]

    pool = RequestPool(backend)
    by_name = {t.name: t for t in todo}
    stored: dict[str, Any] = {}
    started: dict[str, float] = {}
    errors: list[BaseException] = []

    def task_fn(task: Any) -> Callable[[Any], Any]:
        def fn(client: Any) -> Any:
            started[task.name] = time.perf_counter()
            stored[task.name] = StoredAnswerer(ctx.store, fp, task.name, client)
            return run_task(task, stored[task.name], task_ctx)
        return fn

    def done(name: str, res: Any, error: BaseException | None) -> None:
        key = f"task_{position}_{name}"
        ctx.results.timings[key] = round(ctx.results.timings.get(key, 0.0) + time.perf_counter() - started.get(
            name, time.perf_counter()), 3)
        if error is not None:
            log.error("task %s %s failed: %s", position, name, error)
            errors.append(error)
            return
        task, answerer = by_name[name], stored[name]
        stats = backend(task.batch_size).stats
        extra = dict(res.extra)
        extra.update(batch_sizes=dict(stats.batch_sizes), truncated=answerer.truncated,
                     requests=dict(answerer.computed), reused_from_store=answerer.reused)
        ctx.results.tasks.append(TaskEntry(model=position, task=name, type=res.type, metrics=res.metrics,
                                           n=res.n, stderr=res.stderr, per_sample=res.per_sample, **extra))
        shown = "  ".join(f"{k} = {v:.4f}" for k, v in res.metrics.items() if isinstance(v, (int, float)))
        ctx.console.print(f"[bold]{position}[/] {name}: {shown}  (n={res.n})")
        log.info("task %s %s: %s (n=%d)", position, name, res.metrics, res.n)
        ctx.save()

    for task in todo:
        b = backend(task.batch_size)
        pool.add(task.name, task_fn(task), task.batch_size, getattr(b, "engine", b))
    try:
        with Timer(ctx.results.timings, f"tasks_{position}"):
            pool.run(done)
    finally:
        if workers is not None:
            workers.close()
    log.info("tasks %s: %d pooled rounds, passes %s", position, pool.stats.rounds, pool.stats.passes)
    order = {t.name: i for i, t in enumerate(ctx.cfg.tasks)}  # this position's entries in config order
    mine = sorted((e for e in ctx.results.tasks if e.model == position), key=lambda e: order.get(e.task, 1 << 30))
    it = iter(mine)
    ctx.results.tasks = [next(it) if e.model == position else e for e in ctx.results.tasks]
    ctx.save()
    if errors:
        raise errors[0]


def _position_fingerprint(ctx: RunContext, position: str, loaded: Any) -> str:
    """The model's identity at this position in the per-sample store (opened here if it is not yet)."""
    from accbench.store import SampleStore, model_fingerprint

    if ctx.store is None:
        ctx.store = SampleStore(ctx.run_dir)
    m = ctx.cfg.model
    transform = ctx.cfg.quant.model_dump(mode="json") if ctx.cfg.quant is not None and position != "pretrain" else None
    fp = model_fingerprint(loaded.path, position, m.torch_dtype, transform)
    ctx.store.set_model(position, fp)
    return fp


def _load_hf_judge(judge_cfg: Any, device: str) -> Any:
    """A local judge model for MT-bench, answering through our own engine."""
    from accbench.evaluate.engine import Engine
    from accbench.evaluate.judge import HFJudge
    from accbench.models import load_model

    judge = load_model(judge_cfg.path, device=device)
    engine = Engine(judge.model, judge.tokenizer, judge.device)
    return HFJudge(engine.generate, judge.tokenizer, judge_cfg.path, judge_cfg.max_tokens)


def _start_workers(ctx: RunContext, position: str, loaded: Any) -> Any:
    """Model replicas for data-parallel evaluation (runner section), or None for in-process evaluation."""
    r = ctx.cfg.runner
    if r.type == "local" and r.max_num_workers == 1:
        return None
    from accbench.evaluate.engine import Engine
    from accbench.runners.worker import ReplicaSpec

    path = loaded.path
    if position != "pretrain":  # the replicas load this position's weights from disk
        from accbench.models import save_model

        path = str(save_model(loaded.model, loaded.tokenizer, ctx.run_dir / "models" / ".workers" / position))
    m = ctx.cfg.model
    spec = ReplicaSpec(path, m.torch_dtype, "cuda" if str(loaded.device).startswith("cuda") else "cpu",
                       trust_remote_code=m.trust_remote_code, tokenizer_path=m.tokenizer_path if path == loaded.path else None)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device)
    log.info("starting %d %s workers for %s", r.max_num_workers, r.type, position)
    if r.type == "ray":
        from accbench.runners.ray import RayWorkerPool

        return RayWorkerPool(spec, r.max_num_workers, r.num_gpus, r.address, ctx.run_dir / "logs", engine=engine)
    from accbench.runners.local import LocalWorkerPool, plan_replicas

    replicas = plan_replicas(spec, r.max_num_workers, r.num_gpus, ctx.run_dir / "logs")
    return LocalWorkerPool(replicas, r.max_num_workers, engine=engine)


def rescore_run(run_dir: Path, console: Any) -> Results:
    """Recompute every task's metrics from the responses in the run's per-sample store, without a model."""
    from accbench.config import load_config
    from accbench.evaluate.tasks import TaskContext, run_task
    from accbench.results import TaskEntry
    from accbench.store import STORE_FILE, SampleStore, StoredAnswerer

    run_dir = Path(run_dir)
    for need in ("config.yaml", "results.json", STORE_FILE):
        if not (run_dir / need).is_file():
            raise AccbenchError(f"rescore: {run_dir / need} not found", "pass the directory of an accbench run")
    cfg = load_config(run_dir / "config.yaml")
    results = Results.load(run_dir)
    store = SampleStore(run_dir)
    models = store.models()
    for i, entry in enumerate(results.tasks):
        task = next((t for t in cfg.tasks if t.name == entry.task), None)
        if task is None or entry.model not in models:
            continue
        task_ctx = TaskContext(_rescore_tokenizer(results, task), run_dir, entry.model)
        res = run_task(task, StoredAnswerer(store, models[entry.model], task.name, None), task_ctx)
        keep = {k: v for k, v in entry.model_dump().items()
                if k not in ("metrics", "stderr", "n", "per_sample", "type", "model", "task")}
        keep.update({k: v for k, v in res.extra.items()})
        results.tasks[i] = TaskEntry(model=entry.model, task=entry.task, type=res.type, metrics=res.metrics,
                                     n=res.n, stderr=res.stderr, per_sample=res.per_sample, **keep)
        shown = "  ".join(f"{k} = {v:.4f}" for k, v in res.metrics.items() if isinstance(v, (int, float)))
        console.print(f"[bold]{entry.model}[/] {entry.task}: {shown}  (n={res.n}, rescored)")
    store.close()
    results.save(run_dir)
    return results


def _rescore_tokenizer(results: Results, task: Any) -> Any:
    """Chat-templated tasks need the tokenizer (never the model) to rebuild their prompts."""
    if task.type not in ("mtbench",) and not getattr(task, "chat_template", False):
        return None
    from accbench.models import load_tokenizer

    return load_tokenizer(results.models.get("pretrain", ""))
