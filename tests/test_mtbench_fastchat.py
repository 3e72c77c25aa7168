"""MT-bench graded as FastChat grades it: the exact requests, the rating rule, show_result's arithmetic, pairwise
verdicts, conversation templates, the report's judgment accounting, and gates on the win rate.

FastChat's own files (judge_prompts.jsonl, question.jsonl, reference_answer/gpt-4.jsonl) are read from
../shared/data/mt_bench/ (never copied into the project); tests that need them skip cleanly without them.
The expected requests are built here from those files by FastChat's fill rule (common.py's run_judge_single /
run_judge_pair), independently of accbench's code. The judge is an HTTP server on 127.0.0.1 started by each
test, answering through the real `openai` client; it stops with the test.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from accbench.config import CompareCfg, GateCfg, MTBenchTask
from accbench.evaluate.fastchat_judge import parse_rating, parse_verdict
from accbench.evaluate.requests import GenerateRequest
from accbench.evaluate.tasks.mtbench import evaluate_mtbench, load_questions
from test_mtbench import TEMPLATE, chat_tok, judge_key  # noqa: F401  (fixtures: a chat tokenizer, the judge key)



def _shared() -> Path:
    here = Path(__file__).resolve().parents[2] / "shared" / "data"
    return here if here.is_dir() else Path("/work/shared/data")


MT = _shared() / "mt_bench"
needs_fastchat_files = pytest.mark.skipif(not (MT / "judge_prompts.jsonl").is_file(),
                                          reason="FastChat's MT-bench files are not in ../shared/data/mt_bench")
NEED_REF = ("math", "reasoning", "coding")


class Judge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 whose reply text is `respond(body)`."""

    def __init__(self, respond: Callable[[dict], str]):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.bodies.append(body)
                data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": respond(body)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge_server():
    servers = []

    def start(respond):
        servers.append(Judge(respond))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


class Tagged:
    """A fake model answering "<TAG> ANSWER q<id> t<turn>"; the question and turn are read from the request's
    seed (task seed + 16 * position + turn), which is how generate_answers numbers its requests."""

    def __init__(self, tag: str, questions, seed: int = 1234):
        self.tag, self.questions, self.seed = tag, questions, seed
        self.requests: list[GenerateRequest] = []

    def __call__(self, reqs: list[GenerateRequest]) -> list[str]:
        self.requests += reqs
        out = []
        for r in reqs:
            idx, turn = divmod(r.seed - self.seed, 16)
            out.append(f" {self.tag} ANSWER q{self.questions[idx].question_id} t{turn + 1}\n")
        return out


MARK = re.compile(r"(\w+) ANSWER q(\d+) t(\d)")


def single_slot(body: dict) -> tuple[str, int]:
    """(question id, turn) a single-grading request is about: the last turn whose answer it shows."""
    marks = MARK.findall(body["messages"][-1]["content"])
    return marks[0][1], max(int(t) for _, _, t in marks)


def task(url: str, **kw) -> MTBenchTask:
    judge = {"type": "openai", "model": "gpt-4", "base_url": url, "api_key_env": "ACCBENCH_TEST_JUDGE_KEY",
             "concurrency": 4, "timeout": 10.0, "max_retries": 0, "prompt_file": str(MT / "judge_prompts.jsonl")}
    judge.update(kw.pop("judge", {}))
    return MTBenchTask(name="mtbench", type="mtbench", judge=judge, **kw)


def fastchat_prompts() -> dict[str, dict]:
    return {json.loads(l)["name"]: json.loads(l) for l in (MT / "judge_prompts.jsonl").read_text().splitlines()}


# ----------------------------------------------------------------------------- the rating rule


def test_fastchat_rating_rule():
    # the formats the issue lists, with what FastChat's parser makes of each
    assert parse_rating("Rating: [[7.5]]") == (7.5, "")
    assert parse_rating("Rating: [7]") == (7, "")
    assert parse_rating("first [[3]] then [[8]]")[0] == 3
    assert parse_rating("[[11]]")[0] == 11
    assert parse_rating("[[ 6 ]]")[0] is None
    assert parse_rating("[4] but finally [[9]]")[0] == 9  # [[x]] is looked for first, anywhere
    assert parse_rating("[[7.]]")[0] == 7.0 and parse_rating("[[0]]")[0] == 0
    for none in ["Rating: 7", "7/10", "", None, "[[-2]]", "[[seven]]"]:
        assert parse_rating(none)[0] is None, none
    assert parse_verdict("A is better: [[A]]")[0] == "A" and parse_verdict("[[B]] not [[A]]")[0] == "A"
    assert parse_verdict("[[C]]")[0] == "tie" and parse_verdict("[[B]]")[0] == "B"
    assert parse_verdict("[A]")[0] is None and parse_verdict(None)[0] is None


