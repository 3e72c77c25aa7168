"""Scoring a completion by its behaviour: the tests run in a process the completion cannot reach (standard library only).

Used by sandbox_server.py for a "checked" job {"source": prompt + completion, "checker": prompt + test,
"entry_point"}, in the program's sandboxed child (called T here, the test process), which forks the program's
process P:
- P closes the pass token's descriptor before any of the completion's code runs, runs the source, then serves
  calls of `entry_point`: it receives arguments and sends back the return value as plain data (None, bool,
  int, float, complex, str, bytes and lists, tuples, sets, frozensets and dicts of them, exact types only);
- T never runs completion code: it runs the problem's prompt (its helpers) and test, with `candidate` a proxy
  that calls into P; values come back rebuilt from plain data, so an object whose `__eq__` always answers
  True never reaches a comparison, and nothing P patches (`traceback`, `sys`, `os._exit`, builtins) exists in T;
- T is not dumpable (prctl), so P cannot ptrace it, read its memory or open its descriptors through /proc;
- only T writes the pass token, and only after `check(candidate)` has returned: a P that exits, is killed, hangs
  or sends anything but plain data fails the test in T (a P killed by a signal ends T by that signal).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

from sandbox_isolation import PR_SET_DUMPABLE, PR_SET_PDEATHSIG, check, libc

MAX_DEPTH = 100
_SCALARS = (bool, int, float, str)


class CandidateError(Exception):
    """The completion raised, exited, or returned something that is not plain data."""


CandidateError.__module__ = "builtins"  # tracebacks' last line reads "CandidateError: ...", the error reported
READY = {"ready": True}


def encode(v: Any, depth: int = 0) -> Any:
    """Plain data as JSON-able structure; anything else (subclasses included) is a TypeError."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply to check")
    t = type(v)
    if v is None or t in _SCALARS:
        return v
    if t is complex:
        return {"c": [v.real, v.imag]}
    if t is bytes:
        return {"b": v.hex()}
    if t in (list, tuple, set, frozenset):
        return {{list: "l", tuple: "t", set: "s", frozenset: "f"}[t]: [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    raise TypeError(f"a value of type {t.__name__} cannot be checked outside the sandbox (plain data only)")


def decode(v: Any, depth: int = 0) -> Any:
    """The inverse of encode, strict: anything that encode cannot have produced is a CandidateError."""
    if depth > MAX_DEPTH:
        raise CandidateError("value nested too deeply")
    if v is None or type(v) in _SCALARS:
        return v
    if type(v) is not dict or len(v) != 1:
        raise CandidateError(f"not a plain value: {str(v)[:80]}")
    (tag, x), = v.items()
    if tag == "c" and type(x) is list and len(x) == 2 and all(type(p) in (int, float) for p in x):
        return complex(x[0], x[1])
    if tag == "b" and type(x) is str:
        return bytes.fromhex(x)
    if tag in ("l", "t", "s", "f") and type(x) is list:
        items = [decode(i, depth + 1) for i in x]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and type(x) is list and all(type(p) is list and len(p) == 2 for p in x):
        return {decode(k, depth + 1): decode(i, depth + 1) for k, i in x}
    raise CandidateError(f"not a plain value: {str(v)[:80]}")


def _send(f: Any, obj: Any) -> None:
    try:
        sys.stdout.flush(), sys.stderr.flush()  # what the program printed so far is kept, whatever happens next
    finally:
        f.write(json.dumps(obj) + "\n")
        f.flush()


def _program(job: dict, calls: Any, replies: Any) -> None:
    """P: run the completion, then answer calls of its entry point; never returns."""
    code = 1
    try:
        source, name = job["source"], job["entry_point"]
        job.clear()  # the tests are not the program's to read
        g = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(source, "program.py", "exec"), g)
        _send(replies, READY)
        for line in calls:
            req = json.loads(line)
            try:
                fn = g[name]
                out = {"ok": encode(fn(*decode(req["args"]), **decode(req["kwargs"])))}
            except BaseException as exc:  # SystemExit too: the call did not return a value
                out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            _send(replies, out)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        flush_and_exit(code)


def flush_and_exit(code: int) -> None:
    """End this process now with `code`, keeping what it printed (no exit hooks, no cleanup of the parent's)."""
    try:
        sys.stdout.flush(), sys.stderr.flush()
    finally:
        os._exit(code)


class _Candidate:
    """T's stand-in for the completion's function: each call goes to P, plain data both ways."""

    def __init__(self, calls: Any, replies: Any, pid: int, name: str):
        self.calls, self.replies, self.pid, self.__name__ = calls, replies, pid, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            _send(self.calls, {"args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        except (BrokenPipeError, OSError):
            raise CandidateError(_ended(self.pid, "before the call")) from None
        line = self.replies.readline()
        if not line:
            raise CandidateError(_ended(self.pid, "during the call"))
        try:
            reply = json.loads(line)
        except ValueError:
            raise CandidateError("the program's answer is not plain data") from None
        if type(reply) is not dict:
            raise CandidateError("the program's answer is not plain data")
        if "error" in reply:
            raise CandidateError(f"the function raised {str(reply['error'])[:2000]}")
        if "ok" not in reply:
            raise CandidateError("the program's answer is not plain data")
        return decode(reply["ok"])


def _ended(pid: int, when: str) -> str:
    """Why P is gone: mirror a fatal signal (T then ends by it: "crashed"), else describe its exit."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        _ended_by(status)
    return f"the program exited (code {os.waitstatus_to_exitcode(status)}) {when}, before its tests finished"


def run_checked(job: dict, done_w: int) -> None:
    """T: fork P, run the tests against it, write the pass token only when they all ran; never returns."""
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE, 0)")  # before P exists: no window
    sys.argv = ["program.py"]
    sys.stdout = open(1, "w", closefd=False)  # fresh objects: nothing buffered in the server leaks through
    sys.stderr = open(2, "w", closefd=False)
    call_r, call_w = os.pipe()
    reply_r, reply_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(done_w)  # the pass token is out of the program's reach before any of its code runs
            os.close(call_w), os.close(reply_r)
            job.pop("checker", None)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _program(job, os.fdopen(call_r, "r"), os.fdopen(reply_w, "w"))
        finally:
            os._exit(code)
    os.close(call_r), os.close(reply_w)
    calls, replies = os.fdopen(call_w, "w"), os.fdopen(reply_r, "r")
    code = 1
    try:
        first = replies.readline()  # P ran the completion's top level (or died doing so)
        if first and not _is_ready(first):
            print("RuntimeError: the program wrote to the test channel before its tests ran", file=sys.stderr)
            raise SystemExit(1)
        if not first:
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status):
                _ended_by(status)
            if os.waitstatus_to_exitcode(status) != 1:  # 1: P printed its own exception
                print(f"RuntimeError: the program exited (code {os.waitstatus_to_exitcode(status)}) before its "
                      "tests ran", file=sys.stderr)
            raise SystemExit(1)
        candidate = _Candidate(calls, replies, pid, job["entry_point"])
        g = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(job["checker"], "tests.py", "exec"), g)
        g[job["entry_point"]] = candidate
        g["check"](candidate)
        sys.stdout.flush()
        os.write(done_w, b"1")
        code = 0
    except SystemExit:
        pass
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        flush_and_exit(code)


def _is_ready(line: str) -> bool:
    try:
        return json.loads(line) == READY
    except ValueError:
        return False


def _ended_by(status: int) -> None:
    sys.stderr.flush()
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
