"""`accbench validate` catches what `run` catches before the model loads (pipeline/preflight.py): every
config of issue 14 exits 2 naming its problem, problems of different checks are reported together, and no
model is loaded."""

from __future__ import annotations

import pytest
import yaml

from accbench.cli import main


@pytest.fixture
def no_model_load(monkeypatch):
    """validate must never load weights: loading fails the test."""
    import accbench.models

    def refuse(*args, **kwargs):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(accbench.models, "load_model", refuse)


def _write(tmp_path, cfg: dict) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


@pytest.fixture
def quant_cfg(tmp_path, tiny_model_dir, eval_txt) -> str:
    return _write(tmp_path, {
        "model": {"path": str(tiny_model_dir)},
        "calib": {"name": "custom", "path": str(eval_txt), "n_samples": 4, "seq_len": 32,
                  "preproc": "txt_general_preproc"},
        "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "eval_pos": ["pretrain", "fake_quant"]},
        "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}, "special": {"percdamp": 0.01}}})


@pytest.mark.parametrize("override,message", [
    ("quant.special.percdamp=5", "quant.special.percdamp must be in (0, 1]"),
    ("quant.weight.int_range=[7,0]", "int_range must be [qmin, qmax] with qmin < qmax"),
    ("calib.preproc=pileval_smoth", "unknown calib.preproc 'pileval_smoth'"),
    ("calib.preproc=vlm_general", "llmc's calibration preprocessing vlm_general / img_general"),
    ("calib.preproc=ultrachat_general", "calib.name ultrachat goes with preproc: ultrachat_general"),
    ("quant.special.owq=true", "llmc's outlier-aware GPTQ (owq) is not supported yet"),
    ("quant.weight.group_size=48", "group_size 48 does not divide the input dimension 64"),
])
def test_quant_problems_exit_2(quant_cfg, override, message, capsys, no_model_load):
    assert main(["validate", quant_cfg]) == 0
    capsys.readouterr()
    assert main(["validate", quant_cfg, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_problems_of_several_checks_are_reported_together(quant_cfg, capsys, no_model_load):
    assert main(["validate", quant_cfg, "quant.weight.group_size=48", "calib.preproc=pileval_smoth"]) == 2
    err = capsys.readouterr().err
    assert "2 problems found before loading the model" in err
    assert "group_size 48" in err and "pileval_smoth" in err


def test_unknown_trainer_optimizer(tmp_path, tiny_model_dir, capsys, no_model_load):
    cfg = _write(tmp_path, {"model": {"path": str(tiny_model_dir)},
                            "train": {"dataset": {"name": "builtin:pydoc"}, "block_size": 128,
                                      "variants": {"native": {}, "turbo": {"optim": "adamw_turbo_xyz"}}}})
    assert main(["validate", cfg]) == 2
    assert "optim 'adamw_turbo_xyz' is not an optimizer the Trainer knows" in capsys.readouterr().err


def test_opencompass_config_missing_and_not_installed(tmp_path, tiny_model_dir, eval_txt, capsys, monkeypatch,
                                                      no_model_load):
    base = {"model": {"path": str(tiny_model_dir)},
            "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64},
            "save": {"save_trans": True}, "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}}}
    monkeypatch.setenv("PATH", str(tmp_path))  # no `opencompass` executable anywhere
    assert main(["validate", _write(tmp_path, {**base, "opencompass": {"cfg_path": str(tmp_path / "nope.py")}})]) == 2
    assert "opencompass.cfg_path" in capsys.readouterr().err
    (tmp_path / "oc.py").write_text("models = []\n")
    assert main(["validate", _write(tmp_path, {**base, "opencompass": {"cfg_path": str(tmp_path / "oc.py")}})]) == 2
    assert "OpenCompass was not found" in capsys.readouterr().err
