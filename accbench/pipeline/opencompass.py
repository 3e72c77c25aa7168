"""Stage: evaluate the saved models with the user's OpenCompass config and read its summary back.

`prepare_opencompass` runs in preflight, before the model loads (reading the user's config takes
OpenCompass's interpreter ~15 s, so it is done once); `run_opencompass` runs after the models are saved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from accbench.config import OpenCompassCfg, SaveCfg
from accbench.errors import AccbenchError
from accbench.pipeline.records import OpenCompassResult, Record, timed

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.integrations.opencompass import OpenCompassEnv, ProbedConfig

log = logging.getLogger("accbench")


@dataclass
class OpenCompassReady:
    """What preflight learned about the opencompass section: the config file, the environment, its models."""

    cfg_path: Path
    env: "OpenCompassEnv"
    probed: "ProbedConfig"


def check_opencompass(occ: OpenCompassCfg, save: SaveCfg) -> "OpenCompassEnv":
    """The checks that need neither a model nor OpenCompass's interpreter to read the config: the config file,
    the save flags the positions need, the OpenCompass install. Returns the environment."""
    from accbench.integrations import opencompass as oc

    if not Path(occ.cfg_path).expanduser().is_file():
        raise AccbenchError(f"opencompass.cfg_path: {occ.cfg_path} not found",
                            "point it to an OpenCompass config (.py), see docs/opencompass.md for examples")
    needs = {"transformed": ("save_trans", save.save_trans), "fake_quant": ("save_fake", save.save_fake)}
    unsaved = [f"{p} (needs save.{needs[p][0]}: true)" for p in occ.eval_pos or [] if p in needs and not needs[p][1]]
    if unsaved:
        raise AccbenchError(f"opencompass.eval_pos lists models this run does not save: {', '.join(unsaved)}",
                            "set the save flag or remove the position from opencompass.eval_pos")
    return oc.find_env(occ.python)


def prepare_opencompass(occ: OpenCompassCfg, save: SaveCfg, run_dir: Path) -> OpenCompassReady:
    """Everything about the opencompass section that can fail before a model loads: check_opencompass, then
    the user's config read by OpenCompass (its model entries), the GPUs."""
    from accbench.integrations import opencompass as oc

    env = check_opencompass(occ, save)
    cfg_path = Path(occ.cfg_path).expanduser()
    oc_dir = (run_dir / "opencompass").resolve()
    oc_dir.mkdir(parents=True, exist_ok=True)
    probed = oc.probe_config(env, cfg_path.resolve(), oc_dir, (run_dir / "logs" / "opencompass.log").resolve(), oc_dir)
    oc.check_model_entries(probed.models, str(cfg_path))
    oc.check_gpus(occ.num_gpus, occ.max_num_workers)
    return OpenCompassReady(cfg_path.resolve(), env, probed)


def run_opencompass(occ: OpenCompassCfg, ready: OpenCompassReady, models: dict[str, str], evaluated: list[str],
                    earlier_output: dict[str, str], run_dir: Path, resume: bool, record: Record,
                    console: "Console") -> None:
    """Run OpenCompass on the saved `models` (position -> folder) and hand back its scores."""
    from accbench.integrations import opencompass as oc

    oc_dir = (run_dir / "opencompass").resolve()
    work_dir = Path(occ.output_path).expanduser().resolve() if occ.output_path else oc_dir
    log_path = (run_dir / "logs" / "opencompass.log").resolve()
    paths = _opencompass_models(models, occ.eval_pos, "pretrain" in evaluated, oc_dir)
    entries, abbr_to_position = oc.build_models(ready.probed.models, paths, occ.num_gpus, str(ready.cfg_path))
    queue_note = oc.check_gpus(occ.num_gpus, occ.max_num_workers)
    if queue_note:
        console.print(f"[yellow]{queue_note}[/]")
    generated = oc.write_generated_config(oc_dir / oc.GENERATED_CONFIG, ready.cfg_path, entries,
                                          oc.runner_settings(ready.probed.infer, occ.max_num_workers))
    console.print(f"OpenCompass: {len(entries)} model(s) x {ready.probed.n_datasets} dataset(s) "
                  f"({', '.join(abbr_to_position)}); log: {log_path}")
    log.info("opencompass: %s -> %s (work dir %s)", ready.cfg_path, generated, work_dir)
    started = time.time()
    with timed(record, "opencompass"):
        earlier = Path(earlier_output.get("experiment_dir", "")).name or None
        oc.run_opencompass(ready.env, generated, work_dir, occ.max_num_workers, resume, log_path, oc_dir, Path.cwd(),
                           earlier)
    summary = oc.find_summary(work_dir, started, log_path)
    scores = oc.parse_summary_csv(summary, abbr_to_position)
    record(OpenCompassResult([asdict(s) for s in scores], {
        "summary_csv": str(summary), "summary_txt": str(summary.with_suffix(".txt")),
        "experiment_dir": str(summary.parent.parent), "work_dir": str(work_dir), "log": str(log_path),
        "config": str(generated)}))
    console.print(oc.scores_table(scores))
    missing = [f"{s.position or s.abbr}/{s.dataset}" for s in scores if s.score is None]
    if missing:
        console.print(f"[yellow]OpenCompass produced no score for {', '.join(missing)}: reported as missing; "
                      f"its task logs are in {summary.parent.parent / 'logs'}[/]")
    console.print(f"OpenCompass summary: {summary}")


def _opencompass_models(models: dict[str, str], eval_pos: list[str] | None, pretrain_evaluated: bool,
                        oc_dir: Path) -> dict[str, str]:
    """position -> model folder for OpenCompass: the original (when evaluated) and every saved model."""
    from accbench.integrations.hf_v4_view import v4_compatible_model_dir

    if eval_pos is not None:
        absent = [p for p in eval_pos if p not in models]
        if absent:
            raise AccbenchError(f"opencompass.eval_pos lists {absent} but this run has no model for "
                                f"{'it' if len(absent) == 1 else 'them'} (it has: {', '.join(models) or 'none'})",
                                "save the model (save.save_trans: true for transformed, save.save_fake: true "
                                "for fake_quant) or remove it from opencompass.eval_pos")
        wanted = list(eval_pos)
    else:
        wanted = [p for p in models if p != "pretrain" or pretrain_evaluated]
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