# ----------------------------------------------------------------------------- single grading, real MT-bench


REPLIES = ["Fine work. Rating: [[7.5]]", "Rating: [7]", "first [[3]] then [[8]]", "Rating: [[11]]",
           "Rating: [[ 6 ]]", "I would rate it seven.", "[[2]]", "Rating: [[10]]"]
VALUE = [7.5, 7, 3, 11, -1, -1, 2, 10]  # FastChat's score for each reply; -1: no rating


@needs_fastchat_files
def test_requests_are_fastchats_and_score_is_show_results(judge_server, chat_tok, tmp_path):
    pd = pytest.importorskip("pandas")
    questions = load_questions(str(MT / "question.jsonl"))
    which = {q.question_id: i % len(REPLIES) for i, q in enumerate(questions)}

    def respond(body):
        qid, turn = single_slot(body)
        return REPLIES[(which[qid] + turn - 1) % len(REPLIES)]

    server = judge_server(respond)
    model = Tagged("M", questions)
    res = evaluate_mtbench(task(server.url, questions=str(MT / "question.jsonl"),
                                reference_answers=str(MT / "gpt-4.jsonl")), model, chat_tok, tmp_path)

    # the requests: FastChat's templates filled for the same question, answers and reference
    prompts = fastchat_prompts()
    refs = {str(json.loads(l)["question_id"]): json.loads(l) for l in (MT / "gpt-4.jsonl").read_text().splitlines()}
    raw = [json.loads(l) for l in (MT / "question.jsonl").read_text().splitlines()]
    expected = []
    for q in raw:
        qid = str(q["question_id"])
        ans = [f"M ANSWER q{qid} t1", f"M ANSWER q{qid} t2"]
        math = q["category"] in NEED_REF
        for turn in (1, 2):
            p = prompts[("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")]
            kw = {}
            if math:
                kw["ref_answer_1"] = refs[qid]["choices"][0]["turns"][0]
                if turn == 2:
                    kw["ref_answer_2"] = refs[qid]["choices"][0]["turns"][1]
            user = (p["prompt_template"].format(question=q["turns"][0], answer=ans[0], **kw) if turn == 1 else
                    p["prompt_template"].format(question_1=q["turns"][0], question_2=q["turns"][1],
                                                answer_1=ans[0], answer_2=ans[1], **kw))
            expected.append(json.dumps([{"role": "system", "content": p["system_prompt"]},
                                        {"role": "user", "content": user}], ensure_ascii=False))
    sent = [json.dumps(b["messages"], ensure_ascii=False) for b in server.bodies]
    assert len(sent) == 160 and sorted(sent) == sorted(expected)
    assert all((b["model"], b["temperature"], b["max_tokens"], b["n"]) == ("gpt-4", 0, 2048, 1) for b in server.bodies)

    # never asked again: one request per judgment, the unrated ones listed with question, turn and why
    assert res.extra["judge_requests_sent"] == 160
    scores = {(qid, t): VALUE[(which[qid] + t - 1) % len(REPLIES)] for qid in which for t in (1, 2)}
    failed = sorted((qid, t) for (qid, t), v in scores.items() if v == -1)
    got = res.extra["judgments"]
    assert sorted((f["question_id"], f["turn"]) for f in got["failed"]) == failed
    assert {f["why"] for f in got["failed"]} == {"unparsable reply: no [[rating]] or [rating] in the reply"}
    assert got["summary"] == f"{160 - len(failed)} of 160 judgments rated" and res.n == 160 - len(failed)

    # show_result.py's arithmetic on the same judgments
    df = pd.DataFrame([{"model": "m", "score": v, "turn": t} for (_, t), v in scores.items()])
    df = df[df["score"] != -1]
    assert res.metrics["turn1"] == pytest.approx(df[df["turn"] == 1].groupby(["model", "turn"]).mean()["score"].iloc[0],
                                                 abs=1e-12)
    assert res.metrics["turn2"] == pytest.approx(df[df["turn"] == 2].groupby(["model", "turn"]).mean()["score"].iloc[0],
                                                 abs=1e-12)
    assert res.metrics["score"] == pytest.approx(df[["model", "score"]].groupby(["model"]).mean()["score"].iloc[0],
                                                 abs=1e-12)
    assert res.extra["n_per_turn"] == {"turn1": int((df["turn"] == 1).sum()), "turn2": int((df["turn"] == 2).sum())}
    assert res.extra["grading"]["prompts"] == "fastchat" and res.extra["grading"]["parser"] == "fastchat"
    # the answers in FastChat's format, so FastChat's own gen_judgment could read them
    first = json.loads((tmp_path / "model_answer.jsonl").read_text().splitlines()[0])
    assert first["question_id"] == 81 and first["choices"][0]["turns"] == ["M ANSWER q81 t1", "M ANSWER q81 t2"]


