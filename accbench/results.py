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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class TaskEntry(Entry):
    model: str  # position or variant name
    task: str
    type: str = ""
    metrics: dict[str, float | None] = Field(default_factory=dict)
    n: int = 0
    stderr: dict[str, float | None] = Field(default_factory=dict)
    # metric -> {sample id: value}; what paired comparisons between models use
    per_sample: dict[str, dict[str, float]] = Field(default_factory=dict)
    # what answered it: the batch size used per request kind, requests whose context was cut to the model
    # window, requests computed per kind, and answers reused from the per-sample store (--resume)
    batch_sizes: dict[str, int] = Field(default_factory=dict)
    truncated: int = 0
    requests: dict[str, int] = Field(default_factory=dict)
    reused_from_store: int = 0


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
    train_samples: int | None = None  # training examples the run had (all_results.json's train_samples)
    train_tokens: int | None = None  # tokens in them (built-in: samples x block_size; a command: if it says)
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
    seq_len: int | None = None
    baseline: str | None = None  # the position whose recorded distributions this one is compared with
    top_k: int | None = None
    method: str | None = None
    kld_max: float | None = None
    tail_mass_mean: float | None = None
    kld_hist: dict[str, Any] | None = None


class QuantInfo(Entry):
    """What quantized the model (results.json `quant`): the method, its settings, the calibration used."""

    method: str
    weight: dict[str, Any] = Field(default_factory=dict)
    act: dict[str, Any] | None = None
    special: dict[str, Any] = Field(default_factory=dict)  # the method's options, defaults filled
    quant_out: bool = False
    calib_samples: int = 0
    gptq_error_sum: float | None = None  # GPTQ: the summed per-layer reconstruction error


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
    quant: QuantInfo | None = None
    opencompass: list[dict[str, Any]] = Field(default_factory=list)
    opencompass_output: dict[str, str] = Field(default_factory=dict)  # paths: summary csv/txt, log, work dir
    compare: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
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
