"""How an `accbench` command ends: its exit code and message for every way it can stop, and the run's status.

Exit codes: 0 all good; 1 crash (a bug: traceback in the run's log); 2 bad input (config, paths, data, a full
disk); 3 a comparison gate failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, handled as Ctrl-C is).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from accbench.errors import EXIT_CRASH, AccbenchError, Terminated

log = logging.getLogger("accbench")


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand; turn what stops it into a message and an exit code."""
    previous = _handle_sigterm(_on_sigterm)  # SIGTERM ends a run as Ctrl-C does
    try:
        return func(args)
    except AccbenchError as exc:
        print(f"accbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"accbench: {what}; everything computed so far is in the run directory (--resume continues it)",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # a bug (or a disk fault): keep the traceback in the log, show a short message
        from accbench.iofaults import as_disk_error

        disk = as_disk_error(exc, Path.cwd())
        if disk is not None:
            print(f"accbench: error: {disk}", file=sys.stderr)
            return disk.exit_code
        log.error("crash: %s", traceback.format_exc())
        where = _log_file()
        print(f"accbench: internal error: {type(exc).__name__}: {exc}\n"
              + (f"  the traceback is in {where}; please report it" if where else
                 "  rerun with ACCBENCH_DEBUG=1 to see the traceback; please report it"), file=sys.stderr)
        if "--debug" in sys.argv or __import__("os").environ.get("ACCBENCH_DEBUG"):
            traceback.print_exc()
        return EXIT_CRASH
    finally:
        _handle_sigterm(previous)


def mark_failed(run_dir: Path, exc: BaseException) -> None:
    """Record in results.json that the run failed or was interrupted (what it computed stays)."""
    from accbench.results import Results

    path = run_dir / "results.json"
    if not path.is_file():
        return
    try:
        res = Results.load(run_dir)
    except Exception:  # a results file we cannot read must not hide the original error
        return
    res.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    res.error = str(exc) or type(exc).__name__
    try:
        res.save(run_dir)
    except OSError as err:  # e.g. the disk is still full: the console message carries the reason
        log.error("could not record the run's status in %s: %s", path, err)
    log.error("run %s: %s", res.status, "".join(traceback.format_exception(exc)))


def _handle_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler (only the main thread may); returns the previous one."""
    import threading

    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated("terminated by SIGTERM")


def _log_file() -> str | None:
    """The run log a crash's traceback went to, if one is open."""
    for h in logging.getLogger("accbench").handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).is_file():
            return h.baseFilename
    return None
