"""results.json's published JSON Schema: equal to the one generated from the typed models, versioned, and a
run's results.json (compare block, samples, provenance included) validates against it; a schema-1 file with
an untyped compare block still loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accbench.compare import run_comparison
from accbench.config import CompareCfg, GateCfg
from accbench.results import SCHEMA_FILE, SCHEMA_VERSION, Results, results_json_schema
from compare_fixtures import compression_results, write_run

ROOT = Path(__file__).resolve().parents[1]


def test_published_schema_is_the_generated_one():
    published = json.loads((ROOT / SCHEMA_FILE).read_text())
    assert published == results_json_schema(), "regenerate it: accbench schema -o docs/results.schema.json"
    assert f"schema_version {SCHEMA_VERSION}" in published["title"]


def test_a_runs_results_json_validates(tmp_path: Path):
    jsonschema = pytest.importorskip("jsonschema")
    run = write_run(compression_results(tmp_path), tmp_path / "run")
    res = Results.load(run)
    res.compare = run_comparison(res, CompareCfg(gates=[GateCfg(task="mc", metric="acc", max_drop=0.01)],
                                                 bootstrap_resamples=200))
    res.save(run)
    data = json.loads((run / "results.json").read_text())
    jsonschema.validate(data, results_json_schema())
    assert data["compare"]["comparisons"][0]["kind"] == "ppl" and data["schema_version"] == SCHEMA_VERSION
    data["compare"]["gates"][0]["held"] = "yes"  # a wrong type is caught
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, results_json_schema())


def test_schema_1_file_loads(tmp_path: Path):
    old = {"schema_version": 1, "status": "complete", "compare": {},
           "tasks": [{"model": "pretrain", "task": "mc", "metrics": {"acc": 0.5}, "per_sample": {"acc": {"a": 1.0}}}]}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = Results.load(tmp_path)
    assert not res.compare and res.tasks[0].samples == {} and res.provenance.model == ""
