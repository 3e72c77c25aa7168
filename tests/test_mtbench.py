"""MT-bench: answers, judging through the real openai client against a local HTTP judge, scoring, resume.

The judge server below speaks OpenAI's /v1/chat/completions on 127.0.0.1. It grades by a fixed rule: the
fake model answers "ANSWER q<id> t<turn>", and the server rates the last-turn answer it finds in the judge
prompt with rule(id, turn). It can be told to answer garbage, sleep past the client's timeout, return
429/500, or reject the key, and it counts every request, so retries and resume are checked by counting.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from accbench.config import MTBenchTask
from accbench.errors import AccbenchError, DataError
from accbench.evaluate.judge import FORMAT_REMINDER, HFJudge, JsonlCache, Reply, parse_rating_strict
from accbench.evaluate.requests import GenerateRequest
from accbench.evaluate.tasks.mtbench import evaluate_mtbench, load_questions, load_references

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SAMPLE = load_questions("builtin:sample")


def rule(qid: int, turn: int) -> int:
    return (qid * 3 + turn) % 10 + 1


class JudgeServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.fail_429 = self.fail_500 = self.sleep_next = 0
        self.sleep_s = 1.0
        self.delay = 0.0
        self.garbage: dict[tuple[int, int], int] = {}  # (qid, turn) -> garbage replies left; -1: forever
        self.reject_key = False
        self.reject_after: int | None = None  # start rejecting the key after this many requests
        self.inflight = self.max_inflight = 0
        self.echo_key = False  # replies quote the key (an echoing proxy, a prompt injection)
        self.not_json = False  # HTTP 200 with an HTML body (a proxy's error page)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions", self.path
                with server.lock:
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    if server.reject_after is not None and len(server.bodies) > server.reject_after:
                        server.reject_key = True
                    mode = ("401" if server.reject_key else "429" if server.fail_429 else
                            "500" if server.fail_500 else "sleep" if server.sleep_next else "ok")
                    server.fail_429 -= mode == "429"
                    server.fail_500 -= mode == "500"
                    server.sleep_next -= mode == "sleep"
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if mode == "401":  # echoes the key, as some servers do: it must be redacted downstream
                        return self._send(401, {"error": {"message": f"bad key {KEY}", "type": "auth"}})
                    if mode in ("429", "500"):
                        return self._send(int(mode), {"error": {"message": "busy", "type": "x"}},
                                          [("retry-after-ms", "5")])
                    time.sleep(server.sleep_s if mode == "sleep" else server.delay)
                    if server.not_json:
                        page = b"<html>502 gateway says hi</html>"
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(page)))
                        self.end_headers()
                        return self.wfile.write(page)
                    self._send(200, server.reply(body))
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, body: dict) -> dict:
        text = "\n".join(m["content"] for m in body["messages"])
        marks = re.findall(r"ANSWER q(\d+) t(\d+)", text)
        if not marks:  # an answer from a real (tiny) model: the rule cannot grade it
            return self._completion(body, "I cannot tell what this answer says.")
        qid, turn = max(((int(q), int(t)) for q, t in marks), key=lambda x: x[1])
        with self.lock:
            left = self.garbage.get((qid, turn), 0)
            if left:
                self.garbage[(qid, turn)] = left - 1 if left > 0 else -1
        content = "I like it a lot. Rating: 7/10" if left else f"Sound and clear. Rating: [[{rule(qid, turn)}]]"
        if self.echo_key:
            content = f"Your key {KEY} is showing. " + content
        return self._completion(body, content)

    @staticmethod
    def _completion(body: dict, content: str) -> dict:
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def count(self, qid: int, turn: int) -> int:
        n = 0
        for b in self.bodies:
            marks = re.findall(r"ANSWER q(\d+) t(\d+)", "\n".join(m["content"] for m in b["messages"]))
            n += max(((int(q), int(t)) for q, t in marks), key=lambda x: x[1]) == (qid, turn)
        return n


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def chat_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = TEMPLATE
    return tok


class FakeModel:
    """Answers "ANSWER q<id> t<turn>" for the latest question turn found in the chat context."""

    def __init__(self):
        self.calls: list[list[GenerateRequest]] = []

    def __call__(self, reqs: list[GenerateRequest]) -> list[str]:
        self.calls.append(list(reqs))
        out = []
        for r in reqs:
            found = [(int(q.question_id), t + 1) for q in SAMPLE for t, txt in enumerate(q.turns) if txt in r.context]
            qid, turn = max(found, key=lambda x: x[1])
            out.append(f"  ANSWER q{qid} t{turn}\n")
        return out


class FixedJudge:
    """A judge that always gives the same reply, to look only at the answering side."""

    identity = {"type": "fixed"}

    def __init__(self, text: str):
        self.text = text

    def complete(self, convs, on_reply=None):
        for i in range(len(convs)):
            on_reply(i, Reply(self.text))
        return [Reply(self.text) for _ in convs]


def task(server: JudgeServer | None = None, **kw) -> MTBenchTask:
    """accbench's own prompts: these tests look at the plumbing (retries, cache, resume, keys); FastChat's prompts
    and rule are tested in test_mtbench_fastchat.py."""
    judge = {"type": "openai", "model": "judge-x", "base_url": server.url if server else None,
             "api_key_env": "ACCBENCH_TEST_JUDGE_KEY", "concurrency": 4, "timeout": 5.0, "max_retries": 3,
             "prompts": "accbench"}
    judge.update(kw.pop("judge", {}))
    return MTBenchTask(name="mtbench", type="mtbench", judge=judge, **kw)


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    monkeypatch.setenv("ACCBENCH_TEST_JUDGE_KEY", KEY)


def expected(ratings: dict[tuple[int, int], int]) -> tuple[dict, dict]:
    """Independent means and stderrs from (qid, turn) -> rating, for the balanced case (every question has both
    turns): the stderr clustered by question equals statistics.stdev of the per-question means / sqrt(#questions),
    and per turn (one rating per question) the plain stdev / sqrt(n)."""
    cats = {int(q.question_id): q.category for q in SAMPLE}
    groups: dict[str, dict[int, list[int]]] = {}
    for (qid, turn), r in ratings.items():
        for g in ("score", f"turn{turn}", f"category/{cats[qid]}"):
            groups.setdefault(g, {}).setdefault(qid, []).append(r)
    means = {g: statistics.fmean([r for rs in v.values() for r in rs]) for g, v in groups.items()}
    errs = {}
    for g, v in groups.items():
        qmeans = [statistics.fmean(rs) for rs in v.values()]
        errs[g] = statistics.stdev(qmeans) / math.sqrt(len(qmeans)) if len(qmeans) > 1 else None
    return means, errs


ALL = {(int(q.question_id), t): rule(int(q.question_id), t) for q in SAMPLE for t in (1, 2)}


def test_scores_exact_through_openai_client(server, chat_tok, tmp_path):
    model = FakeModel()
    res = evaluate_mtbench(task(server), model, chat_tok, tmp_path)
    means, errs = expected(ALL)
    assert res.metrics.keys() == means.keys()
    for g in means:
        assert res.metrics[g] == pytest.approx(means[g], abs=1e-12), g
        assert res.stderr[g] == (pytest.approx(errs[g], abs=1e-12) if errs[g] is not None else None), g
    assert res.metrics["score"] == pytest.approx(66 / 12)
    assert res.n == 12 and res.extra["judgments"]["summary"] == "12 of 12 judgments rated"
    assert res.extra["n_per_turn"] == {"turn1": 6, "turn2": 6}
    assert res.extra["grading"] == {"prompts": "accbench", "prompt_names": ["accbench-v1"], "parser": "accbench-strict"}
    assert res.per_sample["score"] == {f"{q}/t{t}": float(r) for (q, t), r in ALL.items()}
    assert len(server.bodies) == 12 == res.extra["judge_requests_sent"]
    assert set(server.auth) == {f"Bearer {KEY}"}
    assert all(b["temperature"] == 0 and b["model"] == "judge-x" and b["n"] == 1 for b in server.bodies)
    # reference-guided prompts for math/reasoning/coding (the sample ships references for 3, 4, 5)
    assert res.extra["reference_guided"] == 6
    prompts = {b["messages"][1]["content"] for b in server.bodies}
    assert sum("87.5%" in p for p in prompts) == 1  # math turn 2 reference shown only when grading turn 2
    assert sum("REFERENCE ANSWER" in p for p in prompts) == 6
    samples = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples][:2] == ["1/t1", "1/t2"] and samples[0]["answer"] == "ANSWER q1 t1"


def test_answers_follow_mt_bench(chat_tok, tmp_path, monkeypatch):
    model = FakeModel()
    res = evaluate_mtbench(task(seed=7), model, chat_tok, tmp_path, judge=FixedJudge("[[5]]"))
    assert res.metrics["score"] == 5.0 and res.stderr["score"] == 0.0
    t1, t2 = model.calls
    assert len(t1) == len(t2) == 6
    temps = {"writing": 0.7, "roleplay": 0.7, "math": 0.0, "reasoning": 0.0, "coding": 0.0, "stem": 0.1}
    for q, r1, r2 in zip(SAMPLE, t1, t2):
        assert r1.temperature == r2.temperature == temps[q.category]
        # sampled turns get what Hugging Face generate adds in FastChat (top_k 50, top_p 1); greedy ones nothing
        assert (r1.top_k, r1.top_p) == ((50, 1.0) if temps[q.category] > 0 else (0, 1.0))
        assert r1.max_new_tokens == 1024
        assert r1.context == chat_tok.apply_chat_template([{"role": "user", "content": q.turns[0]}],
                                                          tokenize=False, add_generation_prompt=True)
        # turn 2 sees the model's own (stripped) turn-1 answer
        assert f"<|assistant|>\nANSWER q{q.question_id} t1\n<|user|>\n{q.turns[1]}" in r2.context
    seeds = [r.seed for r in t1 + t2]
    assert len(set(seeds)) == 12 and seeds[0] == 7


def test_429_and_500_are_retried(server, chat_tok, tmp_path):
    server.fail_429, server.fail_500 = 2, 1
    res = evaluate_mtbench(task(server, judge={"concurrency": 1}), FakeModel(), chat_tok, tmp_path)
    assert len(server.bodies) == 15  # 12 judgments + 3 retried failures
    assert res.extra["judgments"]["rated"] == 12
    assert res.extra["judge_requests_sent"] == 15  # what a paid judge bills: the client's retries included
    assert res.metrics["score"] == pytest.approx(66 / 12)


def test_timeout_is_retried(server, chat_tok, tmp_path):
    server.sleep_next, server.sleep_s = 1, 2.0
    res = evaluate_mtbench(task(server, judge={"concurrency": 1, "timeout": 0.3, "max_retries": 1}),
                           FakeModel(), chat_tok, tmp_path)
    assert len(server.bodies) == 13 and server.count(1, 1) == 2
    assert res.extra["judgments"]["rated"] == 12 and res.extra["judge_requests_sent"] == 13


def test_failed_request_fails_task_and_resume_pays_only_for_it(server, chat_tok, tmp_path):
    server.sleep_next, server.sleep_s = 1, 1.0
    model = FakeModel()
    cfg = task(server, judge={"concurrency": 1, "timeout": 0.3, "max_retries": 0}, max_judge_failures=0)
    with pytest.raises(AccbenchError) as exc:
        evaluate_mtbench(cfg, model, chat_tok, tmp_path)
    msg = str(exc.value)
    assert "11 of 12 judgments rated" in msg and "question 1 turn 1: request failed: APITimeoutError" in msg
    assert len(server.bodies) == 12
    res = evaluate_mtbench(cfg, model, chat_tok, tmp_path)  # resume: the same cache dir
    assert len(server.bodies) == 13 and server.count(1, 1) == 2  # only the failed one is asked again
    assert len(model.calls) == 2  # answers came from the cache the second time
    assert res.extra["judge_requests_sent"] == 1 and res.metrics["score"] == pytest.approx(66 / 12)


def test_resume_makes_no_second_request(server, chat_tok, tmp_path):
    model = FakeModel()
    first = evaluate_mtbench(task(server), model, chat_tok, tmp_path)
    n = len(server.bodies)
    again = evaluate_mtbench(task(server), model, chat_tok, tmp_path)
    assert len(server.bodies) == n == 12 and len(model.calls) == 2
    assert again.extra["judge_requests_sent"] == 0
    assert again.metrics == first.metrics and again.per_sample == first.per_sample
    assert len(JsonlCache(tmp_path / "cache.jsonl")) == 12 + 12  # answers + judge replies


def test_unparsable_replies_retried_counted_and_fail_the_task(server, chat_tok, tmp_path):
    server.garbage = {(1, 1): 1, (3, 2): -1}  # 1/t1 recovers on the retry; 3/t2 never parses
    cfg = task(server, judge={"parse_retries": 2}, max_judge_failures=0)
    with pytest.raises(AccbenchError) as exc:
        evaluate_mtbench(cfg, FakeModel(), chat_tok, tmp_path)
    msg = str(exc.value)
    assert "11 of 12 judgments rated" in msg and "question 3 turn 2: unparsable reply: no [[N]] rating" in msg
    assert "question 1 turn 1" not in msg
    assert server.count(1, 1) == 2 and server.count(3, 2) == 3 and len(server.bodies) == 15
    retry = [b for b in server.bodies if b["messages"][-1]["content"] == FORMAT_REMINDER]
    assert len(retry) == 3 and retry[0]["messages"][-2]["role"] == "assistant"

    # allowed: the score is over the 11 parsed judgments, the failure is shown; nothing is paid twice
    res = evaluate_mtbench(task(server, judge={"parse_retries": 2}, max_judge_failures=1), FakeModel(), chat_tok,
                           tmp_path)
    assert len(server.bodies) == 15
    parsed = {k: v for k, v in ALL.items() if k != (3, 2)}
    means, errs = expected(parsed)
    assert res.metrics == pytest.approx(means) and res.n == 11
    assert res.stderr["turn2"] == pytest.approx(errs["turn2"]) and res.stderr["category/math"] is None
    # unbalanced now (question 3 has one turn): the clustered formula written out with numpy
    x = np.array([v for v in parsed.values()], float)
    q = np.array([k[0] for k in parsed])
    sums = np.array([(x[q == c] - x.mean()).sum() for c in np.unique(q)])
    assert res.stderr["score"] == pytest.approx(np.sqrt(6 / 5 * (sums ** 2).sum()) / 11)
    assert res.extra["judgments"]["summary"] == "11 of 12 judgments rated"
    assert res.extra["judgments"]["failed"] == [{"question_id": "3", "turn": 2,
                                                 "why": "unparsable reply: no [[N]] rating in the reply"}]
    assert "3/t2" not in res.per_sample["score"] and res.extra["n_per_turn"] == {"turn1": 6, "turn2": 5}

    # one more parse retry on a rerun pays for exactly one more request
    res = evaluate_mtbench(task(server, judge={"parse_retries": 3}, max_judge_failures=1), FakeModel(), chat_tok,
                           tmp_path)
    assert len(server.bodies) == 16 and res.extra["judge_requests_sent"] == 1


def test_concurrency_is_bounded(server, chat_tok, tmp_path):
    server.delay = 0.15
    evaluate_mtbench(task(server, judge={"concurrency": 3}), FakeModel(), chat_tok, tmp_path)
    assert 2 <= server.max_inflight <= 3


def test_api_key_is_never_written(server, chat_tok, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        evaluate_mtbench(task(server), FakeModel(), chat_tok, run_dir / "mtbench" / "pretrain")
        server.reject_key = True
        with pytest.raises(AccbenchError) as exc:
            evaluate_mtbench(task(server, judge={"max_tokens": 99}), FakeModel(), chat_tok, run_dir / "mtbench" / "b")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()
    assert "rejected the API key" in str(exc.value) and KEY not in str(exc.value)
    (run_dir / "error.txt").write_text(str(exc.value))  # what the pipeline would put in results.json
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 5 and (run_dir / "logs" / "run.log").stat().st_size > 0
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


def test_api_key_in_a_reply_is_redacted(server, chat_tok, tmp_path):
    server.echo_key = True
    res = evaluate_mtbench(task(server), FakeModel(), chat_tok, tmp_path / "mt")
    assert res.metrics["score"] == pytest.approx(66 / 12)  # still graded: the rating is read after redaction
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 2 and any("Your key *** is showing" in p.read_text() for p in files)
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


def test_http_200_with_a_body_that_is_not_json(server, chat_tok, tmp_path):
    server.not_json = True
    with pytest.raises(AccbenchError) as exc:
        evaluate_mtbench(task(server, judge={"max_retries": 0}, max_judge_failures=0), FakeModel(), chat_tok,
                         tmp_path / "mt")
    assert "not JSON" in str(exc.value) and "judge.base_url" in str(exc.value) and KEY not in str(exc.value)


def test_missing_key_fails_before_answering(chat_tok, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCBENCH_TEST_JUDGE_KEY")
    model = FakeModel()
    with pytest.raises(AccbenchError, match="ACCBENCH_TEST_JUDGE_KEY is not set"):
        evaluate_mtbench(task(judge={"base_url": "http://127.0.0.1:9/v1"}), model, chat_tok, tmp_path)
    assert model.calls == []


def test_chat_template_required_or_overridden(tiny_tokenizer, tmp_path):
    assert not tiny_tokenizer.chat_template
    with pytest.raises(AccbenchError, match="no chat template"):
        evaluate_mtbench(task(), FakeModel(), tiny_tokenizer, tmp_path)
    tpl = tmp_path / "t.jinja"
    tpl.write_text(TEMPLATE)
    model = FakeModel()
    res = evaluate_mtbench(task(chat_template_override=str(tpl), limit=2), model, tiny_tokenizer, tmp_path / "c",
                           judge=FixedJudge("[[9]]"))
    assert res.metrics["score"] == 9.0 and res.n == 4
    assert model.calls[0][0].context.startswith("<|user|>\n") and model.calls[0][0].context.endswith("<|assistant|>\n")


def test_accbench_parser_is_strict():
    assert parse_rating_strict("good. Rating: [[7]]") == (7, "")
    assert parse_rating_strict("[[ 10 ]]")[0] == 10 and parse_rating_strict("[[8]] so: [[8]]")[0] == 8
    for bad in ["Rating: 7", "[[0]]", "[[11]]", "[[7.5]]", "[[3]] then [[8]]", "", None, "[[-2]]", "[7]"]:
        assert parse_rating_strict(bad)[0] is None, bad


def test_question_files(tmp_path, caplog):
    assert [q.category for q in SAMPLE] == ["writing", "roleplay", "math", "reasoning", "coding", "stem"]
    assert all(len(q.turns) == 2 for q in SAMPLE)
    assert set(load_references("builtin:sample")) == {"3", "4", "5"}
    qf = tmp_path / "question.jsonl"
    qf.write_text('{"question_id": 81, "category": "writing", "turns": ["a", "b"]}\n'
                  '{"question_id": 111, "category": "math", "turns": ["c"], "reference": ["r"]}\n')
    with caplog.at_level(logging.WARNING, logger="accbench.mtbench"):
        qs = load_questions(str(qf))
    assert "2 questions, MT-bench has 80" in caplog.text and "questions 111 do not have 2 turns" in caplog.text
    assert qs[1].reference == ("r",) and qs[0].question_id == "81"
    rf = tmp_path / "gpt-4.jsonl"  # FastChat's answer format
    rf.write_text('{"question_id": 111, "answer_id": "x", "model_id": "gpt-4", "choices": [{"index": 0, '
                  '"turns": ["R1", "R2"]}], "tstamp": 0}\n')
    assert load_references(str(rf)) == {"111": ("R1", "R2")}
    qf.write_text('{"question_id": 81, "turns": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"question.jsonl:1: missing category"):
        load_questions(str(qf))
    with pytest.raises(DataError, match="fastchat/llm_judge/data/mt_bench"):
        load_questions(str(tmp_path / "nope.jsonl"))


# ----------------------------------------------------------------------------- local hf judge


def greedy_generate(model, tok, calls: list):
    import torch

    def generate(reqs: list[GenerateRequest]) -> list[str]:
        calls.append(len(reqs))
        out = []
        for r in reqs:
            ids = tok(r.context, return_tensors="pt", add_special_tokens=False).input_ids[:, -200:]
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.max_new_tokens,
                                     do_sample=False, pad_token_id=1)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out
    return generate


def test_hf_judge_with_tiny_model(tiny_model_dir, chat_tok, tmp_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    answer_calls, judge_calls = [], []
    answer = greedy_generate(model, chat_tok, answer_calls)
    judge = HFJudge(greedy_generate(model, chat_tok, judge_calls), chat_tok, str(tiny_model_dir), max_tokens=4)
    cfg = task(judge={"type": "hf", "path": str(tiny_model_dir), "parse_retries": 1}, max_new_tokens=4, limit=2,
               max_judge_failures=0)
    with pytest.raises(AccbenchError, match=r"0 of 4 judgments rated") as exc:
        evaluate_mtbench(cfg, answer, chat_tok, tmp_path, judge=judge)
    assert all(f"question {q} turn {t}: unparsable reply" in str(exc.value) for q in (1, 2) for t in (1, 2))
    assert answer_calls == [2, 2] and judge_calls == [4, 4]  # one batch per turn; one per parse attempt

    res = evaluate_mtbench(cfg.model_copy(update={"max_judge_failures": 4}), answer, chat_tok, tmp_path, judge=judge)
    assert judge_calls == [4, 4] and answer_calls == [2, 2]  # all from the cache
    assert res.n == 0 and res.metrics["score"] is None and res.extra["judgments"]["rated"] == 0
    assert len(res.extra["judgments"]["failed"]) == 4 and res.extra["judge"]["type"] == "hf"
    samples = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["judge_replies"]) == 2 for s in samples)


def test_hf_judge_scores_exactly_with_a_fixed_reply(chat_tok, tmp_path):
    seen = []

    def judge_gen(reqs):
        seen.extend(reqs)
        return ["ok [[7]]" if "q3" not in r.context else "[[2]]" for r in reqs]

    judge = HFJudge(judge_gen, chat_tok, "/models/judge", max_tokens=32)
    res = evaluate_mtbench(task(judge={"type": "hf", "path": "/models/judge"}), FakeModel(), chat_tok, tmp_path,
                           judge=judge)
    assert res.metrics["score"] == pytest.approx((10 * 7 + 2 * 2) / 12)
    assert res.metrics["category/math"] == 2.0 and res.stderr["category/math"] is None  # one question
    assert all(r.temperature == 0.0 and r.max_new_tokens == 32 for r in seen)
    assert seen[0].context.startswith("<|system|>\n") and seen[0].context.endswith("<|assistant|>\n")


def test_hf_judge_needs_chat_template(tiny_tokenizer):
    with pytest.raises(AccbenchError, match="no chat template"):
        HFJudge(lambda r: [], tiny_tokenizer, "/j")


def test_replies_are_kept_as_they_arrive(server, chat_tok, tmp_path):
    """A run that dies half-way (here: the key is revoked after 5 requests) keeps what it paid for."""
    server.reject_after = 5
    cfg = task(server, judge={"concurrency": 1})
    with pytest.raises(AccbenchError, match="rejected the API key"):
        evaluate_mtbench(cfg, FakeModel(), chat_tok, tmp_path)
    assert len(server.bodies) == 6
    server.reject_after, server.reject_key = None, False
    res = evaluate_mtbench(cfg, FakeModel(), chat_tok, tmp_path)
    assert len(server.bodies) == 6 + 7 and res.extra["judge_requests_sent"] == 7
    assert res.metrics["score"] == pytest.approx(66 / 12)


def test_jsonl_cache_survives_a_torn_line(tmp_path, caplog):
    c = JsonlCache(tmp_path / "c.jsonl")
    c.put("judge:a", {"reply": "[[3]]"})
    c.put("judge:b", {"reply": "x"})
    c.put("judge:b", {"reply": "[[4]]"})  # the last line for a key wins
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"key": "judge:c", "val')  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="accbench.judge"):
        again = JsonlCache(tmp_path / "c.jsonl")
    assert "unreadable line" in caplog.text
    assert len(again) == 2 and again.get("judge:a") == {"reply": "[[3]]"} and again.get("judge:b")["reply"] == "[[4]]"
    assert again.get("judge:c") is None
    again.put("judge:d", {"reply": "[[5]]"})  # an append after the torn line is read back
    assert JsonlCache(tmp_path / "c.jsonl").get("judge:d") == {"reply": "[[5]]"}


def test_config_errors_are_reported_together(tmp_path):
    from accbench.config import load_config
    from accbench.errors import ConfigError

    f = tmp_path / "c.yaml"
    f.write_text("model: {path: /m}\ntasks:\n"
                 "  - {name: a, type: mtbench, judge: {type: openai}}\n"
                 "  - {name: b, type: mtbench, judge: {type: hf}}\n"
                 "  - {name: c, type: mtbench}\n"
                 "  - {name: d, type: mtbench, path: q.jsonl, judge: {model: gpt-4o, prompts: accbench}}\n"
                 "  - {name: e, type: mtbench, judge: {model: gpt-4o}}\n"
                 "  - {name: f, type: mtbench, pairwise: true, judge: {model: gpt-4o, prompts: accbench}}\n"
                 "  - {name: g, type: mtbench, conv_template: one_shot, chat_template_override: x.jinja,\n"
                 "     judge: {model: gpt-4o, prompts: accbench}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert "7 problems" in msg and "tasks.0.judge: an openai judge needs judge.model" in msg
    assert "tasks.1.judge: an hf judge needs judge.path" in msg and "tasks.2.judge: required key is missing" in msg
    assert "tasks.3: an mtbench task reads its questions from `questions:`" in msg
    assert "tasks.4.judge: judge.prompts: fastchat (the default) needs judge.prompt_file" in msg
    assert "tasks.5: pairwise: true judges with FastChat's pair prompts" in msg
    assert "tasks.6: set conv_template (a FastChat template by name) or chat_template_override" in msg
    f.write_text("model: {path: /m}\ntasks:\n  - {name: e, type: mtbench, judge: {model: gpt-4o, "
                 "prompt_file: judge_prompts.jsonl}}\n")
    t = load_config(f).tasks[0]
    assert t.questions == "builtin:sample" and t.max_new_tokens == 1024 and t.max_judge_failures is None
    assert (t.judge.prompts, t.judge.parse_retries, t.judge.max_tokens, t.pairwise) == ("fastchat", 0, 2048, False)


def test_answers_of_another_model_under_the_same_position_are_not_reused(server, chat_tok, tmp_path):
    """A resumed run whose quantization changed evaluates a new model at the same position: its MT-bench
    answers are generated again (the cache key holds the model's fingerprint), while the same model reuses them."""
    from types import SimpleNamespace

    from accbench.evaluate.tasks import TaskContext, _run_mtbench

    model = FakeModel()
    answerer = SimpleNamespace(generate=model)

    def ctx(fp: str) -> TaskContext:
        return TaskContext(chat_tok, tmp_path, "fake_quant", model_fingerprint=fp)

    _run_mtbench(task(server), answerer, ctx("w4"))
    assert len(model.calls) == 2  # two turns
    _run_mtbench(task(server), answerer, ctx("w4"))
    assert len(model.calls) == 2  # the same model: answers from the cache
    _run_mtbench(task(server), answerer, ctx("w2"))
    assert len(model.calls) == 4  # another model at fake_quant: answered anew
