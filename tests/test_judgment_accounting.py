"""What stands behind a training-benchmark number: every MT-bench judgment accounted for in the report, pairwise
win rates against the baseline and gates on them, and variants trained on other data refused, not compared.

The end-to-end test is the seed's training benchmark through the CLI: command variants (one holds out 5% of the
data for validation, as run_clm.py does), MT-bench graded with FastChat's prompts by a judge server on 127.0.0.1
(started and stopped by the test), pairwise against the baseline, and a gate on the adjusted win rate.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from accbench.compare import run_comparison
from accbench.config import CompareCfg, GateCfg
from accbench.results import Results, TaskEntry, TrainEntry
from accbench.train.data_check import data_counts, data_mismatches
from test_mtbench_fastchat import MT, TEMPLATE, Judge, needs_fastchat_files

FAKE_TRAINER = textwrap.dedent('''
    """A stand-in for run_clm.py: copies the model, trains on the whole file or holds out 5% for validation."""
    import json, os, shutil, sys
    model, out, seed, train_file, mode = sys.argv[1:6]
    n = sum(1 for line in open(train_file) if line.strip())
    samples = n - max(1, n * 5 // 100) if mode == "holdout" else n
    shutil.copytree(model, out, dirs_exist_ok=True)
    json.dump({"train_loss": 2.0, "train_runtime": 8.0, "train_steps_per_second": 5.0, "train_samples": samples},
              open(os.path.join(out, "all_results.json"), "w"))
    json.dump({"global_step": 2, "log_history": [{"loss": 2.0, "step": 2}]},
              open(os.path.join(out, "trainer_state.json"), "w"))
''')


def judge_reply(body: dict) -> str:
    """Single grading: question 2's turn 2 gets a reply with no rating (a failed judgment); the others a rating.
    Pairwise: always a tie."""
    from accbench.evaluate.tasks.mtbench import load_questions

    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "two AI assistants" in system:
        return "Both are equally good. [[C]]"
    q = next(q for q in load_questions("builtin:sample") if q.turns[0] in user)
    turn = 2 if q.turns[1] in user else 1
    return "I cannot decide." if (q.question_id, turn) == ("2", 2) else f"Rating: [[{int(q.question_id) + turn}]]"


@needs_fastchat_files
def test_training_benchmark_with_fastchat_grading(tmp_path, tiny_model_dir, eval_txt, monkeypatch, capsys):
    from accbench.cli import main

    monkeypatch.setenv("ACCBENCH_TEST_JUDGE_KEY", "sk-x")
    judge = Judge(judge_reply)
    script = tmp_path / "fake_run_clm.py"
    script.write_text(FAKE_TRAINER)
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    cmd = f"{sys.executable} {script} {{model}} {{output_dir}} {{seed}} {{train_file}}"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        model: {{path: {tiny_model_dir}}}
        train:
          dataset: {{name: "builtin:pydoc"}}
          block_size: 64
          variants:
            native: {{command: '{cmd} full'}}
            acc: {{command: '{cmd} full'}}
            heldout: {{command: '{cmd} holdout'}}
        eval: {{name: custom, path: {eval_txt}, seq_len: 64, num_samples: 2}}
        tasks:
          - name: mtbench
            type: mtbench
            max_new_tokens: 4
            chat_template_override: {tmp_path / "chat.jinja"}
            pairwise: true
            judge: {{model: gpt-4, base_url: "{judge.url}", api_key_env: ACCBENCH_TEST_JUDGE_KEY, max_retries: 0,
                     prompt_file: {MT / "judge_prompts.jsonl"}}}
        compare:
          baseline: native
          max_train_loss_diff: 0.05
          gates: [{{task: mtbench, metric: win_rate_adjusted, min: 0.45}}]
        """))
    run = tmp_path / "run"
    try:
        code = main(["run", str(cfg), "-o", str(run)])
    finally:
        judge.close()
    res = json.loads((run / "results.json").read_text())
    out = capsys.readouterr().out
    assert "11 of 12 judgments rated" in out and "MT-bench failed judgments" in out
    assert "unparsable reply: no [[rating]] or [rating] in the reply" in out  # printed as written, not as markup
    assert re.search(r"Original Model mtbench score\s+= 5\.0909", out)  # the seed's block, FastChat's average
    assert re.search(r"acc\s+Model mtbench win_rate_adjusted\s+= 0\.5000", out)
    assert code == 3  # the held-out variant is refused: a failed check, not a silent comparison

    train = {t["variant"]: t for t in res["train"]}
    n = train["native"]["train_samples"]
    assert n > 20 and train["acc"]["train_samples"] == n and train["heldout"]["train_samples"] == n - n * 5 // 100
    gates = res["compare"]["gates"]
    refused = [g for g in gates if g["rule"] == "same training data as the baseline"]
    assert len(refused) == 1 and not refused[0]["held"] and "variant heldout trained on" in refused[0]["reason"]
    assert not any(c["candidate"] == "heldout" for c in res["compare"]["comparisons"])
    win_gate = [g for g in gates if g["bound"] == "min"]
    assert [(g["target"], g["observed"], g["held"]) for g in win_gate] == [("acc mtbench win_rate_adjusted", 0.5,
                                                                             True)]

    mt = {t["model"]: t for t in res["tasks"] if t["task"] == "mtbench"}
    assert set(mt) == {"pretrain", "native", "acc", "heldout"}
    for m, t in mt.items():
        assert t["judgments"]["summary"] == "11 of 12 judgments rated" and t["n"] == 11
        assert t["n_per_turn"] == {"turn1": 6, "turn2": 5}
        assert t["judgments"]["failed"] == [{"question_id": "2", "turn": 2, "why": "unparsable reply: no [[rating]] "
                                                                                  "or [rating] in the reply"}]
        assert t["grading"]["prompts"] == "fastchat" and t["metrics"]["turn1"] == pytest.approx(sum(range(2, 8)) / 6)
    assert "pairwise" not in mt["pretrain"] and "pairwise" not in mt["native"]  # not candidates
    for m in ("acc", "heldout"):
        p = mt[m]["pairwise"]
        assert (p["win"], p["tie"], p["loss"], p["baseline"]) == (0, 12, 0, "native")
        assert mt[m]["metrics"]["win_rate_adjusted"] == 0.5

    for name in ("report.md", "report.html"):
        text = (run / name).read_text()
        assert "MT-bench failed judgments" in text and "11 of 12 judgments rated" in text, name
        assert "unparsable reply: no [[rating]] or [rating] in the reply" in text.replace("&#x27;", "'"), name
        assert "MT-bench pairwise against the baseline" in text and "Training data" in text, name
        assert "variant heldout trained on" in text, name


