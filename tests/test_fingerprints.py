"""A number in results.json was computed from the config next to it: --resume reuses only what still matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from accbench.fingerprints import config_changes

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, model_dir: Path, data: Path, **extra) -> Path:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
           "eval": {"name": "custom", "path": str(data), "seq_len": 64, "bs": 4, "num_samples": 4,
                    "eval_pos": ["pretrain", "fake_quant"], "fidelity": True},
           "quant": {"method": "RTN", "weight": {"bit": 4, "symmetric": False, "granularity": "per_group",
                                                 "group_size": 32}},
           **extra}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _res(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _ppl(res: dict, position: str) -> float:
    (p,) = [p["ppl"] for p in res["ppl"] if p["position"] == position]
    return p


def _kld(res: dict, position: str) -> float:
    (k,) = [f["kld_mean"] for f in res["fidelity"] if f["position"] == position]
    return k


def test_resume_with_a_changed_bit_width_recomputes(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    run, fresh2 = tmp_path / "run", tmp_path / "fresh2"
    assert main(["run", str(cfg), "-o", str(run)]) == 0
    four = _res(run)
    assert main(["run", str(cfg), "-o", str(fresh2), "quant.weight.bit=2"]) == 0
    two = _res(fresh2)
    assert _ppl(two, "fake_quant") > _ppl(four, "fake_quant") * 1.001  # 2 bits really differ from 4 here
    capsys.readouterr()

    # strict: refuses, names the changed key, touches nothing
    assert main(["run", str(cfg), "-o", str(run), "--resume=strict", "quant.weight.bit=2"]) == 2
    err = capsys.readouterr().err
    assert "quant.weight.bit: 4 -> 2" in err and "--resume=strict" in err
    assert _res(run)["ppl"] == four["ppl"] and yaml.safe_load((run / "config.yaml").read_text())["quant"]["weight"]["bit"] == 4

    # plain resume: the 4-bit numbers are not kept under the 2-bit label
    assert main(["run", str(cfg), "-o", str(run), "--resume", "quant.weight.bit=2"]) == 0
    out = capsys.readouterr().out
    res = _res(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["quant"]["weight"]["bit"] == 2
    assert _ppl(res, "fake_quant") == pytest.approx(_ppl(two, "fake_quant"), rel=1e-6)
    assert _kld(res, "fake_quant") == pytest.approx(_kld(two, "fake_quant"), rel=1e-6)
    assert _ppl(res, "pretrain") == _ppl(four, "pretrain")  # unchanged inputs: reused
    assert "ppl pretrain/custom" in res["resume"]["reused"]
    assert any(r.startswith("ppl fake_quant/custom: its inputs changed") for r in res["resume"]["recomputed"])
    assert "quant.weight.bit: 4 -> 2" in out and "recomputing ppl fake_quant/custom" in out
    assert len(res["ppl"]) == 2 and len(res["fidelity"]) == 1


def test_resume_after_the_quantization_does_not_quantize_again(tmp_path, tiny_model_dir, eval_txt, capsys,
                                                               monkeypatch):
    import accbench.quant.runner as runner

    cfg = _config(tmp_path, tiny_model_dir, eval_txt, save={"save_fake": True},
                  tasks=[{"name": "ppl_task", "type": "perplexity", "path": str(eval_txt), "seq_len": 64,
                          "limit": 2}])
    run = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(run)]) == 0
    first = _res(run)
    assert (run / "models" / "fake_quant_model" / "accbench-fingerprint.json").is_file()

    def no_quantizing(*a, **k):
        raise AssertionError("quantized again although every result is on disk")

    monkeypatch.setattr(runner, "transform_model", no_quantizing)
    monkeypatch.setattr(runner, "fake_quantize_model", no_quantizing)
    # killed during the report: every fake_quant result is on disk
    killed = dict(first, status="interrupted", compare={})
    (run / "results.json").write_text(json.dumps(killed))
    capsys.readouterr()
    assert main(["run", str(cfg), "-o", str(run), "--resume"]) == 0
    assert "quantization skipped" in capsys.readouterr().out
    again = _res(run)
    assert again["ppl"] == first["ppl"] and again["tasks"] == first["tasks"] and again["status"] == "complete"

    # a fake_quant result missing: the saved fake-quantized model is loaded, not re-quantized
    missing = dict(first, tasks=[t for t in first["tasks"] if t["model"] != "fake_quant"], status="interrupted")
    (run / "results.json").write_text(json.dumps(missing))
    (run / "samples.sqlite").unlink()  # really recompute it
    for extra in ("samples.sqlite-wal", "samples.sqlite-shm"):
        (run / extra).unlink(missing_ok=True)
    assert main(["run", str(cfg), "-o", str(run), "--resume"]) == 0
    assert "loading the saved fake_quant model" in capsys.readouterr().out
    (task,) = [t for t in _res(run)["tasks"] if t["model"] == "fake_quant"]
    (before,) = [t for t in first["tasks"] if t["model"] == "fake_quant"]
    assert task["metrics"]["ppl"] == pytest.approx(before["metrics"]["ppl"], rel=1e-6)

    # a saved model whose fingerprint does not match (other bits) is not trusted: quantize again
    monkeypatch.undo()
    assert main(["run", str(cfg), "-o", str(run), "--resume", "quant.weight.bit=3"]) == 0
    assert "quantization skipped" not in capsys.readouterr().out


def test_config_changes_lists_dotted_keys():
    old = {"quant": {"weight": {"bit": 4}}, "eval": [{"seq_len": 64}], "runner": {"max_num_workers": 1}}
    new = {"quant": {"weight": {"bit": 2}}, "eval": [{"seq_len": 128}], "runner": {"max_num_workers": 2}}
    assert config_changes(old, new, ("runner",)) == ["eval.0.seq_len: 64 -> 128", "quant.weight.bit: 4 -> 2"]
    assert config_changes(old, old) == []


def test_a_changed_calibration_file_under_the_same_path_is_noticed(tmp_path, tiny_model_dir, eval_txt, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text(eval_txt.read_text())
    cfg = _config(tmp_path, tiny_model_dir, eval_txt,
                  calib={"name": "custom", "path": str(calib), "n_samples": 4, "bs": -1, "seq_len": 64,
                         "preproc": "wikitext2_gptq", "seed": 0})
    data = yaml.safe_load(cfg.read_text())
    data["quant"]["method"] = "GPTQ"
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(run)]) == 0
    capsys.readouterr()
    assert main(["run", str(cfg), "-o", str(run), "--resume"]) == 0  # same inputs: nothing recomputed
    assert _res(run)["resume"]["recomputed"] == []
    calib.write_text(calib.read_text()[::-1])  # same path, other calibration text
    assert main(["run", str(cfg), "-o", str(run), "--resume"]) == 0
    recomputed = _res(run)["resume"]["recomputed"]
    assert any(r.startswith("ppl fake_quant/custom") for r in recomputed)
    assert not any(r.startswith("ppl pretrain/custom") for r in recomputed)


def test_a_stale_fidelity_entry_that_cannot_be_recomputed_leaves_results(tmp_path, tiny_model_dir, eval_txt, capsys):
    """The baseline is no longer evaluated and the eval data changed: the stored KL of fake_quant was computed on
    other windows and no matching recording exists to recompute it, so it is withdrawn, not kept."""
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    run = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(run)]) == 0
    assert len(_res(run)["fidelity"]) == 1
    capsys.readouterr()
    assert main(["run", str(cfg), "-o", str(run), "--resume", "eval.eval_pos=[fake_quant]",
                 "eval.num_samples=3"]) == 0
    out = capsys.readouterr().out
    res = _res(run)
    assert "fidelity skipped at fake_quant custom" in out
    assert res["fidelity"] == []
    (fq,) = [p for p in res["ppl"] if p["position"] == "fake_quant"]
    assert fq["windows"] == 3  # recomputed on the new windows


def test_ignored_layers_and_seed_are_part_of_the_quantized_fingerprint(tmp_path):
    """A resume must not reuse a fake_quant result after ignored_layers (the linears kept in float) or base.seed
    (QuaRot's random rotation) changed: both are in the quantized positions' fingerprints, not in pretrain's."""
    from accbench.config import load_config
    from accbench.pipeline.resume import position_fingerprints

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = {"model": {"path": str(model)}, "quant": {"method": "RTN", "weight": {"bit": 4}},
            "eval": {"name": "custom", "path": str(tmp_path), "eval_pos": ["pretrain", "fake_quant"]}}

    def fps(**extra) -> dict:
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({**base, **extra}))
        return position_fingerprints(load_config(p), str(model))

    plain = fps()
    ignored = fps(ignored_layers={"block_ids": [0], "layer_names": ["self_attn.q_proj"]})
    seeded = fps(base={"seed": 7})
    assert plain["pretrain"] == ignored["pretrain"] == seeded["pretrain"]
    assert len({plain["fake_quant"], ignored["fake_quant"], seeded["fake_quant"]}) == 3


def test_the_numerics_version_is_part_of_every_fingerprint(tmp_path, monkeypatch):
    """A result stored by an accbench whose arithmetic differed (another NUMERICS_VERSION, e.g. before bf16 weight
    scales were held in the model's dtype) is not reused by a resume: every position's fingerprint changes."""
    import accbench.fingerprints as fingerprints
    from accbench.config import load_config
    from accbench.pipeline.resume import position_fingerprints

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(model)}, "quant": {"method": "RTN", "weight": {"bit": 4}},
                                   "eval": {"name": "custom", "path": str(tmp_path),
                                            "eval_pos": ["pretrain", "fake_quant"]}}))
    now = position_fingerprints(load_config(cfg), str(model))
    monkeypatch.setattr(fingerprints, "NUMERICS_VERSION", fingerprints.NUMERICS_VERSION - 1)
    before = position_fingerprints(load_config(cfg), str(model))
    assert set(now) == set(before) and {"pretrain", "fake_quant"} <= set(now)
    assert all(now[k] != before[k] for k in now)
