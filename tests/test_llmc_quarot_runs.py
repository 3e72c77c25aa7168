"""llmc's QuaRot, LlmInt8 and quarot_comb_gptq configs run end to end from the CLI on a tiny model, with only
their paths changed (sizes shrunk by overrides so CPU tests stay fast)."""

from __future__ import annotations

import pytest

from accbench.cli import main
from test_llmc_runs import SMALL, _llmc_config, _run, needs_llmc

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_llmc]
COMB = "quantization/combination/quarot_comb_gptq"


def _ppl(res: dict) -> dict[str, float]:
    return {p["position"]: p["ppl"] for p in res["ppl"]}


def test_quarot_config_rotates_equivalently_then_quantizes(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _llmc_config(tmp_path, "quantization/methods/QuaRot/quarot_w_a.yml", tiny_model_dir, eval_txt)
    assert main(["validate", str(cfg), "eval.seq_len=64"]) == 0
    code, err, res = _run(cfg, tmp_path / "run", capsys, "eval.seq_len=64", "eval.bs=4")
    assert code == 0, err[-3000:]
    ppl = _ppl(res)
    assert ppl["transformed"] == pytest.approx(ppl["pretrain"], rel=1e-5)
    assert ppl["fake_quant"] != ppl["transformed"]
    assert res["quant"]["special"] == {"rotate_mode": "hadamard", "online_rotate": True, "fp32_had": True}


def test_llmint8_config_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _llmc_config(tmp_path, "quantization/methods/LlmInt8/llmint8_w_only.yml", tiny_model_dir, eval_txt)
    code, err, res = _run(cfg, tmp_path / "run", capsys, *SMALL)
    assert code == 0, err[-3000:]
    ppl = _ppl(res)
    assert ppl["fake_quant"] == pytest.approx(ppl["pretrain"], rel=0.01) and ppl["fake_quant"] != ppl["pretrain"]
    assert res["quant"]["special"] == {"threshold": 6.0}


def test_quarot_comb_gptq_two_steps(tmp_path, tiny_model_dir, eval_txt, capsys):
    """Step 1 (QuaRot) saves the rotated model; llmc's step 2 (GPTQ with online_rotate, fp32_had; the w8a8 one
    with chunk_num) quantizes it from model.path = save_path/transformed_model. At W8A8 step 2 stays within 2% of
    the original model's perplexity: the online Hadamards were installed again (without them the saved model is
    another function)."""
    for d in ("s1", "s2", "s3"):
        (tmp_path / d).mkdir()
    step1 = _llmc_config(tmp_path / "s1", f"{COMB}/w4a4/step_1_quarot.yml", tiny_model_dir, eval_txt)
    code, err, res1 = _run(step1, tmp_path / "run1", capsys, "eval.seq_len=64", "eval.bs=4",
                           "eval.eval_pos=[pretrain,transformed,fake_quant]")
    assert code == 0, err[-3000:]
    trans = tmp_path / "s1" / "save" / "transformed_model"
    ppl1 = _ppl(res1)
    assert ppl1["transformed"] == pytest.approx(ppl1["pretrain"], rel=1e-5)

    for step, d in (("w4a4", "s2"), ("w8a8", "s3")):
        step2 = _llmc_config(tmp_path / d, f"{COMB}/{step}/step_2_gptq.yml", trans, eval_txt)
        code, err, res2 = _run(step2, tmp_path / f"run_{step}", capsys, *SMALL)
        assert code == 0, err[-3000:]
        ppl2 = _ppl(res2)
        assert res2["quant"]["method"] == "GPTQ" and res2["quant"]["special"]["online_rotate"] is True
        if step == "w8a8":
            assert res2["quant"]["special"]["chunk_num"] == 4
            assert ppl2["fake_quant"] == pytest.approx(ppl1["pretrain"], rel=0.02)
        else:
            assert ppl2["fake_quant"] > ppl1["pretrain"]
