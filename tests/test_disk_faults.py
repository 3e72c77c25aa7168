"""A full disk or a read-only output is a clear exit 2 naming the path, the run marked failed, nothing half-written.

The full-disk cases mount a small tmpfs (root, or a user allowed to mount); elsewhere they skip."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from accbench.iofaults import as_disk_error


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs directory; unmounted afterwards; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        if not _mount(d, options):
            pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _config(tmp_path, model_dir, eval_txt, **eval_extra) -> str:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
           "eval": {"eval_pos": ["pretrain"], "name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4,
                    **eval_extra}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_full_disk_is_exit_2_with_the_path_and_status_failed(tmp_path, tiny_model_dir, eval_txt, tmpfs, capsys):
    disk = tmpfs("size=512k")
    run = disk / "run"
    # the baseline's fidelity recording (top 256 of 512 tokens, ~1.3 KB per token) cannot fit in 512 KB
    code = main(["run", _config(tmp_path, tiny_model_dir, eval_txt, fidelity={"top_k": 256}), "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no space left on" in err and str(run / "fidelity") in err and "--resume" in err
    assert "Traceback" not in err and "internal error" not in err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "failed" and "no space left on" in res["error"]
    assert not list(run.rglob("*.tmp")) and not list((run / "fidelity").iterdir())  # the partial recording is gone


def test_read_only_output_is_exit_2(tmp_path, tiny_model_dir, eval_txt, tmpfs, capsys):
    ro = tmpfs("size=64k,ro")
    code = main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(ro / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {ro / 'run'}" in err and "Read-only file system" in err
    assert "Traceback" not in err and "internal error" not in err


def test_disk_errors_are_recognised_in_wrapped_form():
    full = as_disk_error(OSError(errno.ENOSPC, "No space left on device", "/runs/x/results.json"), "/runs/x")
    assert full is not None and full.exit_code == 2 and "no space left on /runs/x/results.json" in str(full)
    # safetensors' Rust error and torch's own wording carry the OS error in their text only
    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                           "left on device\" })")
    assert "no space left on /runs/x" in str(as_disk_error(wrapped, "/runs/x"))
    ro = as_disk_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/x")
    assert "cannot write /mnt/ro/run: Read-only file system" in str(ro)
    assert as_disk_error(ValueError("bad value"), "/x") is None
    assert as_disk_error(OSError(errno.ENOENT, "No such file", "/x"), "/x") is None


def test_full_disk_while_saving_a_model(tmp_path, tiny_model_dir, eval_txt, tmpfs, capsys):
    disk = tmpfs("size=256k")  # the tiny model's weights (~0.6 MB) do not fit; results.json does
    run = disk / "run"
    cfg = yaml.safe_load(Path(_config(tmp_path, tiny_model_dir, eval_txt, eval_pos=["pretrain", "fake_quant"],
                                      num_samples=2)).read_text())
    cfg.update(quant={"method": "RTN", "weight": {"bit": 4, "group_size": 32}}, save={"save_fake": True})
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["run", str(tmp_path / "q.yaml"), "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and f"no space left on {run / 'models' / 'fake_quant_model'}" in err, err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "failed" and len(res["ppl"]) == 2  # what was computed before the fault is kept
    assert not (run / "models" / "fake_quant_model").exists()  # no half-saved model for a resume to trust
