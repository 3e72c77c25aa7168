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
    if cfg.opencompass is not None:
        check_opencompass_ready(ctx)  # a wrong OpenCompass setup fails now, not after the quantization

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
    raise AccbenchError("quantization (the quant section) is not implemented in this version yet",
                        "remove the quant section and evaluate eval_pos: [pretrain]")


def run_training_stage(ctx: RunContext, loaded: Any) -> None:
    """Train the baseline and every variant the same way; evaluate the original and each checkpoint."""
    raise AccbenchError("training (the train section) is not implemented in this version yet",
                        "remove the train section")


def run_opencompass_stage(ctx: RunContext) -> None:
    """Evaluate the saved models with the user's OpenCompass config and read its summary back."""
    from dataclasses import asdict

    from accbench.backends import opencompass as oc

    occ = ctx.cfg.opencompass
    assert occ is not None
    cfg_path, env, probed = check_opencompass_ready(ctx)
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
    from accbench.backends import opencompass as oc

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
    from accbench.backends.hf_v4_view import v4_compatible_model_dir

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
