"""llmc's KV-cache configs (KVQuant/, RTN/rtn_w_a_kv.yml) run from the CLI on a tiny model with only their paths
changed: decode_ppl at transformed, fake_quant (with the KV cache quantized) and fake_quant_wo_kv, recorded,
compared and reported; and `eval.type: token_acc` gives the top-1 agreement with the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from llmc_fixtures import LLMC, with_paths

needs_llmc = pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")
pytestmark = pytest.mark.usefixtures("one_thread")
KVQUANT = "quantization/methods/KVQuant"


@pytest.fixture(scope="module")
def wiki_rows(tmp_path_factory) -> Path:
    """wikitext-2's shape: one row per line, empty rows between paragraphs (short rows keep decoding fast)."""
    from conftest import _pydoc_texts

    out = tmp_path_factory.mktemp("wiki") / "wikitext2.jsonl"
    rows = []
    for t in _pydoc_texts()[:30]:
        rows += ["", " " + " ".join(t.split()[:8]) + " \n"]
    out.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return out


def _run(tmp_path: Path, name: str, model: Path, data: Path, capsys, *overrides: str) -> tuple[int, str, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), str(model), data, tmp_path / "save")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "run"
    code = main(["run", str(p), "-o", str(out), *overrides])
    err = capsys.readouterr().err
    return code, err, json.loads((out / "results.json").read_text())


def _decode(res: dict) -> dict[str, dict]:
    return {p["position"]: p for p in res["ppl"] if p["type"] == "decode_ppl"}


@needs_llmc
@pytest.mark.parametrize("config", ["rtn_w_a_kivi_quant_kv.yml", "rtn_w_a_naive_quant_kv.yml"])
def test_llmc_kv_config_runs_with_decode_ppl(tmp_path, tiny_model_dir, wiki_rows, capsys, config):
    code, err, res = _run(tmp_path, f"{KVQUANT}/{config}", tiny_model_dir, wiki_rows, capsys)
    assert code == 0, err[-3000:]
    dec = _decode(res)
    assert list(dec) == ["transformed", "fake_quant", "fake_quant_wo_kv"]
    # llmc's num_samples: 50 rows, 25 of them empty (nothing to predict)
    assert {p["samples"] for p in dec.values()} == {25} and len({p["tokens"] for p in dec.values()}) == 1
    assert all(p["seq_len"] == 0 and len(p["window_losses"]) == p["tokens"] for p in dec.values())
    # KV quantization is what separates fake_quant from fake_quant_wo_kv (same weights and activations)
    assert dec["fake_quant"]["ppl"] != dec["fake_quant_wo_kv"]["ppl"]
    assert dec["fake_quant"]["ppl"] == pytest.approx(dec["fake_quant_wo_kv"]["ppl"], rel=0.01)  # 8-bit KV
    assert "(decode_ppl)" in (tmp_path / "run" / "report.md").read_text()


@needs_llmc
def test_kv_quant_is_compared_against_the_baseline(tmp_path, tiny_model_dir, wiki_rows, capsys):
    code, err, res = _run(tmp_path, f"{KVQUANT}/rtn_w_a_naive_quant_kv.yml", tiny_model_dir, wiki_rows, capsys,
                          "compare.baseline=transformed", "quant.kvcache.bit=2", "eval.num_samples=10")
    assert code == 0, err[-3000:]
    rows = {c["candidate"]: c for c in res["compare"]["comparisons"] if c["kind"] == "ppl"}
    assert set(rows) == {"fake_quant", "fake_quant_wo_kv"}
    assert rows["fake_quant"]["n"] == _decode(res)["fake_quant"]["tokens"]  # paired over the decoded tokens
    # 2-bit KV moves decode_ppl more than W8A8 alone (direction: the random tiny model is near uniform)
    assert abs(rows["fake_quant"]["relative_delta"]) > 5 * abs(rows["fake_quant_wo_kv"]["relative_delta"])


@needs_llmc
def test_llmc_static_kv_and_ppl_with_kv_configs_run(tmp_path, tiny_model_dir, wiki_rows, capsys):
    code, err, res = _run(tmp_path / "a", f"{KVQUANT}/rtn_w_a_pertensor_static_naive_quant_kv.yml", tiny_model_dir,
                          wiki_rows, capsys, "calib.n_samples=4", "calib.seq_len=16")
    assert code == 0, err[-3000:]
    assert list(_decode(res)) == ["transformed", "fake_quant", "fake_quant_wo_kv"] and res["timings"]["kv_calibration"]
    # RTN/rtn_w_a_kv.yml: ordinary ppl at fake_quant with the (Naive, 8-bit) KV cache in the attention
    code, err, res = _run(tmp_path / "b", "quantization/methods/RTN/rtn_w_a_kv.yml", tiny_model_dir, wiki_rows,
                          capsys, "eval.seq_len=32")
    assert code == 0, err[-3000:]
    assert [(p["position"], p["type"]) for p in res["ppl"]] == [("pretrain", "ppl"), ("fake_quant", "ppl")]


def test_token_acc_is_top1_agreement_with_the_baseline(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": {"method": "RTN", "weight": {"bit": 3, "group_size": 32}},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "num_samples": 4, "type": "token_acc",
                    "eval_pos": ["pretrain", "fake_quant"]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "-o", str(tmp_path / "run")]) == 0, capsys.readouterr().err[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    (fid,) = res["fidelity"]
    assert fid["position"] == "fake_quant" and fid["tokens"] == 4 * 63 and 0 < fid["top1_agreement"] <= 1
