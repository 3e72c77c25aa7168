"""Training variants: what each built-in option switches, the user's `command` variant, and reading results.

A built-in variant is the baseline's TrainingArguments with real options switched on: `torch_compile`,
`bf16`/`fp16` (mixed precision), `optim` (e.g. adamw_torch_fused), `gradient_checkpointing`, plus
`attn_implementation` when the model is loaded. A `command` variant is the user's own script, started
with {model}, {output_dir}, {seed} and {train_file} filled in. Either way the results are read from the
Hugging Face files the run leaves in its output_dir — `all_results.json` and `trainer_state.json` —
never from its log.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accbench.train.launch import TrainingFailed

PLACEHOLDERS = ("model", "output_dir", "seed", "train_file")
RESULTS_FILE = "all_results.json"
STATE_FILE = "trainer_state.json"
# TrainingArguments keys accbench owns: the output directory is the variant's checkpoint directory
RESERVED_TRAINER_ARGS = {"output_dir": "accbench writes each variant to <run dir>/models/<variant>"}


def baseline_trainer_args(seed: int, per_device_train_batch_size: int, gradient_accumulation_steps: int,
                          num_train_epochs: float, max_steps: int, learning_rate: float,
                          user_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """TrainingArguments every variant shares: the train section's values, then `train.trainer_args`."""
    args: dict[str, Any] = {
        "seed": seed, "per_device_train_batch_size": per_device_train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps, "num_train_epochs": num_train_epochs,
        "max_steps": max_steps, "learning_rate": learning_rate,
        "logging_steps": 1,  # a loss point per step: the curves compared between variants
        "save_strategy": "no",  # the final model is saved once; intermediate checkpoints only if asked
        "report_to": "none",  # no tracker unless the user asks for one
        "disable_tqdm": True,  # logs are files; the per-step loss lines say the progress
    }
    args.update(user_args or {})
    return args


def variant_trainer_args(base: dict[str, Any], torch_compile: bool = False, bf16: bool = False, fp16: bool = False,
                         optim: str | None = None, gradient_checkpointing: bool = False,
                         user_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline's arguments with this variant's options switched on, then its own `trainer_args`."""
    args = dict(base)
    if torch_compile:
        args["torch_compile"] = True
    if bf16:
        args["bf16"] = True
    if fp16:
        args["fp16"] = True
    if optim:
        args["optim"] = optim
    if gradient_checkpointing:
        args["gradient_checkpointing"] = True
    args.update(user_args or {})
    return args


def check_trainer_args(args: dict[str, Any], where: str) -> None:
    """Every key must be a TrainingArguments field (with a suggestion for a misspelling); output_dir is ours."""
    from transformers import TrainingArguments

    from accbench.errors import AccbenchError

    known = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    problems = []
    for key in args:
        if key in RESERVED_TRAINER_ARGS:
            problems.append(f"'{key}' is set by accbench ({RESERVED_TRAINER_ARGS[key]})")
        elif key not in known:
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            problems.append(f"'{key}' is not a TrainingArguments option" + (f" (did you mean '{near[0]}'?)" if near else ""))
    if args.get("optim") is not None:
        from transformers.training_args import OptimizerNames

        optims = [o.value for o in OptimizerNames]
        if str(args["optim"]) not in optims:
            near = difflib.get_close_matches(str(args["optim"]), optims, n=1, cutoff=0.6)
            problems.append(f"optim '{args['optim']}' is not an optimizer the Trainer knows"
                            + (f" (did you mean '{near[0]}'?)" if near else " (e.g. adamw_torch, adamw_torch_fused)"))
    if problems:
        raise AccbenchError(f"{where}: " + "; ".join(problems),
                            "use the names of transformers.TrainingArguments (the options run_clm.py accepts)")


def fill_placeholders(command: str, values: dict[str, str]) -> str:
    """Replace {model}, {output_dir}, {seed}, {train_file}; other braces (bash's ${VAR}) are left alone."""
    for key in PLACEHOLDERS:
        command = command.replace("{" + key + "}", str(values[key]))
    return command


@dataclass
class TrainOutcome:
    """What a finished training run reports, read from its Hugging Face output files."""

    train_loss: float
    train_runtime: float | None
    train_steps_per_second: float | None
    global_step: int | None
    loss_curve: list[dict[str, int | float]] = field(default_factory=list)  # [{step, loss}] from log_history
    metrics: dict[str, Any] = field(default_factory=dict)  # all of all_results.json


def _read_json(path: Path, variant: str) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingFailed(f"training variant '{variant}' left no {path.name}: {path} does not exist",
                             f"the training must save its results there as the Hugging Face Trainer does "
                             f"(trainer.save_metrics('train', metrics) and trainer.save_state() in {path.parent})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainingFailed(f"training variant '{variant}': {path} is not valid JSON ({exc})",
                             "the file must be what the Hugging Face Trainer writes") from None
    if not isinstance(data, dict):
        raise TrainingFailed(f"training variant '{variant}': {path} holds a {type(data).__name__}, not a JSON object",
                             "the file must be what the Hugging Face Trainer writes")
    return data


def _number(data: dict[str, Any], key: str, path: Path, variant: str, required: bool) -> float | None:
    v = data.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        what = "has no" if v is None else f"has a non-numeric or non-finite ({v!r})"
        raise TrainingFailed(f"training variant '{variant}': {path} {what} '{key}'",
                             "the file must hold the metrics trainer.train() returns (train_loss, train_runtime, ...)")
    return float(v)


def read_trainer_results(output_dir: str | Path, variant: str) -> TrainOutcome:
    """Read all_results.json (metrics) and trainer_state.json (per-step loss) from a finished run."""
    out = Path(output_dir)
    results_path, state_path = out / RESULTS_FILE, out / STATE_FILE
    metrics = _read_json(results_path, variant)
    state = _read_json(state_path, variant)
    history = state.get("log_history")
    if not isinstance(history, list):
        raise TrainingFailed(f"training variant '{variant}': {state_path} has no 'log_history' list",
                             "the file must be what trainer.save_state() writes")
    curve = []
    for rec in history:
        if isinstance(rec, dict) and "loss" in rec and "step" in rec:
            curve.append({"step": int(rec["step"]), "loss": float(rec["loss"])})
    steps = _number(metrics, "global_step", results_path, variant, required=False)
    if steps is None and isinstance(state.get("global_step"), int):
        steps = state["global_step"]
    return TrainOutcome(
        train_loss=_number(metrics, "train_loss", results_path, variant, required=True),
        train_runtime=_number(metrics, "train_runtime", results_path, variant, required=False),
        train_steps_per_second=_number(metrics, "train_steps_per_second", results_path, variant, required=False),
        global_step=int(steps) if steps is not None else None,
        loss_curve=curve,
        metrics=metrics,
    )
