"""The typed results of a run (results.json) and the run directory layout.

results.json is what users and their scripts read: `ppl`, `tasks`, `train`, `compare`, plus `fidelity`,
`opencompass`, `versions` and `timings`. The schema is versioned; fields are only ever added.
It is rewritten atomically after every stage, so a crash keeps everything computed so far.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["lower", "higher"]

SCHEMA_VERSION = 1


class Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class PplEntry(Entry):
    position: str
    dataset: str
    ppl: float
    seq_len: int
    windows: int
    tokens: int
    recipe: str = ""
    window_losses: list[float] = Field(default_factory=list)


class SampleText(Entry):
    """What one sample asked and answered, for reading flips: the prompt (few-shot examples cut), the gold
    answer, the model's answer, and where a metric or an lm-eval filter reads a different answer
    (acc_norm's choice, gsm8k's strict-match extraction) that answer under the metric's or filter's name."""

    prompt: str = ""
    reference: str | None = None
    response: str = ""
    answers: dict[str, str] = Field(default_factory=dict)


class TaskEntry(Entry):
    model: str  # position or variant name
    task: str
    type: str = ""
    metrics: dict[str, float | None] = Field(default_factory=dict)
    n: int = 0
    stderr: dict[str, float | None] = Field(default_factory=dict)
    # metric -> {sample id: value}; what paired comparisons between models use
    per_sample: dict[str, dict[str, float]] = Field(default_factory=dict)
    # sample id -> its text (SampleText); human-eval keeps a list of {task_id, completion, ...} records
    samples: dict[str, SampleText] | list[dict[str, Any]] | dict[str, Any] = Field(default_factory=dict)


class TrainEntry(Entry):
    variant: str
    train_loss: float | None = None
    train_runtime: float | None = None  # seconds inside trainer.train(), as the Trainer reports it
    train_steps_per_second: float | None = None
    checkpoint: str | None = None
    baseline: bool = False
    speedup: float | None = None  # steps/s over the baseline's steps/s (1.0 for the baseline)
    global_step: int | None = None
    wall_time: float | None = None  # seconds for the whole variant: process start, load, train, save
    log: str | None = None
    kind: str = "builtin"  # builtin | command
    loss_curve: list[dict[str, int | float]] = Field(default_factory=list)  # [{step, loss}] from trainer_state.json


class FidelityEntry(Entry):
    position: str
    dataset: str
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p99: float
    top1_agreement: float
    delta_p_mean: float
    delta_p_rms: float
    ppl_ratio: float
    tokens: int


@dataclass
class Comparison:
    """One metric of one candidate model against the baseline model. `delta` = candidate - baseline;
    `worsening` is the same change signed so that positive means worse (direction-aware)."""

    kind: str  # ppl | task | train | fidelity
    baseline: str
    candidate: str
    metric: str
    direction: Direction
    baseline_value: float | None
    candidate_value: float | None
    delta: float | None = None
    relative_delta: float | None = None
    worsening: float | None = None
    relative_worsening: float | None = None
    ci_low: float | None = None  # CI of `delta` (of `relative_delta` for perplexity)
    ci_high: float | None = None
    confidence: float | None = None
    p_value: float | None = None
    test: str = ""  # mcnemar_exact | paired_bootstrap | normal_unpaired | ""
    n: int = 0  # paired samples / windows behind the CI
    correct_to_wrong: int | None = None
    wrong_to_correct: int | None = None
    dataset: str | None = None
    task: str | None = None
    position: str = ""  # candidate's position/variant name, what gates select on
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateCheck:
    """One gate checked against one comparison (or against nothing, which fails)."""

    gate: int  # index in the expanded gate list
    rule: str  # the gate as written
    target: str  # what it was checked on, e.g. "fake_quant ppl wikitext2"
    bound: str  # max_relative_increase | max_drop | train_loss_diff | max_kld
    observed: float | None
    limit: float
    held: bool
    p_value: float | None = None
    significance: float | None = None
    reason: str = ""


class CompareBlock(BaseModel):
    """The `compare` block of results.json: every comparison of a candidate with the baseline, every gate check,
    and the verdict. Empty (no baseline) until the compare stage ran."""

    model_config = ConfigDict(extra="allow")

    baseline: str = ""
    comparisons: list[Comparison] = Field(default_factory=list)
    gates: list[GateCheck] = Field(default_factory=list)
    all_held: bool = True
    exit_code: int = 0

    def __bool__(self) -> bool:
        return bool(self.baseline or self.comparisons or self.gates)

    def of_kind(self, kind: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.kind == kind]



class Provenance(BaseModel):
    """What was compared and how: enough to rerun it or to question it (the report's provenance block)."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    revision: str | None = None
    peft: str | None = None
    method: str | None = None  # quantization method, or "training" for a training run
    method_options: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    seeds: dict[str, int] = Field(default_factory=dict)
    config_sha256: str = ""
    command: list[str] = Field(default_factory=list)
    machine: dict[str, str] = Field(default_factory=dict)
    started: str = ""


class Results(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    run_dir: str = ""
    status: str = "running"  # running | complete | failed
    error: str | None = None
    models: dict[str, str] = Field(default_factory=dict)  # position/variant -> model path (saved or original)
    ppl: list[PplEntry] = Field(default_factory=list)
    fidelity: list[FidelityEntry] = Field(default_factory=list)
    tasks: list[TaskEntry] = Field(default_factory=list)
    train: list[TrainEntry] = Field(default_factory=list)
    opencompass: list[dict[str, Any]] = Field(default_factory=list)
    opencompass_output: dict[str, str] = Field(default_factory=dict)  # paths: summary csv/txt, log, work dir
    compare: CompareBlock = Field(default_factory=CompareBlock)
    versions: dict[str, str] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    timings: dict[str, float] = Field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        path = Path(run_dir) / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, run_dir: str | Path) -> "Results":
        path = Path(run_dir) / "results.json"
        return cls.model_validate_json(path.read_text())


def collect_versions() -> dict[str, str]:
    import importlib.metadata as md

    import accbench

    out = {"accbench": accbench.__version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "lm-eval", "opencompass"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class Timer:
    """Accumulates wall time per stage into a dict."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)
