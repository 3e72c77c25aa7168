"""Bad inputs are exit 2 with a message naming the file or key and the fix, never an internal error, and those
that need no weights are found before the model loads (and by `accbench validate`).

Covered elsewhere: -o at a file, below a file and at /dev/null (test_rundir.py), -o on a read-only mount
(test_disk_faults.py), a judge answering HTTP 200 with a body that is not JSON (test_mtbench.py)."""

from __future__ import annotations

import shutil

import pytest

from accbench.cli import main

BASE = """model: {{path: {model}, torch_dtype: float32, device: {device}}}
eval: {{name: custom, path: {eval}, seq_len: 64, bs: 2, num_samples: 2}}
tasks:
  - {{name: t, type: perplexity, path: {eval}, seq_len: 64, limit: 1}}
"""


@pytest.fixture
def no_model_load(monkeypatch):
    import accbench.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(models, "load_model", refuse)


def _write(tmp_path, model, eval_path, device="cpu", extra: bytes = b"") -> str:
    p = tmp_path / "cfg.yaml"
    p.write_bytes(BASE.format(model=model, eval=eval_path, device=device).encode() + extra)
    return str(p)


def _damaged_model(tmp_path, tiny_model_dir, what: str):
    d = tmp_path / what
    shutil.copytree(tiny_model_dir, d)
    if what == "no_tokenizer":
        for f in d.glob("tokenizer*"):
            f.unlink()
    else:
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


CASES = {
    # name: (how to build the config args, words the message must have)
    "latin1_comment": (lambda t, m, e: [_write(t, m, e, extra="# caf\xe9\n".encode("latin-1"))],
                       ["not UTF-8", "cfg.yaml:5", "save it as UTF-8"]),
    "utf16_file": (lambda t, m, e: [str(_text(t, "cfg16.yaml", BASE.format(model=m, eval=e, device="cpu")
                                               .encode("utf-16")))], ["not UTF-8", "cfg16.yaml"]),
    "override_index_out_of_range": (lambda t, m, e: [_write(t, m, e), "tasks.5.limit=1"],
                                    ["tasks.5.limit", "out of range"]),
    "override_index_not_a_number": (lambda t, m, e: [_write(t, m, e), "tasks.x.limit=1"],
                                    ["tasks.x.limit", "index it with a number"]),
    "override_into_a_value": (lambda t, m, e: [_write(t, m, e), "model.path.sub=1"],
                              ["model.path.sub", "is a value"]),
    "model_without_tokenizer": (lambda t, m, e: [_write(t, _damaged_model(t, m, "no_tokenizer"), e)],
                                ["has no tokenizer", "model.tokenizer_path"]),
    "truncated_safetensors": (lambda t, m, e: [_write(t, _damaged_model(t, m, "truncated"), e)],
                              ["model.safetensors is damaged", "truncated"]),
    "device_banana": (lambda t, m, e: [_write(t, m, e, device="banana")], ["model.device", "'banana' is not a device"]),
    "eval_text_shorter_than_a_window": (lambda t, m, e: [_write(t, m, _text(t, "short.txt", b"tiny text"))],
                                        ["short.txt", "fewer than one window of seq_len=64"]),
    "binary_eval_file": (lambda t, m, e: [_write(t, m, _text(t, "bin.txt", bytes(range(256)) * 20))],
                         ["bin.txt is not UTF-8 text"]),
}


def _text(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_exit_2_before_the_model_loads(case, tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load):
    build, words = CASES[case]
    args = build(tmp_path, tiny_model_dir, eval_txt)
    code = main(["run", *args[:1], "-o", str(tmp_path / "run"), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in err, (w, err)
    if case != "eval_text_shorter_than_a_window":  # that one needs the tokenizer to count
        assert main(["validate", *args]) == 2
        again = capsys.readouterr().err
        assert all(w in again for w in words), again


def test_cuda_on_a_cpu_only_torch(tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _write(tmp_path, tiny_model_dir, eval_txt, device="cuda")
    assert main(["run", cfg, "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.device: 'cuda', but this torch has no usable CUDA device" in err and "model.device: cpu" in err
