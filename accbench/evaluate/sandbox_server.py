"""The sandbox's fork server: a clean, secret-free interpreter that runs each untrusted program in its own child.

`sandbox.py` starts this file as `python -I -S sandbox_server.py CONFIG_JSON` with a minimal environment, sends
one JSON job per line on stdin ({"id", "source", "timeout"}) and reads one JSON result per line from stdout.
Forking this small process costs about a millisecond, where starting an interpreter per program costs tens, and
the evaluator's own memory (model, API keys) is never in the children.

Each child: its own process group; stdin /dev/null; stdout/stderr to pipes read here (head of stdout, tail of
stderr kept); every other descriptor closed; uid nobody when the server runs as root; then, when the kernel lets
an unprivileged process create user namespaces, new user+mount+network+pid+ipc+uts namespaces with the whole
filesystem read-only, a size-capped tmpfs as the working directory, a fresh /proc, no capabilities and no
network interface up; finally rlimits (CPU, address space, file size, processes, core) and the program, run to
its end. "passed" needs exit code 0 *and* a token written after the last line ran, so `os._exit(0)` half-way
is not a pass. Standard library only: this file must start fast and import nothing from accbench.
"""

from __future__ import annotations

import ctypes
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

# modules HumanEval-style programs import, loaded once here so children neither pay for nor need file access to them
for _m in ("typing", "math", "random", "copy", "string", "collections", "re", "hashlib", "itertools",
           "functools", "heapq", "bisect", "statistics", "fractions", "decimal", "operator", "datetime"):
    try:
        __import__(_m)
    except ImportError:
        pass

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x1000, 0x2000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, AT_RECURSIVE, AT_FDCWD = 1, 2, 4, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and the generic table (arm64)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NOBODY = 65534
SETUP_FAILED = 113  # exit code of a child whose sandbox could not be set up (the program never ran)

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _mirror(pid: int) -> None:
    """End this process the way child `pid` ended (exit code or signal), so the server sees the program's end."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else SETUP_FAILED)


def _read_byte(fd: int) -> bool:
    ok = os.read(fd, 1) == b"1"
    os.close(fd)
    return ok


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)  # from uid 0 this also clears every capability


def _drop_capabilities() -> None:
    """Creating the user namespace granted every capability inside it; without exec they stay unless dropped."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets, all zero
    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset(none)")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def _enter_shared_namespaces(cfg: dict, base: str, err_w: int) -> int:
    """Move the server into new user/mount/net/ipc/uts/pid namespaces: returns 0 in the new server process,
    S1's pid in this one. A setup failure is written to `err_w` (and nothing is served from there).

    Done once per server, because creating a network namespace costs ~10 ms. Three processes: S0 (this one)
    writes S1's uid/gid maps from outside, which lets a root evaluator map both root (for mounts that need
    root's file access) and nobody (to run programs as); S1 unshares; S2, S1's child, is pid 1 of the new pid
    namespace and serves. S0 and S1 only wait and mirror S2's end; S2 dies with S1 (PDEATHSIG), and every
    program dies with S2 (a pid namespace ends with its pid 1). In S2: the whole filesystem read-only, the
    evaluator's home hidden, no network interface up, and a tmpfs at `base` for the programs' directories.
    """
    root = os.getuid() == 0
    uid, gid = os.getuid(), os.getgid()
    ready_r, ready_w = os.pipe()
    maps_r, maps_w = os.pipe()
    s1 = os.fork()
    if s1:  # S0
        os.close(ready_w), os.close(maps_r)
        if _read_byte(ready_r):
            ids = f"0 0 1\n{NOBODY} {NOBODY} 1"
            maps = {"uid_map": ids, "gid_map": ids} if root else \
                {"setgroups": "deny", "uid_map": f"{uid} {uid} 1", "gid_map": f"{gid} {gid} 1"}
            try:
                for name, text in maps.items():
                    with open(f"/proc/{s1}/{name}", "w") as f:
                        f.write(text)
                os.write(maps_w, b"1")
            except OSError:
                pass  # S1 then reports that its maps were not written
        os.close(maps_w)
        return s1
    try:
        os.close(ready_r), os.close(maps_w)
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
                             | CLONE_NEWUTS), "unshare(user, mount, net, pid, ipc, uts)")
        os.write(ready_w, b"1")
        os.close(ready_w)
        if not _read_byte(maps_r):
            raise OSError("the uid/gid maps of the sandbox's user namespace could not be written")
        s2 = os.fork()
        if s2:  # S1
            os.close(err_w)
            _mirror(s2)
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _hide(cfg["hide"], cfg["keep"], base)
        attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)  # not nodev: /dev/null is needed
        _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                             ctypes.sizeof(attr)), "mount_setattr(/, read-only, recursive)")
        _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=1048576,mode=0711")  # made after: writable
        _probe_program_setup(cfg, base)
    except BaseException as exc:
        os.write(err_w, f"{type(exc).__name__}: {exc}".encode()[:2000])
        os._exit(SETUP_FAILED)
    os.close(err_w)
    return 0


