"""Linux namespaces, mounts and credentials for the code sandbox (used by sandbox_server.py, standard library only).

Shared by every program of one server, set up once (a network namespace costs ~10 ms to create): new user, mount,
network, ipc, uts and pid namespaces; the whole filesystem read-only; the evaluator's home and any private
directory above the interpreter covered by an empty tmpfs (the interpreter's own files put back); no network
interface up. Per program, in its child: a pid namespace of its own (it is pid 1: other programs and the server
are invisible and unkillable, and everything it starts dies with it), a mount namespace with a size-capped tmpfs
as working directory and a /proc of its own; then uid nobody (when the evaluator is root) and no capabilities.
With or without namespaces, a seccomp filter (`deny_unix_sockets`) refuses to create Unix-domain sockets, so a
program cannot connect to the host's filesystem sockets (a read-only mount does not stop `connect`).
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Callable

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 1, 2, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and the generic table (arm64)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
NOBODY = 65534
SETUP_FAILED = 113  # exit code of a child whose sandbox could not be set up (the program never ran)

libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def mirror(pid: int) -> None:
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


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from uid 0 this also clears every capability


def _drop_capabilities() -> None:
    """Creating the user namespace granted every capability inside it; without exec they stay unless dropped."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets, all zero
    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset(none)")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


# audit arch -> (socket, io_uring_setup) syscall numbers
_SECCOMP_ARCHES = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
AF_UNIX, EACCES = 1, 13


def deny_unix_sockets() -> None:
    """Install a seccomp filter: socket(AF_UNIX, ...) and io_uring_setup fail with EACCES, and any syscall of
    another ABI (32-bit compat, x32: a way around the filter) fails too. Needs no_new_privs (set here)."""
    if os.uname().machine not in _SECCOMP_ARCHES:
        raise OSError(f"no syscall table for {os.uname().machine}")
    arch, nr_socket, nr_uring = _SECCOMP_ARCHES[os.uname().machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | EACCES
    prog = [
        (ld, 0, 0, 4),                 # 0: arch
        (jeq, 1, 0, arch),             # 1: our ABI -> 3
        (ret, 0, 0, deny),             # 2: another ABI: refuse everything
        (ld, 0, 0, 0),                 # 3: syscall number
        (jge, 6, 0, 0x40000000),       # 4: x32 numbering -> 11
        (jeq, 5, 0, nr_uring),         # 5: io_uring_setup -> 11
        (jeq, 1, 0, nr_socket),        # 6: socket -> 8
        (ret, 0, 0, allow),            # 7
        (ld, 0, 0, 16),                # 8: args[0] (domain), low 32 bits
        (jeq, 1, 0, AF_UNIX),          # 9: AF_UNIX -> 11
        (ret, 0, 0, allow),            # 10
        (ret, 0, 0, deny),             # 11
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*f) for f in prog])
    fprog = _SockFprog(len(prog), filters)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "prctl(SECCOMP_MODE_FILTER)")


def enter_shared_namespaces(cfg: dict, base: str, err_w: int) -> int:
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
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
                           | CLONE_NEWUTS), "unshare(user, mount, net, pid, ipc, uts)")
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        os.write(ready_w, b"1")
        os.close(ready_w)
        if not _read_byte(maps_r):
            raise OSError("the uid/gid maps of the sandbox's user namespace could not be written")
        s2 = os.fork()
        if s2:  # S1
            os.close(err_w)
            mirror(s2)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _hide(cfg["hide"], cfg["keep"], base)
        attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)  # not nodev: /dev/null is needed
        check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
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
    os.chown(workdir, *final_ids(cfg))
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    check(libc.setns(own, CLONE_NEWPID), "setns(own pid namespace)")
    check(libc.unshare(CLONE_NEWPID), "unshare(pid)")
    os.close(own)

    def setup() -> None:
        enter_program_namespaces(cfg, workdir)
        with open(os.path.join(workdir, "probe"), "w") as f:
            f.write("ok")

    problem = probe_in_child(setup)
    os.rmdir(workdir)
    if problem:
        raise OSError(problem)


def probe_in_child(step: Callable[[], None]) -> str | None:
    """Run `step` in a throwaway child: None when it worked, else what went wrong (its exception or status)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            step()
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
    return None if status == 0 else (msg.decode("utf-8", "replace") or f"the child ended with status {status}")


def enter_program_namespaces(cfg: dict, workdir: str) -> None:
    """In a program's child (already pid 1 of its own pid namespace): own mount namespace, a size-capped
    tmpfs as working directory, a /proc that shows only its own processes; then the final user, no capabilities."""
    check(libc.unshare(CLONE_NEWNS), "unshare(mount)")
    final_uid, final_gid = final_ids(cfg)
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['tmpfs_bytes']},mode=0700,uid={final_uid},gid={final_gid}")
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # kernels refuse a new proc where the old one is partly masked (containers): hide it instead
        _mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4096,mode=0555")
    if cfg["drop_to_nobody"]:
        drop_to(NOBODY)
    _drop_capabilities()


def final_ids(cfg: dict) -> tuple[int, int]:
    return (NOBODY, NOBODY) if cfg["drop_to_nobody"] else (os.getuid(), os.getgid())


def hidden_dirs(hide: list[str], keep: list[str], for_nobody: bool) -> list[str]:
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


