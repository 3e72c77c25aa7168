"""The run directory: where it is, creating it without clobbering an earlier run, and the run's log file."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from accbench.config import BaseCfg
from accbench.errors import AccbenchError


def resolve_run_dir(base: BaseCfg, output: str | None) -> Path:
    """-o when given, else <base.output_dir>/<base.run_name or a timestamp>."""
    if output:
        return Path(output)
    name = base.run_name or time.strftime("%Y%m%d_%H%M%S")
    return Path(base.output_dir) / name


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