def _probe_program_setup(cfg: dict, base: str) -> None:
    """Set up one program's sandbox in a throwaway child, so a kernel that refuses a step is found now."""
    workdir = os.path.join(base, "probe")
    os.mkdir(workdir, 0o700)
    os.chown(workdir, *_final_ids(cfg))
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    _check(_libc.setns(own, CLONE_NEWPID), "setns(own pid namespace)")
    _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
    os.close(own)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _enter_program_namespaces(cfg, workdir)
            with open(os.path.join(workdir, "probe"), "w") as f:
                f.write("ok")
            os._exit(0)
        except BaseException as exc:
            os.write(w, f"{type(exc).__name__}: {exc}".encode()[:2000])
            os._exit(1)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    os.rmdir(workdir)
    if status != 0:
        raise OSError(msg.decode("utf-8", "replace") or f"program setup ended with status {status}")


def _enter_program_namespaces(cfg: dict, workdir: str) -> None:
    """In a program's child (already pid 1 of its own pid namespace): own mount namespace, a size-capped
    tmpfs as working directory, a /proc that shows only its own processes; then the final user, no capabilities."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(mount)")
    final_uid, final_gid = _final_ids(cfg)
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['tmpfs_bytes']},mode=0700,uid={final_uid},gid={final_gid}")
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # kernels refuse a new proc where the old one is partly masked (containers): hide it instead
        _mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4096,mode=0555")
    if cfg["drop_to_nobody"]:
        _drop_to_nobody()
    _drop_capabilities()


def _final_ids(cfg: dict) -> tuple[int, int]:
    return (NOBODY, NOBODY) if cfg["drop_to_nobody"] else (os.getuid(), os.getgid())


def _hidden_dirs(hide: list[str], keep: list[str], for_nobody: bool) -> list[str]:
    """The directories to cover: those asked for, plus (for programs run as nobody) every private directory
    above the interpreter's files: it is covered and the interpreter put back, so nobody can import the
    standard library while still seeing nothing else of, say, /root."""
    dirs = set(hide)
    if for_nobody:
        for k in keep:
            parts = k.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/" + "/".join(parts[:i])
                if not os.stat(d).st_mode & 0o001:
                    dirs.add(d)
                    break
    out: list[str] = []
    for d in sorted(dirs, key=len):  # outermost first; one inside an already covered directory is moot
        if d not in ("", "/") and not any(d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return out


def _hide(hide: list[str], keep: list[str], workdir: str) -> None:
    """Cover each `hide` directory (the evaluator's home: keys, tokens) with an empty tmpfs, putting back the
    `keep` directories inside it (the interpreter's own files) by moving bind mounts of them into place."""
    for h in hide:
        if not os.path.isdir(h) or workdir == h or workdir.startswith(h.rstrip("/") + "/"):
            continue
        inside = [k for k in keep if k.startswith(h.rstrip("/") + "/") and os.path.isdir(k)]
        stages = []
        for i, k in enumerate(inside):
            stage = os.path.join(workdir, f".keep{i}")
            os.mkdir(stage)
            _mount(k, stage, None, MS_BIND | MS_REC)
            stages.append(stage)
        _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=4096,mode=0755")
        for k, stage in zip(inside, stages):
            target = os.path.join(h, os.path.relpath(k, h))
            os.makedirs(target, exist_ok=True)
            _mount(stage, target, None, MS_MOVE)
            os.rmdir(stage)


def _set_limits(limits: dict) -> None:
    for name, value in (("RLIMIT_CPU", limits["cpu_seconds"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_FSIZE", limits["file_size_bytes"]), ("RLIMIT_NPROC", limits["max_processes"]),
                        ("RLIMIT_CORE", 0)):
        soft = hard = int(value)
        if name == "RLIMIT_CPU":
            hard = soft + 1  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _child(job: dict, cfg: dict, workdir: str, out_w: int, err_w: int, done_w: int, setup_w: int) -> None:
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
            _enter_program_namespaces(cfg, workdir)
        elif cfg["drop_to_nobody"]:
            _drop_to_nobody()
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
        try:
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)


class _Running:
    def __init__(self, job: dict, pid: int, workdir: str, fds: dict[str, int], deadline: float):
        self.job, self.pid, self.workdir, self.fds, self.deadline = job, pid, workdir, fds, deadline
        self.start = time.monotonic()
        self.buf = {"out": bytearray(), "err": bytearray(), "done": bytearray(), "setup": bytearray()}
        self.truncated = False
        self.timed_out = False


class Server:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.sel = selectors.DefaultSelector()
        self.queue: list[dict] = []
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
        os.chown(workdir, *_final_ids(self.cfg))
        pipes = {k: os.pipe() for k in ("out", "err", "done", "setup")}
        if self.cfg["namespaces"]:  # the next child is pid 1 of a fresh pid namespace of its own
            _check(_libc.setns(self.own_pid_ns, CLONE_NEWPID), "setns(own pid namespace)")
            _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
        pid = os.fork()
        if pid == 0:
            _child(job, self.cfg, workdir, pipes["out"][1], pipes["err"][1], pipes["done"][1], pipes["setup"][1])
        try:
            os.setpgid(pid, pid)  # also here, so a kill right after fork already reaches the group
        except OSError:
            pass
        fds = {}
        for k, (r, w) in pipes.items():
            os.close(w)
            os.set_blocking(r, False)
            fds[k] = r
        run = _Running(job, pid, workdir, fds, time.monotonic() + float(job["timeout"]))
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


def main() -> None:
    cfg = json.loads(sys.argv[1])
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the evaluator gone: stop, do not linger
    cfg["drop_to_nobody"] = os.geteuid() == 0
    cfg["keep"] = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    cfg["hide"] = _hidden_dirs([os.path.realpath(p) for p in cfg.get("hide", [])], cfg["keep"],
                               cfg["drop_to_nobody"])
    cfg["base"] = base = tempfile.mkdtemp(prefix="accbench-sandbox-")
    os.chmod(base, 0o711)
    reason = None
    if cfg["namespaces"]:
        err_r, err_w = os.pipe()
        s1 = _enter_shared_namespaces(cfg, base, err_w)
        if s1:  # S0: serve from inside when that worked, else here without namespaces
            os.close(err_w)
            msg = b""
            while chunk := os.read(err_r, 4096):
                msg += chunk
            if msg:
                os.waitpid(s1, 0)
                reason, cfg["namespaces"] = msg.decode("utf-8", "replace"), False
            else:
                signal.signal(signal.SIGTERM, lambda *_: os.kill(s1, signal.SIGKILL))
                _, status = os.waitpid(s1, 0)
                shutil.rmtree(base, ignore_errors=True)
                os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
        os.close(err_r)
    server = Server(cfg)
    server.emit({"hello": True, "namespaces": cfg["namespaces"], "namespace_error": reason,
                 "user": "nobody" if cfg["drop_to_nobody"] else "current user"})
    signal.signal(signal.SIGTERM, lambda *_: (server.shutdown(), os._exit(0)))
    try:
        server.serve()
    finally:
        server.shutdown()
        if not cfg["namespaces"]:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
