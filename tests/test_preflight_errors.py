"""Wrong input is found up front, as bad input (exit 2), never after the work it would waste or as a failed gate.

(--resume into a folder that is not a run: test_rundir.py.)"""

from __future__ import annotations

import json

import pytest
import yaml

from accbench.cli import main


@pytest.fixture
def no_model_load(monkeypatch):
    import accbench.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(models, "load_model", refuse)


def _cfg(tmp_path, model_dir, eval_txt, **sections) -> str:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 2, "num_samples": 2,
                    "eval_pos": ["pretrain", "fake_quant"]},
           "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}},
           "calib": {"name": "custom", "path": str(eval_txt), "n_samples": 4, "bs": -1, "seq_len": 64,
                     "preproc": "wikitext2_gptq"}}
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


@pytest.mark.parametrize("calib, words", [
    ({"path": "/nonexistent/calib.txt"}, ["dataset path not found", "/nonexistent/calib.txt"]),
    ({"bs": 0}, ["calib.bs must be -1 (one batch) or a positive batch size, got 0"]),
    ({"preproc": "wikitext2_gtpq"}, ["unknown calib.preproc 'wikitext2_gtpq'"]),
    ({"seq_len": 100000}, ["not more than calib.seq_len=100000"]),
])
def test_calibration_errors_come_before_any_evaluation(tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load,
                                                       calib, words):
    code = main(["run", _cfg(tmp_path, tiny_model_dir, eval_txt, calib=calib), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("compare, words", [
    ({"baseline": "pretrian"}, ["compare.baseline 'pretrian'", "did you mean 'pretrain'"]),
    ({"gates": [{"task": "mcq", "metric": "acc", "max_drop": 0.1}]}, ["compare.gates.0.task 'mcq'"]),
    ({"gates": [{"metric": "acurracy", "max_drop": 0.1}]}, ["compare.gates.0.metric 'acurracy'"]),
    ({"gates": [{"dataset": "wikitext", "max_relative_increase": 0.1}]}, ["compare.gates.0.dataset 'wikitext'"]),
    ({"gates": [{"position": "fake-quant", "metric": "ppl", "max_relative_increase": 0.1}]},
     ["compare.gates.0.position 'fake-quant'", "did you mean 'fake_quant'"]),
])
def test_compare_typos_are_bad_input_not_a_failed_gate(tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load,
                                                       compare, words):
    cfg = _cfg(tmp_path, tiny_model_dir, eval_txt, compare=compare)
    for argv in (["validate", cfg], ["run", cfg, "-o", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "gate FAILED" not in err and all(w in err for w in words), err


def test_seq_len_beyond_the_models_positions(tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load):
    cfg = _cfg(tmp_path, tiny_model_dir, eval_txt, eval={"seq_len": 1024})  # the tiny model has 512 positions
    assert main(["validate", cfg]) == 2
    err = capsys.readouterr().err
    assert "eval.0.seq_len: 1024 exceeds the model's 512 positions" in err and "allow_beyond_max_positions" in err
    assert main(["run", cfg, "-o", str(tmp_path / "run")]) == 2
    opted = _cfg(tmp_path, tiny_model_dir, eval_txt, eval={"seq_len": 1024, "allow_beyond_max_positions": True})
    assert main(["validate", opted]) == 0


def test_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text("model: {path: builtin:tiny-llama}\nquant:\n  method: RTN\n  weight: {bit: 4}\n  weight: {bit: 2}\n")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'weight'" in err and "dup.yaml:5" in err and "first at line 4" in err


def test_multiple_choice_label_must_be_an_index(tmp_path, tiny_model_dir, eval_txt, capsys, no_model_load):
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"context": "Sky?", "choices": ["blue", "green"], "label": True}) + "\n")
    cfg = _cfg(tmp_path, tiny_model_dir, eval_txt,
               tasks=[{"name": "mc", "type": "multiple_choice", "path": str(data)}])
    assert main(["run", cfg, "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "label True (bool) is not a choice index" in err and "mc.jsonl:1" in err


def test_override_of_a_single_eval_block_by_index(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _cfg(tmp_path, tiny_model_dir, eval_txt)  # eval written as one mapping, as in the quickstart
    assert main(["validate", cfg, "eval.0.bs=4"]) == 0
    from accbench.config import load_config

    assert load_config(cfg, ["eval.0.bs=4"]).eval[0].bs == 4
