"""The README's first command: the quickstart config runs end to end on the built-in model and data.

Its numbers are pinned (as torchtune pins losses): a change to the built-in model, its task data or the engine
that moves them fails here, and the README's "What the quickstart shows" section changes in the same commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accbench.cli import main

ROOT = Path(__file__).parent.parent

# measured on the v4 built-in model (v5: the same weights, 2048 positions) (CPU, float32); the README states the same numbers
PPL = {"pretrain": 43.8101, "fake_quant": 46.6798}
KLD_MEAN, TOP1 = 0.0393, 0.8316
ACC = {("pretrain", "pydoc_cloze", "acc"): 0.5425, ("fake_quant", "pydoc_cloze", "acc"): 0.5300,
       ("pretrain", "pydoc_nextword", "exact_match"): 0.0650, ("fake_quant", "pydoc_nextword", "exact_match"): 0.0600}
FLIPS = {("pydoc_cloze", "acc"): (10, 5), ("pydoc_nextword", "exact_match"): (5, 3)}  # (correct->wrong, wrong->correct)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    run = tmp_path_factory.mktemp("quickstart") / "run"
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)  # the config's paths are relative to the repository, as a user runs it
    try:
        code = main(["run", "examples/quickstart.yaml", "-o", str(run)])
    finally:
        mp.undo()
    return code, run, json.loads((run / "results.json").read_text())


def test_quickstart_runs_and_holds_its_gates(quickstart, capsys):
    code, run, res = quickstart
    assert code == 0
    assert res["compare"]["all_held"] is True and len(res["compare"]["gates"]) == 3
    assert (run / "report.html").is_file() and (run / "report.md").is_file() and (run / "plots" / "flips.png").is_file()
    assert {(t["model"], t["task"]) for t in res["tasks"]} == {(m, t) for m in ("pretrain", "fake_quant")
                                                              for t in ("pydoc_cloze", "pydoc_nextword")}


def test_quickstart_numbers_are_pinned(quickstart):
    _, _, res = quickstart
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert ppl == pytest.approx(PPL, rel=1e-3)
    assert ppl["fake_quant"] / ppl["pretrain"] > 1.03  # the change visibly hurts
    (fid,) = res["fidelity"]
    assert fid["position"] == "fake_quant"
    assert fid["kld_mean"] == pytest.approx(KLD_MEAN, rel=0.03) and fid["top1_agreement"] == pytest.approx(TOP1, abs=3e-3)
    tasks = {(t["model"], t["task"]): t for t in res["tasks"]}
    for (model, task, metric), value in ACC.items():
        assert tasks[(model, task)]["n"] == 400
        assert tasks[(model, task)]["metrics"][metric] == pytest.approx(value, abs=0.0051), (model, task, metric)
    assert tasks[("pretrain", "pydoc_cloze")]["metrics"]["acc"] >= 0.5  # far above the 0.25 of chance


def test_quickstart_flips_and_statistics(quickstart):
    _, _, res = quickstart
    rows = {(c["task"], c["metric"]): c for c in res["compare"]["comparisons"] if c["kind"] == "task"}
    for key, (c2w, w2c) in FLIPS.items():
        row = rows[key]
        assert (row["correct_to_wrong"], row["wrong_to_correct"]) == pytest.approx((c2w, w2c), abs=2), key
        assert row["correct_to_wrong"] > 0 and row["wrong_to_correct"] > 0, key  # flips in both directions
        assert row["test"] == "mcnemar_exact" and 0 < row["p_value"] <= 1 and row["ci_low"] <= row["delta"] <= row["ci_high"]


def test_quickstart_report_says_every_delta_in_words(quickstart):
    """Every task delta and the perplexity change carry a worded significance statement in report.md."""
    _, run, _ = quickstart
    md = (run / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| fake_quant |") and "pydoc_" in line
            and "mcnemar_exact" in line]
    assert len(rows) >= 2
    assert all("not significant (p ≥ 0.05)" in r for r in rows), rows  # pinned p values are 0.3 and 0.73
    ppl_rows = [line for line in md.splitlines() if line.startswith("| fake_quant | builtin:pydoc") and "CI" not in line
                and line.count("|") > 9]  # the perplexity table (the recovery table's rows are shorter)
    assert len(ppl_rows) == 1 and "significantly worse (p < 0.05)" in ppl_rows[0], ppl_rows
