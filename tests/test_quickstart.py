"""The README's first command: the quickstart config runs end to end on the built-in model and data."""

from __future__ import annotations

import json
from pathlib import Path

from accbench.cli import main

ROOT = Path(__file__).parent.parent


def test_quickstart_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config's task paths are relative to the repository, as a user runs it
    run = tmp_path / "quickstart"
    code = main(["run", "examples/quickstart.yaml", "-o", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    res = json.loads((run / "results.json").read_text())
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert set(ppl) == {"pretrain", "fake_quant"} and ppl["fake_quant"] > ppl["pretrain"]  # 3-bit GPTQ costs something
    (fid,) = res["fidelity"]
    assert fid["position"] == "fake_quant" and fid["kld_mean"] > 0 and 0.5 < fid["top1_agreement"] < 1.0
    assert {(t["model"], t["task"]) for t in res["tasks"]} == {(m, t) for m in ("pretrain", "fake_quant")
                                                              for t in ("mc_python", "gen_python")}
    assert res["compare"]["all_held"] is True and len(res["compare"]["gates"]) == 3
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert "Gates" in out and "all 3 gate checks held" in out