@needs_fastchat_files
def test_missing_reference_is_an_error_before_answering(judge_server, chat_tok, tmp_path):
    from accbench.errors import DataError

    model = Tagged("M", load_questions(str(MT / "question.jsonl")))
    with pytest.raises(DataError, match=r"question 101 \(reasoning\) has no reference answer"):
        evaluate_mtbench(task("http://127.0.0.1:9/v1", questions=str(MT / "question.jsonl")), model, chat_tok,
                         tmp_path)
    assert model.requests == []


# ----------------------------------------------------------------------------- pairwise


# per question: what the judge says in game 1 (candidate shown as A) and game 2 (baseline shown as A)
SCRIPT = {"1": ("[[A]]", "[[B]]"),  # prefers the candidate both times: a win
          "2": ("[[B]]", "[[A]]"),  # prefers the baseline both times: a loss
          "3": ("[[C]]", "[[C]]"),  # a tie
          "4": ("[[A]]", "[[A]]"),  # always the first answer: inconsistent across the swap, a tie
          "5": ("[[C]]", "[[B]]"),  # game 1 a tie: a tie whatever game 2 says
          "6": ("no verdict", "[[A]]")}  # an error: left out


def fastchat_pairwise_counts(script: dict) -> dict:
    """show_result.py --mode pairwise-baseline, row by row, on the scripted verdicts (both turns)."""
    parse = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}
    res = {"win": 0, "tie": 0, "loss": 0}
    for g1, g2 in list(script.values()) * 2:
        w1 = {"A": "model_1", "B": "model_2"}.get(parse.get(g1, "error"), parse.get(g1, "error"))
        w2 = {"A": "model_2", "B": "model_1"}.get(parse.get(g2, "error"), parse.get(g2, "error"))
        if w1 == "error" or w2 == "error":
            continue
        if w1 == "tie" or w1 != w2:
            res["tie"] += 1
        else:
            res["win" if w1 == "model_1" else "loss"] += 1
    n = sum(res.values())
    return dict(res, win_rate_adjusted=(res["win"] + 0.5 * res["tie"]) / n)


def pair_responder(body: dict) -> str:
    if "two AI assistants" not in body["messages"][0]["content"]:
        return "Rating: [[5]]"
    marks = MARK.findall(body["messages"][-1]["content"])
    first_tag, qid = marks[0][0], marks[0][1]
    return SCRIPT[qid][0 if first_tag == "CAND" else 1]


