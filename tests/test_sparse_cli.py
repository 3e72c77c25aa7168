"""llmc's Magnitude, Wanda and ShortGPT configs run end to end from the CLI on a tiny model with only their paths
changed (sizes shrunk by overrides so CPU tests stay fast): results.json records the target and achieved
sparsity, the report shows it, save_trans writes llmc's folder (a shortened ShortGPT model reloads and scores
the same), a resume skips the work, and a config that cannot apply to the model fails before it loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from llmc_fixtures import LLMC
from test_llmc_runs import SMALL, _llmc_config, _run

pytestmark = [pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent"),
              pytest.mark.usefixtures("one_thread")]
METHODS = LLMC / "sparsification" / "methods" if LLMC else Path()


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, eval_txt) -> Path:
    """llmc's `name: [wikitext2, c4]` reads path/wikitext2 and path/c4 (save_to_disk folders)."""
    from datasets import Dataset

    out = tmp_path_factory.mktemp("evaldata")
    docs = eval_txt.read_text().split("\n\n")
    for name in ("wikitext2", "c4"):
        Dataset.from_dict({"text": docs}).save_to_disk(str(out / name))
    return out


def _config(tmp_path: Path, name: str, model: Path, eval_txt: Path, eval_dir: Path) -> Path:
    p = _llmc_config(tmp_path, f"sparsification/methods/{name}", model, eval_txt)
    cfg = yaml.safe_load(p.read_text())
    if isinstance(cfg["eval"]["name"], list):  # the eval path is a folder of datasets there
        cfg["eval"]["path"] = str(eval_dir)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def test_magnitude_config_runs(tmp_path, tiny_model_dir, eval_txt, eval_dir, capsys):
    cfg = _config(tmp_path, "Magnitude/magnitude.yml", tiny_model_dir, eval_txt, eval_dir)
    code, err, res = _run(cfg, tmp_path / "run", capsys, *SMALL, "eval.eval_pos=[pretrain,transformed]")
    assert code == 0, err[-3000:]
    s = res["sparse"]
    assert (s["method"], s["sparsity"], s["sparsity_type"], s["achieved_sparsity"]) == ("Magnitude", 0.5,
                                                                                       "unstructured", 0.5)
    # two blocks of q, o (64 x 64), k, v (32 x 64: 2 KV heads), gate, up, down (128 x 64)
    assert s["pruned"] * 2 == s["total"] == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64)
    assert s["calib_samples"] == 0 and "calib_data" not in res["timings"] and res["timings"]["sparsify"] >= 0
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert ppl["transformed"] != ppl["pretrain"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Sparsity" in report and "| Magnitude | unstructured | 50.00% | 50.00% |" in report
    assert res["provenance"]["method"] == "Magnitude"


def test_wanda_config_runs_on_both_datasets(tmp_path, tiny_model_dir, eval_txt, eval_dir, capsys):
    cfg = _config(tmp_path, "Wanda/wanda.yml", tiny_model_dir, eval_txt, eval_dir)
    assert yaml.safe_load(cfg.read_text())["eval"]["eval_pos"] == ["transformed"]
    code, err, res = _run(cfg, tmp_path / "run", capsys, *SMALL, "sparse.weight.sparsity_type=2:4")
    assert code == 0, err[-3000:]
    s = res["sparse"]
    assert (s["method"], s["sparsity_type"], s["achieved_sparsity"]) == ("Wanda", "2:4", 0.5) and s["calib_samples"] >= 1
    assert {(p["position"], p["dataset"]) for p in res["ppl"]} == {("transformed", "wikitext2"), ("transformed", "c4")}
    assert "no baseline position was evaluated" in res["compare"]["note"]


def test_shortgpt_config_runs_saves_and_resumes(tmp_path, tiny_model_dir, eval_txt, eval_dir, capsys):
    cfg = _config(tmp_path, "ShortGPT/shortgpt.yml", tiny_model_dir, eval_txt, eval_dir)
    code, err, _ = _run(cfg, tmp_path / "too_many", capsys, *SMALL)  # as shipped: 9 of the tiny model's 2 blocks
    assert code == 2 and "n_prune_layers 9 would remove every decoder block" in err and "use at most 1" in err
    assert not (tmp_path / "too_many" / "results.json").is_file() or \
        not json.loads((tmp_path / "too_many" / "results.json").read_text())["ppl"]

    over = [*SMALL, "sparse.weight.n_prune_layers=1", "save.save_trans=true", "eval.eval_pos=[pretrain,transformed]"]
    code, err, res = _run(cfg, tmp_path / "run", capsys, *over)
    assert code == 0, err[-3000:]
    s = res["sparse"]
    assert s["sparsity_type"] == "layers" and (s["layers_before"], s["layers_after"]) == (2, 1)
    assert len(s["block_influence"]) == 2 and s["removed_layers"] == [min((0, 1), key=lambda i: s["block_influence"][i])]
    assert s["achieved_sparsity"] == 0.5
    saved = tmp_path / "save" / "transformed_model"
    assert res["models"]["transformed"] == str(saved)
    assert json.loads((saved / "config.json").read_text())["num_hidden_layers"] == 1
    ppl = {(p["position"], p["dataset"]): p["ppl"] for p in res["ppl"]}

    # the saved model, evaluated as a plain model, scores what the run reported for transformed
    again = yaml.safe_load(cfg.read_text())
    again["model"]["path"] = str(saved)
    again.pop("sparse")
    again["eval"]["eval_pos"] = ["pretrain"]
    p2 = tmp_path / "again.yaml"
    p2.write_text(yaml.safe_dump(again))
    code, err, res2 = _run(p2, tmp_path / "run2", capsys, "eval.seq_len=64", "eval.bs=4")
    assert code == 0, err[-3000:]
    for e in res2["ppl"]:
        assert e["ppl"] == pytest.approx(ppl["transformed", e["dataset"]], rel=1e-5)

    code = main(["run", str(cfg), "-o", str(tmp_path / "run"), "--resume", *over])
    out = capsys.readouterr()
    assert code == 0 and "sparsification skipped" in out.out + out.err


def test_n_m_that_does_not_fit_the_model_fails_validation(tmp_path, tiny_model_dir, eval_txt, eval_dir, capsys):
    cfg = _config(tmp_path, "Wanda/wanda.yml", tiny_model_dir, eval_txt, eval_dir)
    over = ["eval.seq_len=64", "sparse.weight.sparsity_type='3:7'", "sparse.weight.sparsity=null"]
    assert main(["validate", str(cfg), *over]) == 2
    err = capsys.readouterr().err
    assert "sparsity_type 3:7: the input dimension of model.layers.0.self_attn.q_proj (64) is not a multiple of 7" in err
    assert main(["validate", str(cfg), "eval.seq_len=64"]) == 0
