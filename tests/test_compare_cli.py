"""`accbench compare`, `accbench report` and the run's compare stage through the real CLI: exit codes 0/2/3."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compare_fixtures import compression_results, training_results, write_run

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "accbench.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(compression_results(tmp_path, c2w=0, w2c=0, ppl_shift=0.0), tmp_path / "day1")
    b = write_run(compression_results(tmp_path), tmp_path / "day2")  # mc acc -0.05, ppl +3.06%
    return a, b


def test_compare_without_gates_exits_0_and_shows_deltas(runs):
    a, b = runs
    r = cli("compare", a, b, "--resamples", "1000")
    assert r.returncode == 0, r.stderr
    assert "Task deltas vs day1" in r.stdout
    assert re.search(r"day2/fake_quant\s.*mc\s.*acc\s.*0\.7500\s.*0\.7000\s.*-0\.0500", r.stdout)


def test_compare_gate_fails_exit_3_and_passes_exit_0(runs, tmp_path: Path):
    a, b = runs
    r = cli("compare", a, b, "--resamples", "1000", "--position", "fake_quant",
            "--gate", "{task: mc, metric: acc, max_drop: 0.01}",
            "--gate", "{metric: ppl, dataset: wikitext2, max_relative_increase: 0.01}",
            "--gate", "{metric: ppl, max_relative_increase: 0.05}")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "2 of 3 gate checks FAILED" in r.stdout
    cfg = tmp_path / "gates.yaml"
    cfg.write_text("compare:\n  gates:\n    - {task: mc, metric: acc, max_drop: 0.06}\n"
                   "    - {metric: ppl, max_relative_increase: 0.05}\n")
    out = tmp_path / "cmp"
    r = cli("compare", a, b, "--resamples", "1000", "--config", cfg, "-o", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 4 gate checks held" in r.stdout  # two positions (pretrain, fake_quant) x the ppl gate + mc gate x 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["compare"]["exit_code"] == 0 and (out / "report.html").is_file()


def test_compare_refuses_mismatched_samples(tmp_path: Path):
    a = write_run(compression_results(tmp_path, n_mc=200), tmp_path / "a")
    b = write_run(compression_results(tmp_path, n_mc=150), tmp_path / "b")
    r = cli("compare", a, b)
    assert r.returncode == 2
    assert "not evaluated on the same tasks and samples" in r.stderr
    assert "task 'mc' metric 'acc': samples differ (50 only in a" in r.stderr
    assert "Traceback" not in r.stderr


def test_compare_refuses_unfinished_or_missing_runs(runs, tmp_path: Path):
    a, b = runs
    res = json.loads((b / "results.json").read_text())
    res["status"] = "failed"
    (b / "results.json").write_text(json.dumps(res))
    r = cli("compare", a, b)
    assert r.returncode == 2 and "the run is failed, not complete" in r.stderr
    r = cli("compare", a, tmp_path / "nowhere")
    assert r.returncode == 2 and "no results.json" in r.stderr
    r = cli("compare", a, a, "--gate", "{max_drop: oops}")
    assert r.returncode == 2 and "invalid compare settings" in r.stderr and "max_drop" in r.stderr


def test_report_rebuilds_everything_from_results_json(runs):
    _, b = runs
    r = cli("report", b)
    assert r.returncode == 0, r.stderr
    html = (b / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 5  # ppl, deltas, flips, categories, KL histogram
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "What flipped" in html and "&lt;wrong&gt; &amp; more" in html  # escaped model output
    assert "correct → wrong: 3" in html and "wrong → correct: 1" in html  # gen: 3 lost, 1 gained
    assert "largest drops: 12" in html and "largest gains: 0" in html  # mtbench: every 3rd score lowered by 1 unless already 1
    assert "mtbench-0 (1 → 1)" not in html and "mtbench-3 (2 → 1)" in html
    md = (b / "report.md").read_text()
    assert "| fake_quant | mc | acc | 0.7500 | 0.7000 | -0.0500 |" in md.replace("**", "")
    assert sorted(p.name for p in (b / "plots").iterdir()) == ["categories.png", "flips.png", "kld_hist.png",
                                                                "ppl.png", "task_deltas.png"]


def test_report_of_training_run_has_the_seed_block(tmp_path: Path):
    t = write_run(training_results(tmp_path, loss_gap=0.0001), tmp_path / "train")
    r = cli("report", t)
    assert r.returncode == 0, r.stderr
    assert "==================== Training Results ====================" in r.stdout
    assert "compiled train loss             = 2.0917" in r.stdout
    assert "compiled speed-up vs native     = 1.124x" in r.stdout
    assert "Original Model mc acc           = 0.6250" in r.stdout
    assert "loss_curves.png" in {p.name for p in (t / "plots").iterdir()}


def test_run_ends_with_compare_stage_and_gate_exit_code(tiny_model_dir, eval_txt, tmp_path: Path):
    """The real `accbench run`: perplexity at pretrain only, so a ppl gate has no candidate to check -> exit 3."""
    from accbench.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}, torch_dtype: float32}}\n"
                   f"eval: {{name: custom, path: {eval_txt}, seq_len: 64, eval_pos: [pretrain], num_samples: 3}}\n"
                   "compare:\n  gates:\n    - {metric: ppl, max_relative_increase: 0.05}\n")
    code = main(["run", str(cfg), "-o", str(tmp_path / "run")])
    assert code == 3
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "complete"
    assert saved["compare"]["baseline"] == "pretrain" and saved["compare"]["exit_code"] == 3
    assert "matches no comparison" in saved["compare"]["gates"][0]["reason"]
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "plots" / "ppl.png").is_file()


def test_samples_in_humaneval_record_form_are_read():
    from accbench.report.flips import samples_by_id
    from accbench.results import SampleText, TaskEntry

    recs = [{"task_id": "HumanEval/0", "sample": 0, "completion": "return 1", "status": "passed"},
            {"task_id": "HumanEval/0", "sample": 1, "completion": "return 2", "status": "failed"},
            {"task_id": "HumanEval/1", "sample": 0, "completion": "pass", "status": "failed"}]
    got = samples_by_id(TaskEntry(model="m", task="he", samples=recs))
    assert got == {"HumanEval/0": SampleText(response="return 1"), "HumanEval/1": SampleText(response="pass")}
    assert samples_by_id(TaskEntry(model="m", task="he", extra={"samples": recs})) == got
    assert samples_by_id(TaskEntry(model="m", task="he", samples={"a": "text"})) == {"a": SampleText(response="text")}
