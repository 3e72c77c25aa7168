"""llmc's OmniQuant and HQQ configs, and the two-step AWQ -> OmniQuant combinations, run end to end from the CLI
on a tiny model (paths changed; sizes and epochs shrunk by overrides so CPU tests stay fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from llmc_fixtures import LLMC, with_paths

from accbench.cli import main

needs_llmc = pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")
pytestmark = [needs_llmc, pytest.mark.usefixtures("one_thread")]

SMALL = ["calib.n_samples=4", "calib.seq_len=32", "calib.bs=2", "eval.seq_len=64", "eval.bs=4"]


def _config(tmp_path: Path, name: str, model: str, data: Path, save: Path, **special_paths: str) -> Path:
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), model, data, save)
    cfg["model"]["torch_dtype"] = "float32"
    cfg["quant"]["special"].update(special_paths)  # llmc's scale_path / clip_path: paths a user sets too
    p = tmp_path / (Path(name).stem + ".yaml")
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _run(cfg: Path, out: Path, capsys, *overrides: str) -> dict:
    code = main(["run", str(cfg), "-o", str(out), *overrides])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    return json.loads((out / "results.json").read_text())


def _ppl(res: dict) -> dict[str, float]:
    return {p["position"]: p["ppl"] for p in res["ppl"]}


@pytest.mark.parametrize("name", ["quantization/methods/OmniQuant/omniq_w_only.yml",
                                  "quantization/methods/OmniQuant/omniq_w_a.yml"])
def test_omniquant_configs_run(name, tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _config(tmp_path, name, str(tiny_model_dir), eval_txt, tmp_path / "save")
    res = _run(cfg, tmp_path / "run", capsys, *SMALL, "quant.weight.group_size=32", "quant.special.epochs=2")
    assert res["status"] == "complete"
    ppl = _ppl(res)
    assert set(ppl) == {"pretrain", "transformed", "fake_quant"}
    assert res["quant"]["method"] == "OmniQuant"
    losses = res["quant"]["epoch_losses"]
    assert sorted(losses) == ["model.layers.0", "model.layers.1"]
    assert all(len(v) == 2 and all(x >= 0 for x in v) for v in losses.values())
    if "w_only" in name:  # LWC only: the transformed model is the original
        assert ppl["transformed"] == pytest.approx(ppl["pretrain"], rel=1e-6)
    else:  # LET folded in: close to the original (the q/k scale meets RoPE, as in llmc)
        assert ppl["transformed"] == pytest.approx(ppl["pretrain"], rel=0.02)
    assert ppl["fake_quant"] != ppl["pretrain"]


def test_hqq_config_runs_without_calibration(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _config(tmp_path, "quantization/methods/HQQ/hqq_w_only.yml", str(tiny_model_dir), eval_txt,
                  tmp_path / "save")
    assert "calib" not in yaml.safe_load(cfg.read_text())
    res = _run(cfg, tmp_path / "run", capsys, "eval.seq_len=64", "eval.bs=4", "quant.weight.group_size=32")
    assert res["quant"]["method"] == "HQQ" and res["quant"]["weight"]["round_zp"] is False
    assert res["quant"]["calib_samples"] == 0
    ppl = _ppl(res)
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.1


def test_awq_then_omniquant_weight_only(tmp_path, tiny_model_dir, eval_txt, capsys):
    """awq_comb_omni/w3a16g128: step 1 saves the AWQ-transformed model, step 2 trains LWC on it, its clip factors
    initialised by AWQ's clip search."""
    trans = tmp_path / "awq_trans"
    step1 = _config(tmp_path, "quantization/combination/awq_comb_omni/w3a16g128/step_1_awq.yml",
                    str(tiny_model_dir), eval_txt, trans)
    r1 = _run(step1, tmp_path / "run1", capsys, *SMALL, "quant.weight.group_size=32")
    assert (trans / "transformed_model" / "config.json").is_file()
    step2 = _config(tmp_path, "quantization/combination/awq_comb_omni/w3a16g128/step_2_omniq.yml",
                    str(trans / "transformed_model"), eval_txt, tmp_path / "save2")
    r2 = _run(step2, tmp_path / "run2", capsys, *SMALL, "quant.weight.group_size=32", "quant.special.epochs=2")
    assert r2["quant"]["special"]["search_clip_init"] is True and r2["quant"]["special"]["aug_loss"] is True
    # both quantize the same (AWQ-scaled) weights to W3 g32: AWQ's own result with round-to-nearest vs OmniQuant's
    assert _ppl(r2)["fake_quant"] < _ppl(r1)["fake_quant"] * 1.05


def test_awq_then_omniquant_w8a8_loads_scales_and_clips(tmp_path, tiny_model_dir, eval_txt, capsys):
    """awq_comb_omni/w8a8: AWQ saves its scales and v2 clips to scale_path / clip_path; OmniQuant starts LET and
    LWC from them (load_clip, search_scale_init)."""
    scales, clips = tmp_path / "scales", tmp_path / "clips"
    step1 = _config(tmp_path, "quantization/combination/awq_comb_omni/w8a8/step_1_awq.yml", str(tiny_model_dir),
                    eval_txt, tmp_path / "save1", scale_path=str(scales), clip_path=str(clips))
    _run(step1, tmp_path / "run1", capsys, *SMALL)
    assert (scales / "scales.pt").is_file() and (clips / "clips.pt").is_file()
    step2 = _config(tmp_path, "quantization/combination/awq_comb_omni/w8a8/step_2_omniq.yml", str(tiny_model_dir),
                    eval_txt, tmp_path / "save2", scale_path=str(scales), clip_path=str(clips))
    r2 = _run(step2, tmp_path / "run2", capsys, *SMALL, "quant.special.epochs=1", "eval.eval_pos=[pretrain,fake_quant]")
    ppl = _ppl(r2)
    assert abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.05  # W8A8


def test_load_clip_without_the_file_names_it(tmp_path, tiny_model_dir, eval_txt, capsys):
    step2 = _config(tmp_path, "quantization/combination/awq_comb_omni/w8a8/step_2_omniq.yml", str(tiny_model_dir),
                    eval_txt, tmp_path / "save2", scale_path=str(tmp_path / "nowhere"),
                    clip_path=str(tmp_path / "nowhere"))
    code = main(["run", str(step2), "-o", str(tmp_path / "run"), *SMALL, "quant.special.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "scales.pt" in err and "save_scale: True" in err
