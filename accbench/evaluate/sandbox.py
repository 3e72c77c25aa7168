"""Run untrusted programs (model-generated code) safely: each in its own sandboxed child process, many at once.

`run_programs(sources, limits, workers)` starts `sandbox_server.py` in a fresh interpreter (`python -I -S`, a
minimal environment: no inherited variables, so no API keys; its own session; stdin/stdout pipes only),
sends it the programs and collects one `ExecutionResult` per program: passed / failed / timed out / crashed,
with the error's last line and the (truncated) output. The server forks one child per program; what each child
is denied (network, other processes, the machine's files, resources) is described in `Isolation` and in
docs/humaneval.md. The evaluator itself never executes generated code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from accbench.errors import AccbenchError

log = logging.getLogger("accbench")

STATUSES = ("passed", "failed", "timed out", "crashed")
_SERVER = Path(__file__).with_name("sandbox_server.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. cpu_seconds defaults to the wall-clock timeout plus one second."""

    timeout: float = 10.0
    cpu_seconds: int | None = None
    memory_bytes: int = 4 << 30  # address space
    file_size_bytes: int = 64 << 20  # largest file a program may write
    tmpfs_bytes: int = 128 << 20  # its whole working directory, when namespaces are available
    max_processes: int = 64
    max_output_bytes: int = 16 << 10  # head of stdout and tail of stderr kept

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise AccbenchError(f"sandbox timeout must be positive, got {self.timeout}", "use e.g. --timeout 10")


@dataclass(frozen=True)
class CheckedProgram:
    """A completion and its tests, run apart (sandbox_checked.py): `source` (prompt + completion) in the program's
    process, `checker` (the prompt's helpers + the test defining `check(candidate)`) in a process the program
    cannot reach, `candidate` calls crossing as plain data. Passed means `check` returned."""

    source: str
    checker: str
    entry_point: str


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # one of STATUSES
    error: str  # last line of the error ("" when passed)
    returncode: int | None = None  # negative: killed by that signal
    duration: float = 0.0
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could enforce on this machine; recorded next to the results."""

    network: bool
    processes: bool  # own pid namespace: other processes invisible and unkillable
    read_only_filesystem: bool
    user: str  # "nobody" (root evaluator, namespaces), "uid N+worker" (root, no namespaces), "current user"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _server_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class _Server:
    """One running sandbox_server.py."""

    def __init__(self, limits: SandboxLimits, workers: int, namespaces: bool):
        cfg = {"workers": workers, "namespaces": namespaces, "hide": [os.path.expanduser("~")],
               "tmpfs_bytes": limits.tmpfs_bytes,
               "max_output_bytes": limits.max_output_bytes,
               "limits": {"cpu_seconds": limits.cpu_seconds or int(limits.timeout) + 1,
                          "memory_bytes": limits.memory_bytes, "file_size_bytes": limits.file_size_bytes,
                          "max_processes": limits.max_processes}}
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server can never block on it
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(_SERVER), json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=_server_env(), cwd="/", start_new_session=True, close_fds=True)
        hello = self.proc.stdout.readline()
        if not hello:
            self.proc.wait()
            raise AccbenchError(f"the code sandbox did not start: {self.stderr_tail() or 'no output'}",
                                f"run `{sys.executable} -I -S {_SERVER} '{{}}'` to see why")
        self.hello = json.loads(hello)

    def isolation(self) -> Isolation:
        ns = bool(self.hello["namespaces"])
        notes = []
        if not ns:
            why = self.hello.get("namespace_error") or "namespaces turned off by the caller"
            notes.append(f"network isolation unavailable: {why}")
            notes.append("no pid/mount namespace: programs see the machine's processes and write where their "
                         f"user ({self.hello['user']}) may")
            if self.hello["user"] != "current user":
                notes.append(f"programs run as {self.hello['user']}: standard-library modules the sandbox server "
                             "did not preload import only if other users can read the interpreter's files")
        if self.hello.get("seccomp_error"):
            notes.append(f"host Unix-domain sockets reachable: the socket filter could not be installed "
                         f"({self.hello['seccomp_error']})")
        return Isolation(network=ns, processes=ns, read_only_filesystem=ns, user=self.hello["user"], notes=notes)

    def stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    def close(self, graceful: bool = True) -> None:
        """Graceful: end of input, the server finishes and cleans up. Otherwise (errors, Ctrl-C) stop it now."""
        try:
            self.proc.stdin.close()
            if graceful:
                self.proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.last_error = self.stderr_tail()
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except OSError:
                pass


def _feed(proc: subprocess.Popen, jobs: list[dict]) -> None:
    try:
        for job in jobs:
            proc.stdin.write((json.dumps(job) + "\n").encode())
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):  # the server died; the reader notices and reports it
        pass


def _job(i: int, program: str | CheckedProgram, timeout: float) -> dict:
    if isinstance(program, CheckedProgram):
        return {"id": i, "source": program.source, "checker": program.checker, "entry_point": program.entry_point,
                "timeout": timeout}
    return {"id": i, "source": program, "timeout": timeout}


def run_programs(sources: list[str | CheckedProgram], limits: SandboxLimits | None = None, workers: int | None = None,
                 namespaces: bool = True, progress: Callable[[int], None] | None = None
                 ) -> tuple[list[ExecutionResult], Isolation]:
    """Run each source as `python program.py` would, in its own sandboxed process; results in input order.
    A CheckedProgram is scored by its tests, run apart from it (see CheckedProgram).

    `namespaces=False` skips the namespace sandbox even where it works (tests of the fallback use it).
    """
    limits = limits or SandboxLimits()
    if workers is not None and workers < 1:
        raise AccbenchError(f"sandbox workers must be >= 1, got {workers}", "e.g. --workers 4, or leave it unset")
    workers = workers or os.cpu_count() or 1
    results: dict[int, ExecutionResult] = {}
    isolation = None
    for attempt in range(3):  # a server killed from outside is restarted for what it had not finished
        pending = [_job(i, s, limits.timeout) for i, s in enumerate(sources) if i not in results]
        if not pending:
            break
        server = _Server(limits, workers, namespaces)
        isolation = isolation or server.isolation()
        feeder = threading.Thread(target=_feed, args=(server.proc, pending), daemon=True)
        feeder.start()
        done = False
        try:
            for line in server.proc.stdout:
                r = json.loads(line)
                if r["status"] == "sandbox error":
                    raise AccbenchError(f"the code sandbox could not set up a child: {r['error']}",
                                        "a machine or sandbox problem, not the program's; see docs/humaneval.md")
                idx = r.pop("id")
                results[idx] = ExecutionResult(**r)
                if progress:
                    progress(1)
            done = True
        finally:
            server.close(graceful=done)
            feeder.join(1)
        if len(results) < len(sources):
            log.warning("code sandbox server ended early (attempt %d: %s); restarting for %d programs",
                        attempt + 1, server.last_error or "no message", len(sources) - len(results))
    if len(results) < len(sources):
        raise AccbenchError("the code sandbox server kept dying before finishing its programs",
                            "check memory and process limits on this machine; see docs/humaneval.md")
    if isolation is None:
        isolation = detect_isolation()
    return [results[i] for i in range(len(sources))], isolation


def detect_isolation(namespaces: bool = True) -> Isolation:
    """Start a server only to learn what this machine lets the sandbox enforce."""
    server = _Server(SandboxLimits(), 1, namespaces)
    try:
        return server.isolation()
    finally:
        server.close()
