"""Start one training variant in its own process and wait for it, its output captured in its log file.

Built-in variants run `python -m accbench.train.worker --spec SPEC` — a plain process by default, or under
`torchrun --standalone --nproc_per_node N` when the launcher asks for it (multi-GPU data parallel; the
Trainer reads the distributed environment torchrun sets). A `command` variant runs the user's shell
command as written (it does its own launching). A non-zero exit is a `TrainingFailed` naming the variant
and its log, with the log's last lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from accbench.errors import AccbenchError

LOG_TAIL_LINES = 15


class TrainingFailed(AccbenchError):
    """A variant's training process failed or left no usable results."""


def worker_command(spec_path: str | Path, launcher: str = "none", nproc_per_node: int = 1,
                   extra_args: list[str] | None = None) -> list[str]:
    """argv that trains one built-in variant: a plain process, or torchrun with N processes per node."""
    worker = ["-m", "accbench.train.worker", "--spec", str(spec_path)]
    if launcher == "none":
        return [sys.executable, *worker]
    if launcher == "torchrun":
        # torch.distributed.run is torchrun; invoking it through this interpreter keeps the same environment
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                *(extra_args or []), *worker]
    raise AccbenchError(f"unknown launcher type '{launcher}'", "use train.launcher.type: none or torchrun")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, the variant's `env` on top, and accbench importable in the child."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def run_logged(variant: str, argv: list[str] | str, log_path: Path, env: dict[str, str],
               cwd: str | Path | None = None) -> None:
    """Run argv (or a shell command string) with stdout+stderr into log_path; raise TrainingFailed on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = argv if isinstance(argv, str) else " ".join(argv)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        try:
            proc = subprocess.run(argv, shell=isinstance(argv, str), stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=cwd, executable="/bin/bash" if isinstance(argv, str) else None)
        except OSError as exc:
            raise TrainingFailed(f"training variant '{variant}' could not start: {exc}; log: {log_path}",
                                 "check the command and that its program exists") from None
    if proc.returncode != 0:
        raise TrainingFailed(f"training variant '{variant}' failed (exit code {proc.returncode}); log: {log_path}\n"
                             f"{log_tail(log_path)}",
                             f"read {log_path}, fix the cause, then rerun (--resume keeps finished variants)")


def log_tail(log_path: Path, n: int = LOG_TAIL_LINES) -> str:
    """The last n lines of a log, indented, for error messages."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = deque((ln.rstrip("\n") for ln in f), maxlen=n)
    except OSError:
        return ""
    return "\n".join(f"    | {ln[-300:]}" for ln in lines)