def _entry(model: str, **metrics) -> TaskEntry:
    return TaskEntry(model=model, task="mtbench", type="mtbench", metrics={"score": 5.0, **metrics}, n=10,
                     pairwise={"ci": [0.3, 0.6], "confidence": 0.95, "n": 10, "baseline": "pretrain"} if metrics
                     else None)


@pytest.mark.parametrize("rate,held", [(0.4, False), (0.45, True), (0.6, True)])
def test_win_rate_gate(rate, held):
    r = Results(tasks=[_entry("pretrain"), _entry("fake_quant", win_rate_adjusted=rate, win_rate=0.2, loss_rate=0.1)])
    cfg = CompareCfg(gates=[GateCfg(task="mtbench", metric="win_rate_adjusted", min=0.45),
                            GateCfg(task="mtbench", max_drop=1.0)])
    out = run_comparison(r, cfg)
    win, drop = [g for g in out.gates if g.bound == "min"], [g for g in out.gates if g.bound == "max_drop"]
    assert [(g.observed, g.held) for g in win] == [(rate, held)]
    assert [g.target for g in drop] == ["fake_quant mtbench score"]  # a max_drop gate ignores head-to-head rates
    versus = [c for c in out.comparisons if c.kind == "versus" and c.metric == "win_rate_adjusted"]
    assert versus[0].ci_low == 0.3 and versus[0].baseline_value is None


def test_variants_trained_on_other_data_are_refused_unless_allowed():
    base = TrainEntry(variant="native", train_loss=2.0, baseline=True, train_samples=1000, train_tokens=256000)
    cmd = TrainEntry(variant="mine", train_loss=2.0, kind="command", train_samples=950)
    same = TrainEntry(variant="acc", train_loss=2.01, train_samples=1000, train_tokens=256000)
    r = Results(train=[base, cmd, same])
    mism = data_mismatches(r.train)
    assert [(m.variant, m.what, m.variant_value, m.baseline_value) for m in mism] == [("mine", "train_samples",
                                                                                      950, 1000)]
    out = run_comparison(r, CompareCfg(baseline="native", max_train_loss_diff=0.05))
    assert not out.all_held and out.exit_code == 3
    assert {c.candidate for c in out.comparisons} == {"acc"}
    out = run_comparison(r, CompareCfg(baseline="native", max_train_loss_diff=0.05, allow_different_train_data=True))
    assert out.all_held and {c.candidate for c in out.comparisons} == {"acc", "mine"}
    assert data_counts({"train_samples": 950}, None) == (950, None)
    assert data_counts({"train_samples": 1000}, 256) == (1000, 256000)
    assert data_counts({"train_loss": 2.0}, 256) == (None, None)


def test_win_rate_against_another_model_is_not_gated_as_against_this_baseline():
    other = _entry("fake_quant", win_rate_adjusted=0.9)
    other.pairwise["baseline"] = "somebody_else"
    out = run_comparison(Results(tasks=[_entry("pretrain"), other]),
                         CompareCfg(gates=[GateCfg(task="mtbench", metric="win_rate_adjusted", min=0.45)]))
    assert not any(c.kind == "versus" for c in out.comparisons)
    assert [(g.held, g.target) for g in out.gates] == [(False, "(nothing)")]
