"""The quant stage end to end through the CLI: positions, saving, reloading, and bad input before calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.cli import main


def _config(tmp_path: Path, model_dir: Path, data: Path, quant: dict, **extra) -> Path:
    cfg = {
        "base": {"seed": 0},
        "model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
        "calib": {"name": "custom", "path": str(data), "n_samples": 8, "bs": -1, "seq_len": 64,
                  "preproc": "wikitext2_gptq", "seed": 0},
        "eval": {"name": "custom", "path": str(data), "seq_len": 64, "bs": 4,
                 "eval_pos": ["pretrain", "transformed", "fake_quant"]},
        "quant": quant,
        "save": {"save_trans": True, "save_fake": True},
        **extra,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


pytestmark = pytest.mark.usefixtures("one_thread")


def _run_cli(cfg: Path, out: Path, capsys) -> tuple[int, str]:
    """The real CLI entry point, in-process (a subprocess would spend most of its time importing torch)."""
    code = main(["run", str(cfg), "-o", str(out)])
    return code, capsys.readouterr().err


def _ppl(res: dict, position: str) -> float:
    return next(p["ppl"] for p in res["ppl"] if p["position"] == position)


def test_awq_end_to_end_saves_and_reloads(tmp_path, tiny_model_dir, eval_txt, capsys):
    quant = {"method": "Awq", "weight": {"bit": 3, "symmetric": False, "granularity": "per_group", "group_size": 32},
             "special": {"trans": True, "trans_version": "v2", "weight_clip": True, "clip_version": "v2"}}
    cfg = _config(tmp_path, tiny_model_dir, eval_txt, quant)
    out = tmp_path / "run"
    code, err = _run_cli(cfg, out, capsys)
    assert code == 0, err[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete"
    pre, trans, fake = (_ppl(res, p) for p in ("pretrain", "transformed", "fake_quant"))
    assert abs(trans / pre - 1) < 1e-3  # AWQ's transform is function-preserving
    assert fake != pytest.approx(pre, rel=1e-4)
    assert res["models"]["transformed"] == str(out / "models" / "transformed_model")
    assert res["quant"]["method"] == "Awq" and res["quant"]["calib_samples"] == 8

    # the saved fake-quant model reproduces the reported number with plain transformers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.evaluate.perplexity import perplexity

    saved = Path(res["models"]["fake_quant"])
    model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(saved)
    stream = ppl_token_stream("custom", load_texts("custom", str(eval_txt)), tok, 64)
    again = perplexity(model, stream, 64, 4, "cpu", progress=False).ppl
    assert again == pytest.approx(fake, rel=1e-5)
    trans_model = AutoModelForCausalLM.from_pretrained(out / "models" / "transformed_model", dtype=torch.float32)
    assert perplexity(trans_model, stream, 64, 4, "cpu", progress=False).ppl == pytest.approx(trans, rel=1e-5)


def test_gptq_and_smoothquant_end_to_end(tmp_path, tiny_model_dir, eval_txt, capsys):
    quant = {"method": "GPTQ", "weight": {"bit": 4, "granularity": "per_group", "group_size": 32},
             "special": {"actorder": True, "blocksize": 32}, "quant_out": True}
    cfg = _config(tmp_path, tiny_model_dir, eval_txt, quant, save={"save_fake": True})
    code, err = _run_cli(cfg, tmp_path / "gptq", capsys)
    assert code == 0, err[-3000:]
    res = json.loads((tmp_path / "gptq" / "results.json").read_text())
    assert _ppl(res, "transformed") == _ppl(res, "pretrain")  # GPTQ has no equivalent transform
    assert res["quant"]["gptq_error_sum"] > 0 and "transformed" not in res["models"]

    quant = {"method": "SmoothQuant", "weight": {"bit": 8, "symmetric": True, "granularity": "per_channel"},
             "act": {"bit": 8, "symmetric": True, "granularity": "per_token"}, "special": {"alpha": 0.8}}
    cfg = _config(tmp_path, tiny_model_dir, eval_txt, quant, save={})
    code, err = _run_cli(cfg, tmp_path / "sq", capsys)
    assert code == 0, err[-3000:]
    res = json.loads((tmp_path / "sq" / "results.json").read_text())
    pre, trans, fake = (_ppl(res, p) for p in ("pretrain", "transformed", "fake_quant"))
    assert abs(trans / pre - 1) < 1e-3 and abs(fake / pre - 1) < 0.02 and fake != pre


@pytest.mark.parametrize("quant,calib,match", [
    ({"method": "RTN", "weight": {"bit": 4, "group_size": 48}}, True,
     "group_size 48 does not divide the input dimension 64"),
    ({"method": "GPTQ", "weight": {"bit": 9}}, True, "quant.weight.bit"),
    ({"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}, "special": {"blocksze": 64}}, True,
     "did you mean 'blocksize'"),
    ({"method": "Awq", "weight": {"bit": 4, "group_size": 32}}, False, "needs calibration data"),
    ({"method": "RTN", "weight": {"bit": 8, "granularity": "per_channel"},
      "act": {"bit": 8, "granularity": "per_tensor", "static": True}}, False, "needs calibration data"),
    ({"method": "RTN", "weight": {"bit": 4, "group_size": 32},
      "act": {"bit": 8, "granularity": "per_token", "static": True}}, True, "per_tensor"),
])
def test_bad_quant_input_fails_before_loading(tmp_path, tiny_model_dir, eval_txt, capsys, quant, calib, match):
    cfg = _config(tmp_path, tiny_model_dir, eval_txt, quant)
    if not calib:
        data = yaml.safe_load(cfg.read_text())
        del data["calib"]
        data["eval"]["eval_pos"] = ["fake_quant"]
        cfg.write_text(yaml.safe_dump(data))
    code = main(["run", str(cfg), "-o", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err
    assert "Traceback" not in err
    res_path = tmp_path / "bad" / "results.json"
    if res_path.exists():  # errors after config validation: no perplexity was computed
        assert json.loads(res_path.read_text())["ppl"] == []


def test_calibration_data_too_short_is_reported(tmp_path, tiny_model_dir, capsys):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n" * 30)
    cfg = _config(tmp_path, tiny_model_dir, short, {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}},
                  eval={"name": "custom", "path": str(short), "seq_len": 16, "eval_pos": ["fake_quant"]})
    data = yaml.safe_load(cfg.read_text())
    data["calib"]["seq_len"] = 4096
    cfg.write_text(yaml.safe_dump(data))
    code = main(["run", str(cfg), "-o", str(tmp_path / "short_run")])
    err = capsys.readouterr().err
    assert code == 2 and "not more than calib.seq_len=4096" in err and "lower calib.seq_len" in err
