"""Preflight: every check that needs no weights, shared by `accbench validate` and `accbench run`.

The config has been parsed and validated (config.py) when this runs. Here: the quant settings against the
method's options and the model's shapes (from config.json, on the meta device), the calibration
preprocessing name, the Trainer arguments and optimizer of every training variant, the training block size
against the model's window, the device, the model folder and every perplexity window against its positions,
local eval/calib files readable, every task's data and lm-eval task name, the OpenCompass config file, save flags
and install. All problems are collected and reported together; `run` then also has OpenCompass read the
user's config (slow: OpenCompass's own interpreter), still before the model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from accbench.config import ModelCfg, RunConfig
from accbench.errors import AccbenchError
from accbench.pipeline.opencompass import OpenCompassReady, check_opencompass, prepare_opencompass

log = logging.getLogger("accbench")


class PreflightError(AccbenchError):
    """Several problems found before the model loads, reported together."""

    def __init__(self, problems: list[AccbenchError]):
        self.problems = problems
        lines = "\n".join("  - " + str(p).replace("\n", "\n    ") for p in problems)
        super().__init__(f"{len(problems)} problems found before loading the model:\n{lines}")


@dataclass
class Checked:
    """What preflight prepared for the run: the OpenCompass setup (None without an opencompass section)."""

    opencompass: OpenCompassReady | None = None


def find_problems(cfg: RunConfig) -> list[AccbenchError]:
    """Every problem of `cfg` that shows without weights. A built-in model is checked from its definition
    (BUILTIN_MODELS), never built here, so `validate` and `run` always give the same answer."""
    model_config = _model_config(cfg.model) if (cfg.quant or cfg.sparse or cfg.train) else None
    checks: list[Callable[[], None]] = [lambda: _check_inputs(cfg)]
    checks += [lambda d=d: _check_text_file(d) for d in [*cfg.eval, *([cfg.calib] if cfg.calib else [])]]
    if cfg.quant is not None:
        checks += [lambda: _check_quant(cfg, model_config), lambda: _check_calib(cfg)]
    if cfg.sparse is not None:
        checks += [lambda: _check_sparse(cfg, model_config), lambda: _check_calib(cfg)]
    if cfg.train is not None:
        checks += [lambda: _check_train(cfg, model_config)]
    checks += [lambda t=t: _check_task(t) for t in cfg.tasks]
    if any((t.engine or cfg.runner.engine) == "vllm" for t in cfg.tasks):
        from accbench.evaluate.backends.vllm import check_vllm_installed

        checks += [check_vllm_installed]
    if cfg.runner.type == "ray" and cfg.tasks:
        from accbench.runners.ray import check_ray_installed

        checks += [check_ray_installed]
    if cfg.opencompass is not None:
        checks += [lambda: check_opencompass(cfg.opencompass, cfg.save)]
    if cfg.train is None:
        checks += [lambda: _check_baseline(cfg)]
    problems = []
    for check in checks:
        try:
            check()
        except AccbenchError as exc:
            problems.append(exc)
    return problems


def check_run(cfg: RunConfig, run_dir: Path) -> Checked:
    """Raise every problem `find_problems` sees (one error listing them all); then prepare OpenCompass."""
    problems = find_problems(cfg)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PreflightError(problems)
    if cfg.opencompass is None:
        return Checked()
    return Checked(prepare_opencompass(cfg.opencompass, cfg.save, run_dir))


def _model_config(m: ModelCfg) -> Any:
    """The model's transformers config (config.json only; a built-in model's from its definition), or None when
    it cannot be read without loading (a hub id, an unreadable folder: loading the model reports those)."""
    from accbench.models import BUILTIN_PREFIX, resolve_model_path

    if m.path.startswith(BUILTIN_PREFIX):
        from accbench.builtin import builtin_config

        return builtin_config(m.path[len(BUILTIN_PREFIX):])
    try:
        path = resolve_model_path(m.path)
    except AccbenchError:
        return None
    if not Path(path).is_dir():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None


def _check_inputs(cfg: RunConfig) -> None:
    """The device, the model folder (a tokenizer, complete safetensors files) and every perplexity window
    against the model's positions (checks.py)."""
    from accbench.checks import check_builtin_window_lengths, check_device, check_model_dir, check_window_lengths
    from accbench.models import BUILTIN_PREFIX, resolve_model_path

    m = cfg.model
    check_device(m.device)
    check_model_dir(m.path, m.tokenizer_path)
    if m.path.startswith(BUILTIN_PREFIX):  # from its definition: validate never builds it, run must agree
        check_builtin_window_lengths(m.path, cfg.window_lengths())
        return
    try:
        path = resolve_model_path(m.path)
    except AccbenchError:
        return  # loading the model reports a missing path or hub id
    if Path(path).is_dir():
        check_window_lengths(path, cfg.window_lengths(), m.trust_remote_code)


