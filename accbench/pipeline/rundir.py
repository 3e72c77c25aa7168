"""The run directory: where it is, creating it without clobbering an earlier run, and the run's log file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from accbench.config import BaseCfg


def resolve_run_dir(base: BaseCfg, output: str | None) -> Path:
    """-o when given, else <base.output_dir>/<base.run_name or a timestamp>."""
    if output:
        return Path(output)
    name = base.run_name or time.strftime("%Y%m%d_%H%M%S")
    return Path(base.output_dir) / name


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create, resume or replace the run directory (accbench/rundir.py: marker, lock, refusals)."""
    from accbench.rundir import prepare_run_dir as prepare

    prepare(run_dir, resume, overwrite)


def setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("accbench")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler
