"""Run directories are accbench's own: --overwrite deletes only runs, a live run is locked, SIGTERM is an interrupt."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from accbench.cli import main
from accbench.rundir import LOCK, MARKER


def _config(tmp_path, model_dir, eval_txt) -> str:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
           "eval": {"eval_pos": ["pretrain"], "name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 2,
                    "num_samples": 2}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_model_dir, eval_txt, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("three years of work")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    code = main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(folder), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "not an accbench run directory" in err and "thesis.tex" in err and str(folder) in err
    assert (folder / "thesis.tex").read_text() == "three years of work" and (folder / "data.csv").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "thesis.tex"]  # nothing added either

    # --resume into it is refused too, and so is a plain run
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(folder), "--resume"]) == 2
    assert "not an accbench run directory" in capsys.readouterr().err
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(folder)]) == 2
    assert (folder / "thesis.tex").is_file()


def test_overwrite_replaces_a_run_and_releases_the_lock(tmp_path, tiny_model_dir, eval_txt):
    run = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    assert main(["run", cfg, "-o", str(run)]) == 0
    assert (run / MARKER).is_file() and not (run / LOCK).exists()  # released at the end
    (run / "stale.txt").write_text("x")
    assert main(["run", cfg, "-o", str(run), "--overwrite"]) == 0
    assert not (run / "stale.txt").exists() and (run / "results.json").is_file()


def test_a_live_run_is_locked_and_a_stale_lock_is_taken_over(tmp_path, tiny_model_dir, eval_txt, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    assert main(["run", cfg, "-o", str(run)]) == 0
    first = json.loads((run / "results.json").read_text())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        for flags in (["--resume"], ["--overwrite"]):
            assert main(["run", cfg, "-o", str(run), *flags]) == 2
            err = capsys.readouterr().err
            assert f"in use by process {other.pid}" in err and LOCK in err
        assert json.loads((run / "results.json").read_text()) == first  # untouched
    finally:
        other.kill()
        other.wait()
    # the process is gone: its lock is stale and the resume goes ahead
    assert main(["run", cfg, "-o", str(run), "--resume"]) == 0
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("target", ["file", "below_file", "devnull"])
def test_output_that_cannot_be_a_directory(tmp_path, tiny_model_dir, eval_txt, capsys, target):
    f = tmp_path / "afile"
    f.write_text("keep me")
    out = {"file": f, "below_file": f / "run", "devnull": "/dev/null"}[target]
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and str(out) in err
    assert f.read_text() == "keep me" and os.path.exists("/dev/null")


def test_sigterm_is_an_interrupt_with_a_message(tmp_path, tiny_model_dir, eval_txt, capsys, monkeypatch):
    import accbench.pipeline.spine as pipeline  # the run's spine calls evaluate_position (pipeline/spine.py)

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(pipeline, "evaluate_position", killed)
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(run)]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "interrupted" and res["error"] == "terminated by SIGTERM" and not (run / LOCK).exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler does not outlive the command


def test_a_run_from_before_markers_resumes_but_is_never_deleted(tmp_path, tiny_model_dir, eval_txt, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    assert main(["run", cfg, "-o", str(run)]) == 0
    (run / MARKER).unlink()  # as an older accbench left it
    assert main(["run", cfg, "-o", str(run), "--overwrite"]) == 2
    assert "not an accbench run directory" in capsys.readouterr().err and (run / "results.json").is_file()
    assert main(["run", cfg, "-o", str(run), "--resume"]) == 0
    assert (run / MARKER).is_file()