def _check_text_file(d: Any) -> None:
    """A local data file (eval or calib) is readable text."""
    from accbench.data.text import load_texts

    from accbench.data.chat import CHAT_NAMES, CUSTOM_NAMES

    if d.name in CHAT_NAMES + CUSTOM_NAMES:
        return  # llmc's chat data: _check_calib reads it
    if d.name == "custom_ppl":
        load_texts(d.name, d.path)
        return
    if d.path and not d.download and Path(d.path).expanduser().is_file():
        load_texts(d.name, d.path, False, d.text_column, d.split)


def _check_quant(cfg: RunConfig, model_config: Any) -> None:
    """The quant section as the quantizer takes it, and against the model's shapes (a meta-device model)."""
    from accbench.pipeline.quantize import quant_spec
    from accbench.pipeline.real_quant import check_export
    from accbench.quant.runner import check_quant

    assert cfg.quant is not None
    spec = quant_spec(cfg.quant, cfg.calib, cfg.ignored_layers)
    check_export(spec, cfg.save, cfg.positions())
    if model_config is None:
        return
    meta = _meta_model(cfg.model, model_config)
    if meta is not None:
        check_quant(meta, spec, cfg.calib is not None)


def _meta_model(m: ModelCfg, model_config: Any) -> Any:
    """The model built from its config on the meta device (no weights), or None when it cannot be built."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(model_config, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None  # load_model reports an unloadable model with its own message


def _check_sparse(cfg: RunConfig, model_config: Any) -> None:
    """The sparse section against the model's shapes: N:M groups, layers to remove (a meta-device model)."""
    from accbench.sparse.runner import check_sparse

    assert cfg.sparse is not None
    meta = _meta_model(cfg.model, model_config) if model_config is not None else None
    if meta is not None:
        check_sparse(meta, cfg.sparse.spec(), cfg.calib is not None)


def _check_calib(cfg: RunConfig) -> None:
    """The preprocessing name, and llmc's chat data (samples.json, conversations) readable."""
    from accbench.data import chat
    from accbench.data.calib import PREPROC
    from accbench.errors import DataError

    c = cfg.calib
    if c is None:
        return
    where = cfg.model.tokenizer_path or cfg.model.path
    if chat.needs_chat_template(c.name, c.apply_chat_template) and chat.has_chat_template(where) is False:
        raise DataError(f"calib: llmc's chat data is rendered by the chat template, and the tokenizer in {where} "
                        "has none", "set model.tokenizer_path to a chat model's tokenizer, or set "
                        "calib.apply_chat_template: false")
    if c.name in chat.CHAT_NAMES:
        chat.load_conversations(c.path, c.split)
        return
    if c.name in chat.CUSTOM_NAMES:
        chat.load_custom_samples(c.path)
        if c.padding:
            return  # padded samples go whole, no preprocessing (llmc)
    if c.preproc not in PREPROC:
        raise DataError(f"unknown calib.preproc '{c.preproc}'", f"use one of: {', '.join(PREPROC)}")


def _check_baseline(cfg: RunConfig) -> None:
    """Gates (and an explicit compare.baseline) need the baseline position evaluated; without one the run
    still evaluates what it has and says that nothing was compared."""
    baseline = cfg.compare.baseline or "pretrain"
    positions = cfg.positions()
    needs = cfg.compare.gates or cfg.compare.max_score_drop is not None or cfg.compare.baseline
    if baseline not in positions and needs:
        raise AccbenchError(f"compare needs the baseline position '{baseline}', which eval.eval_pos "
                            f"({', '.join(positions)}) does not evaluate",
                            f"add {baseline} to eval.eval_pos, or remove the gates")


def _check_train(cfg: RunConfig, model_config: Any) -> None:
    from accbench.pipeline.train import training_baseline, variant_args

    t = cfg.train
    assert t is not None
    training_baseline(list(t.variants), cfg.compare.baseline)
    variant_args(t)
    max_pos = getattr(model_config, "max_position_embeddings", None)  # not every architecture names it
    if max_pos and t.block_size > max_pos:
        raise AccbenchError(f"train.block_size {t.block_size} exceeds the model's max_position_embeddings "
                            f"{max_pos}", f"set train.block_size to at most {max_pos}")


def _check_task(task: Any) -> None:
    from accbench.evaluate.tasks import check_tasks

    check_tasks([task])
