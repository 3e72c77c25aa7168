"""Run directories are accbench's own: a marker file says a folder holds a run, a lock file says a process works in it.

`prepare_run_dir` is the one place that creates, resumes or replaces a run directory:
- a new run needs a missing or empty folder (or a path that can become one: not a file, not below a file,
  writable); it writes the marker `.accbench-run` first;
- `--overwrite` deletes a folder only when it holds that marker, and refuses anything else, naming what the
  folder holds, so a mistyped `-o` never deletes a user's files;
- `--resume` needs the marker (a folder that is not a run is refused);
- a lock file `.accbench-lock` holds the pid and host of the process working in the run; a second process on
  a live run is refused, a lock whose process is gone (killed, machine rebooted) is stale and taken over.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path

from accbench.errors import AccbenchError

MARKER = ".accbench-run"
LOCK = ".accbench-lock"


def is_run_dir(path: Path) -> bool:
    """True when `path` holds an accbench run (its marker file)."""
    return (Path(path) / MARKER).is_file()


def _is_unmarked_run(path: Path) -> bool:
    """A run made before accbench wrote markers: its config.yaml and a results.json with a schema version."""
    try:
        res = json.loads((Path(path) / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and "schema_version" in res and (Path(path) / "config.yaml").is_file()


def _describe(path: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_target(run_dir: Path) -> None:
    """A path that cannot be a run directory: a file, a device, below a file, unwritable."""
    if run_dir.exists() and not run_dir.is_dir():
        what = "a file" if run_dir.is_file() else "not a directory"
        raise AccbenchError(f"-o {run_dir}: {what}, not a directory", "pass a directory path for the run, e.g. -o runs/my-run")
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise AccbenchError(f"-o {run_dir}: {parent} is a file, so nothing can be created below it",
                                    "pass a directory path whose parents are directories")
            break


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AccbenchError(f"cannot write {path}: {exc.strerror}",
                            "pass -o a directory you can write to (the disk must be writable and not full)") from None


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create, resume or replace the run directory; refuse to touch a folder that is not an accbench run."""
    run_dir = Path(run_dir)
    _check_target(run_dir)
    populated = run_dir.is_dir() and any(run_dir.iterdir())
    if populated and resume and not overwrite and _is_unmarked_run(run_dir):
        pass  # an older accbench's run: resumable (and marked below), but never deleted on its say-so
    elif populated and not is_run_dir(run_dir):
        what = f"{run_dir} is not an accbench run directory (no {MARKER}); it holds: {_describe(run_dir)}"
        if overwrite:
            raise AccbenchError(f"--overwrite: {what}", "accbench deletes only folders it created: pass -o a new "
                                "or empty directory, or delete this one yourself")
        if resume:
            raise AccbenchError(f"--resume: {what}", "pass -o the directory of the run to resume")
        raise AccbenchError(f"-o {what}", "pass -o a new or empty directory")
    if populated and overwrite:
        lock_run_dir(run_dir)  # never delete a run another process is working in
        _remove_run(run_dir)
    elif populated and not resume:
        raise AccbenchError(f"run directory {run_dir} already holds a run",
                            "pass --resume to continue it, --overwrite to replace it, or -o another directory")
    elif not populated and resume:
        raise AccbenchError(f"--resume: no run to resume in {run_dir}", "drop --resume to start a new run")
    _mkdir(run_dir / "logs")
    try:
        (run_dir / MARKER).write_text(json.dumps({"accbench_run": 1}) + "\n")
    except OSError as exc:
        raise AccbenchError(f"cannot write {run_dir / MARKER}: {exc.strerror}",
                            "pass -o a directory you can write to (the disk must be writable and not full)") from None
    lock_run_dir(run_dir)


def _remove_run(run_dir: Path) -> None:
    """Delete the run's contents except its marker and lock (held by us), so it is never unmarked half-way."""
    for p in run_dir.iterdir():
        if p.name in (MARKER, LOCK):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run_dir(run_dir: Path) -> None:
    """Take the run's lock for this process; refuse when another live process holds it.

    The lock is a file created with O_EXCL holding {pid, host}; it is released at exit (release_run_dir) and a
    lock whose pid is not running on this host is stale: it is replaced, with a note in the log."""
    path = Path(run_dir) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            pid = int(owner.get("pid", 0) or 0)
            if pid == os.getpid():
                return
            live = pid > 0 and owner.get("host") == me["host"] and _pid_alive(pid)
            if live or (pid > 0 and owner.get("host") not in (None, me["host"])):
                raise AccbenchError(f"run directory {run_dir} is in use by process {pid} on {owner.get('host')} "
                                    f"(lock file {path})", "wait for that run to end, or stop it; if that process "
                                    f"is gone (another machine), delete {path}")
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC):
                raise AccbenchError(f"cannot write {path}: {exc.strerror}",
                                    "pass -o a directory you can write to") from None
            raise
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return
    raise AccbenchError(f"could not take the lock {path}", "another accbench process keeps taking it; retry")


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock (only ours: never another process's)."""
    path = Path(run_dir) / LOCK
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
