"""bench/bench_methods.py (the one-protocol table of every method in docs/quantization.md) runs, and its numbers are
right: one row run as a user runs the script (a subprocess, `--quick`) equals an independent computation of the
same thing (RTN through the quantizer directly, perplexity and KL by hand on the same windows). About 15 s once the
built-in model is cached (test_quant_builtin builds it in the default suite too).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_methods.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_methods", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_methods"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_rows_are_selected_by_method_or_id_and_a_wrong_name_is_exit_2(capsys):
    bm = _module()
    assert [r.id for r in bm.select_rows("wanda")] == ["50% unstructured/Wanda", "2:4/Wanda"]
    assert [r.id for r in bm.select_rows("W4A4/QuaRot, ShortGPT")] == ["W4A4/QuaRot", "2 of 4 blocks/ShortGPT"]
    assert {r.setting for r in bm.select_rows("RTN")} == {"W3 g128", "W4A4", "W8A8"}
    assert len(bm.select_rows(None)) == len(bm.ROWS) == len(bm.ROWS_BY_ID)  # ids are unique
    assert bm.main(["--only", "RTN,Wandaa"]) == 2
    assert "no row named ['wandaa']" in capsys.readouterr().err
    # every row is a config accbench accepts (what `accbench validate` checks), before anything runs
    from accbench.config import validate_config

    for r in bm.ROWS:
        for k, step in enumerate(r.steps):
            validate_config(bm.run_config(bm.Protocol(), step, "builtin:tiny-llama",
                                          None if k == len(r.steps) - 1 else "/tmp/x"))


def _independent_rtn_w3(windows_n: int) -> tuple[float, float, float, float]:
    """(float ppl, RTN W3 g128 ppl, KL, top-1 agreement) on the first windows of the built-in test text, by hand."""
    import torch

    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_model
    from accbench.quant.methods import METHOD_SPECIAL_KEYS
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.quant.spec import QuantSpec

    torch.set_num_threads(1)
    loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
    windows = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), loaded.tokenizer,
                               256)[: windows_n * 256].view(windows_n, 256)
    model = copy.deepcopy(loaded.model)
    spec = QuantSpec("RTN", WeightQuantSpec(3, False, "per_group", 128), None, dict(METHOD_SPECIAL_KEYS["RTN"]),
                     False, 256)
    fake_quantize_model(model, spec, None, "cpu", transform_model(model, spec, None, "cpu"))
    with torch.no_grad():
        ref = torch.log_softmax(loaded.model(input_ids=windows).logits[:, :-1].float(), -1)
        lp = torch.log_softmax(model(input_ids=windows).logits[:, :-1].float(), -1)
    labels = windows[:, 1:, None]
    nll = lambda x: -x.gather(-1, labels).squeeze(-1).double().mean(1).mean().item()  # noqa: E731
    kl = (ref.exp() * (ref - lp)).sum(-1).double().mean().item()
    return math.exp(nll(ref)), math.exp(nll(lp)), kl, (ref.argmax(-1) == lp.argmax(-1)).double().mean().item()


def test_quick_row_equals_an_independent_computation(tmp_path: Path) -> None:
    float_ppl, ppl, kl, top1 = _independent_rtn_w3(8)  # first: builds the built-in model when it is not cached
    out = tmp_path / "methods.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "W3 g128/RTN", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == "accbench.bench_methods/1" and doc["quick"] is True
    assert doc["protocol"]["test_windows"] == 8 and doc["environment"]["torch_threads"] == 1
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["id"] == "W3 g128/RTN" and row["torch_threads"] == 1
    assert row["tokens"] == 8 * 255
    assert row["float_ppl"] == pytest.approx(float_ppl, rel=1e-5)
    assert row["ppl"] == pytest.approx(ppl, rel=1e-5)
    assert row["kl"] == pytest.approx(kl, rel=1e-4)
    assert row["top1"] == pytest.approx(top1, abs=1e-9)
    assert ppl > 1.03 * float_ppl  # 3-bit RTN visibly hurts the built-in model
    assert row["quant_wall_s"] >= 0 and row["quant_cpu_s"] >= 0 and row["peak_rss_delta_mb"] >= 0
    assert "fake_quant" not in row["stage_timings"] and "quant_fake" in row["stage_timings"]
    assert f"| W3 g128 | RTN | {row['ppl']:.3f} |" in proc.stdout  # the printed table holds the row
