"""The `accbench run` CLI end to end on a tiny model: output contract, refusal to clobber, failures kept."""

from __future__ import annotations

import json

import yaml

from accbench.cli import main


def _config(tmp_path, model_dir, eval_txt, **extra) -> str:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32"},
           "eval": {"eval_pos": ["pretrain"], "name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 2}}
    cfg.update(extra)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_run_writes_output_contract(tmp_path, tiny_model_dir, eval_txt, capsys):
    run = tmp_path / "run"
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(run), "eval.bs=4"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["schema_version"] == 3 and res["status"] == "complete"
    (entry,) = res["ppl"]
    assert entry["position"] == "pretrain" and entry["dataset"] == "custom" and entry["seq_len"] == 64
    assert entry["tokens"] == entry["windows"] * 64 and entry["ppl"] > 1
    assert "recipe" in entry and {"tasks", "train", "compare", "versions", "timings"} <= res.keys()
    assert yaml.safe_load((run / "config.yaml").read_text())["eval"][0]["bs"] == 4  # resolved config, as run
    assert (run / "logs" / "run.log").is_file()
    assert "Perplexity" in capsys.readouterr().out

    # a second run into the same directory is refused; --resume reuses the computed number
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(run), "--resume", "eval.bs=4"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["ppl"] == res["ppl"] and again["resume"]["reused"] == ["ppl pretrain/custom"]
    assert main(["run", _config(tmp_path, tiny_model_dir, eval_txt), "-o", str(run), "--overwrite"]) == 0


def test_bad_data_path_fails_cleanly_and_keeps_run_dir(tmp_path, tiny_model_dir, eval_txt, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model_dir, eval_txt)
    code = main(["run", cfg, "-o", str(run), f"eval.path={tmp_path / 'missing.txt'}"])
    err = capsys.readouterr().err
    assert code == 2 and "dataset path not found" in err and "Traceback" not in err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "failed" and "not found" in res["error"]


def test_missing_model_path(tmp_path, eval_txt, capsys):
    code = main(["run", _config(tmp_path, tmp_path / "nomodel", eval_txt), "-o", str(tmp_path / "r")])
    assert code == 2 and "model path not found" in capsys.readouterr().err