@needs_fastchat_files
def test_pairwise_counts_are_fastchats(judge_server, chat_tok, tmp_path):
    server = judge_server(pair_responder)
    sample = load_questions("builtin:sample")
    cfg = task(server.url, pairwise=True)
    base = evaluate_mtbench(cfg, Tagged("BASE", sample), chat_tok, tmp_path / "base", model_id="base")
    assert "pairwise" not in base.extra  # no baseline given: the baseline itself
    n_single = len(server.bodies)
    cand = evaluate_mtbench(cfg, Tagged("CAND", sample), chat_tok, tmp_path / "cand", model_id="cand",
                            baseline_dir=tmp_path / "base", baseline_name="base")
    p, want = cand.extra["pairwise"], fastchat_pairwise_counts(SCRIPT)
    assert (p["win"], p["tie"], p["loss"]) == (want["win"], want["tie"], want["loss"]) == (2, 6, 2)
    assert p["errors"] == 2 and p["inconsistent"] == 2 and p["n"] == 10
    assert cand.metrics["win_rate_adjusted"] == pytest.approx(want["win_rate_adjusted"]) == 0.5
    assert cand.metrics["win_rate"] == pytest.approx(0.2) and cand.metrics["loss_rate"] == pytest.approx(0.2)
    assert 0 <= p["ci"][0] <= 0.5 <= p["ci"][1] <= 1
    assert sorted((f["question_id"], f["turn"]) for f in p["failed"]) == [("6", 1), ("6", 2)]
    pair_bodies = server.bodies[2 * n_single:]
    assert len(pair_bodies) == 24 and cand.extra["judge_requests_sent"] == 12 + 24

    # game 1 of question 3 (math), turn 1: FastChat's pair-math-v1 with the candidate as A
    p3 = fastchat_prompts()["pair-math-v1"]
    q3, ref = sample[2], ("Let the width be w; the length is 2w.",)
    user = [b["messages"][1]["content"] for b in pair_bodies
            if b["messages"][0]["content"] == p3["system_prompt"] and "CAND ANSWER q3 t1" in
            b["messages"][1]["content"].split("[The End of Assistant A's Answer]")[0]]
    assert len(user) == 1 and user[0].startswith(p3["prompt_template"].split("{")[0])
    from accbench.evaluate.tasks.mtbench import load_references
    assert user[0] == p3["prompt_template"].format(question=q3.turns[0], answer_a="CAND ANSWER q3 t1",
                                                   answer_b="BASE ANSWER q3 t1",
                                                   ref_answer_1=load_references("builtin:sample")["3"][0])
    assert ref[0] in user[0]


# ----------------------------------------------------------------------------- conversation templates


def test_fastchat_conversation_templates(tiny_tokenizer, tmp_path):
    conv = pytest.importorskip("fastchat.conversation")
    from accbench.evaluate.conv_templates import finish
    from accbench.evaluate.judge import Reply

    class Fixed:
        identity = {"type": "fixed"}

        def complete(self, convs, on_reply=None):
            for i in range(len(convs)):
                on_reply(i, Reply("[[6]]"))
            return [Reply("[[6]]") for _ in convs]

    sample = load_questions("builtin:sample")
    for name in ("one_shot", "vicuna_v1.1"):
        model = Tagged("M", sample)
        res = evaluate_mtbench(MTBenchTask(name="mt", type="mtbench", conv_template=name, limit=2,
                                           judge={"model": "j", "prompts": "accbench"}),
                               model, tiny_tokenizer, tmp_path / name, judge=Fixed())
        assert res.metrics["score"] == 6.0
        q = sample[0]
        c = conv.get_conv_template(name)  # FastChat's gen_model_answer, turn by turn
        c.append_message(c.roles[0], q.turns[0])
        c.append_message(c.roles[1], None)
        assert model.requests[0].context == c.get_prompt()
        c.update_last_message(finish(name, " M ANSWER q1 t1\n"))
        c.append_message(c.roles[0], q.turns[1])
        c.append_message(c.roles[1], None)
        assert model.requests[2].context == c.get_prompt()
    assert finish("one_shot", "An answer.\n### Human: more") == "An answer."
    assert finish("one_shot", "### Human: at the start") == "### Human: at the start"  # FastChat cuts only past 0
    assert finish("vicuna_v1.1", "  spaced  ") == "spaced"


def test_unknown_conversation_template_is_named(tiny_tokenizer, tmp_path):
    pytest.importorskip("fastchat.conversation")
    from accbench.errors import AccbenchError

    with pytest.raises(AccbenchError, match="no template named 'vicuna_1.1'"):
        evaluate_mtbench(MTBenchTask(name="mt", type="mtbench", conv_template="vicuna_1.1",
                                     judge={"model": "j", "prompts": "accbench"}),
                         Tagged("M", []), tiny_tokenizer, tmp_path, judge=object())


def test_top_k_sampling_keeps_the_k_most_likely(tiny_model_dir):
    """top_k=1 leaves one token to sample: whatever the seed, the greedy text; top_k=0 samples freely."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.evaluate.backends.hf import HFBackend as Engine

    eng = Engine(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir))
    greedy = eng.generate([GenerateRequest("import", max_new_tokens=8)])[0]
    top1 = eng.generate([GenerateRequest("import", max_new_tokens=8, temperature=1.5, seed=s, top_k=1) for s in range(4)])
    free = eng.generate([GenerateRequest("import", max_new_tokens=8, temperature=1.5, seed=s) for s in range(4)])
    assert top1 == [greedy] * 4 and any(f != greedy for f in free)
