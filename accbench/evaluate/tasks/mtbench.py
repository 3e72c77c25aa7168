"""MT-bench: two-turn chat answers from the model under test, each turn rated 1-10 by a judge model.

Questions are in FastChat's format, one JSON object a line: ``{question_id, category, turns: [t1, t2],
reference?: [r1, r2]}`` (``builtin:sample`` is our own 6-question file). Reference answers (FastChat's
``reference_answer/<judge>.jsonl``, or ``{question_id, turns}`` lines, or a question's own ``reference``)
are used for math, reasoning and coding, as MT-bench does.

Answers: the tokenizer's chat template (or ``chat_template_override``), turn 2 conditioned on the model's own
turn-1 answer, MT-bench's temperature per category, seeded per question and turn. Judging: single-answer
grading with our own prompts (same rubric: a 1-10 rating written ``[[N]]``), reference-guided for
math/reasoning/coding when a reference exists, judge temperature 0. A judgment that never parses is a
failure: counted and shown (``judgments: 159/160 parsed``); the score is over parsed judgments only when
failures <= ``max_judge_failures``, else the task fails naming the failed question/turns. Metrics: ``score``,
``turn1``, ``turn2``, ``category/<name>``, each with a standard error clustered by question.

Entry point: ``evaluate_mtbench(cfg, generate, tokenizer, cache_dir)``. ``cache_dir`` belongs to one model
under test (one position); pass the same directory again to resume without paying twice. It holds
``cache.jsonl`` (every answer and every judge request/reply) and ``samples.jsonl`` (readable records).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from accbench.config import JudgeCfg, MTBenchTask
from accbench.data.jsonl import iter_jsonl
from accbench.errors import AccbenchError, DataError
from accbench.evaluate.judge import (JsonlCache, JudgeClient, Judgment, Messages, OpenAIJudge,
                                     ReplyCache, judge_ratings, request_key)
from accbench.evaluate.requests import GenerateFn, GenerateRequest, TaskResult, request_fields

log = logging.getLogger("accbench.mtbench")

# MT-bench's sampling temperature per category (FastChat's gen_model_answer); other categories get 0.7 as there.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1,
               "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0}
DEFAULT_TEMPERATURE = 0.7
NEED_REFERENCE = ("math", "reasoning", "coding")
MT_BENCH_SIZE, MT_BENCH_TURNS = 80, 2
BUILTIN = {"sample": ("mt_bench/sample_questions.jsonl", "mt_bench/sample_reference_answers.jsonl")}
FASTCHAT_HINT = ("get MT-bench's question.jsonl and reference_answer/gpt-4.jsonl from FastChat's repository, "
                 "fastchat/llm_judge/data/mt_bench/ (see docs/mtbench.md), or use questions: builtin:sample")


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------- loading


def _resolve(spec: str, which: int) -> tuple[Path, bool]:
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN:
            raise DataError(f"unknown built-in MT-bench file {spec!r}", "use one of: "
                            + ", ".join(f"builtin:{k}" for k in BUILTIN))
        return Path(str(resources.files("accbench") / "assets" / BUILTIN[name][which])), True
    p = Path(spec).expanduser()
    if not p.is_file():
        raise DataError(f"MT-bench file not found: {p}", FASTCHAT_HINT)
    return p, False


def _strings(value: Any, where: str, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: '{field}' must be a non-empty list of strings",
                        'FastChat\'s format: {"question_id": 81, "category": "writing", "turns": ["...", "..."]}')
    return tuple(value)


def load_questions(spec: str, limit: int | None = None) -> list[Question]:
    """Read and check a FastChat-format question file; warn when it is not MT-bench's 80 x 2 turns."""
    path, builtin = _resolve(spec, 0)
    questions, seen = [], set()
    for n, row in iter_jsonl(path):
        where = f"{path}:{n}"
        missing = [k for k in ("question_id", "category", "turns") if k not in row]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}", FASTCHAT_HINT)
        qid = str(row["question_id"])
        if qid in seen:
            raise DataError(f"{where}: question_id {qid} appears twice", "give every question its own id")
        seen.add(qid)
        ref = _strings(row["reference"], where, "reference") if row.get("reference") else None
        questions.append(Question(qid, str(row["category"]), _strings(row["turns"], where, "turns"), ref))
    if not questions:
        raise DataError(f"{path}: no questions", FASTCHAT_HINT)
    odd_turns = [q.question_id for q in questions if len(q.turns) != MT_BENCH_TURNS]
    if not builtin and len(questions) != MT_BENCH_SIZE:
        log.warning("%s: %d questions, MT-bench has %d; scores are not comparable with published MT-bench",
                    path, len(questions), MT_BENCH_SIZE)
    if odd_turns:
        log.warning("%s: questions %s do not have %d turns", path, ", ".join(odd_turns), MT_BENCH_TURNS)
    return questions[:limit] if limit else questions


def load_references(spec: str) -> dict[str, tuple[str, ...]]:
    """Reference answers by question id: FastChat's answer format (choices[0].turns) or {question_id, turns}."""
    path, _ = _resolve(spec, 1)
    refs = {}
    for n, row in iter_jsonl(path):
        where = f"{path}:{n}"
        if "question_id" not in row:
            raise DataError(f"{where}: missing question_id", FASTCHAT_HINT)
        turns = row.get("turns")
        if turns is None and isinstance(row.get("choices"), list) and row["choices"]:
            turns = row["choices"][0].get("turns") if isinstance(row["choices"][0], dict) else None
        refs[str(row["question_id"])] = _strings(turns, where, "turns (or choices[0].turns)")
    return refs


# ----------------------------------------------------------------------------- answers


def _chat_template(tokenizer: Any, override: str | None) -> str | None:
    """The template to use: the override (a Jinja string or a file holding one), else the tokenizer's own."""
    if override:
        if "{" in override:  # Jinja always has {{ or {%; anything else must name a file
            return override
        p = Path(override).expanduser()
        if not p.is_file():
            raise AccbenchError(f"chat_template_override: {override!r} is neither a Jinja template nor a file",
                                "give the template text, or the path of a file that holds it")
        return p.read_text()
    if not getattr(tokenizer, "chat_template", None):
        raise AccbenchError(
            "mtbench: the model's tokenizer has no chat template, and MT-bench answers are chat turns",
            "set chat_template_override in the mtbench task (a Jinja chat template, or a file holding one), "
            "or evaluate an instruction-tuned model")
    return None


def render_chat(tokenizer: Any, messages: Messages, template: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja errors come in many types; the user's template is the likely cause
        raise AccbenchError(f"mtbench: the chat template failed to render: {type(exc).__name__}: {exc}",
                            "check chat_template_override (or the tokenizer's chat_template)") from None


def generate_answers(questions: list[Question], generate: GenerateFn, tokenizer: Any, template: str | None,
                     max_new_tokens: int, seed: int, cache: ReplyCache, model_id: str = "") -> dict[str, list[str]]:
    """Answer turn k of every question in one batch, each conditioned on the model's own earlier answers."""
    answers: dict[str, list[str]] = {q.question_id: [] for q in questions}
    for turn in range(max(len(q.turns) for q in questions)):
        batch = []
        for idx, q in enumerate(questions):
            if turn >= len(q.turns):
                continue
            msgs: Messages = []
            for t in range(turn + 1):
                msgs.append({"role": "user", "content": q.turns[t]})
                if t < turn:
                    msgs.append({"role": "assistant", "content": answers[q.question_id][t]})
            req = GenerateRequest(context=render_chat(tokenizer, msgs, template), max_new_tokens=max_new_tokens,
                                  temperature=TEMPERATURE.get(q.category, DEFAULT_TEMPERATURE),
                                  seed=seed + 16 * idx + turn)
            key = request_key("answer", {"model": model_id}, request_fields(req))
            hit = cache.get(key)
            batch.append((q, req, key, hit["answer"] if hit else None))
        todo = [i for i, b in enumerate(batch) if b[3] is None]
        if todo:
            log.info("mtbench: generating %d turn-%d answers (%d from cache)", len(todo), turn + 1,
                     len(batch) - len(todo))
            texts = generate([batch[i][1] for i in todo])
            if len(texts) != len(todo):
                raise AccbenchError(f"mtbench: generate returned {len(texts)} texts for {len(todo)} requests",
                                    "this is a bug in the engine; please report it")
            for i, text in zip(todo, texts):
                q, req, key, _ = batch[i]
                cache.put(key, {"context": req.context, "answer": text})
                batch[i] = (q, req, key, text)
        for q, _, _, text in batch:
            answers[q.question_id].append(text.strip())
    return answers


# ----------------------------------------------------------------------------- judge prompts (ours)

JUDGE_SYSTEM = "You are a fair and exacting reviewer of answers written by AI assistants."

_RUBRIC = ("Judge how well the assistant's answer serves the user: is it helpful, on topic, correct, deep enough, "
           "detailed where detail helps and creative where creativity fits? ")
_RUBRIC_REF = ("Judge above all whether the assistant's answer is correct, and then whether it is helpful. "
               "A reference answer is given: compare the assistant's answer with it and name any mistakes. ")
_VERDICT = ("Write a short, objective explanation first. Then give your rating of the answer on a scale from "
            "1 (useless) to 10 (excellent), as a whole number inside double square brackets, for example "
            "\"Rating: [[4]]\".")


def judge_prompt(q: Question, answers: list[str], turn: int, reference: tuple[str, ...] | None) -> Messages:
    """The judge conversation for turn `turn` (0-based): the dialogue so far, references, and the rubric."""
    ref = reference if reference and turn < len(reference) else None
    parts = [(_RUBRIC_REF if ref else _RUBRIC)]
    if turn == 0:
        parts.append(_VERDICT + "\n")
        parts.append(f"<<< USER QUESTION >>>\n{q.turns[0]}\n")
        if ref:
            parts.append(f"<<< REFERENCE ANSWER >>>\n{ref[0]}\n")
        parts.append(f"<<< ASSISTANT ANSWER >>>\n{answers[0]}\n<<< END >>>")
    else:
        parts.append(f"Below is a conversation of {turn + 1} turns. Rate ONLY the assistant's answer in the last "
                     f"turn (turn {turn + 1}); the earlier turns are context. " + _VERDICT + "\n")
        for t in range(turn + 1):
            parts.append(f"<<< USER, TURN {t + 1} >>>\n{q.turns[t]}\n")
            if ref:
                parts.append(f"<<< REFERENCE ANSWER, TURN {t + 1} >>>\n{ref[t]}\n")
            parts.append(f"<<< ASSISTANT, TURN {t + 1} >>>\n{answers[t]}\n")
        parts.append("<<< END >>>")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


# ----------------------------------------------------------------------------- scoring


def mean_stderr(items: list[tuple[str, float]]) -> tuple[float | None, float | None]:
    """Mean of (question id, rating) pairs and its standard error clustered by question.

    The two turns of a question share a topic and an answer, so they are not independent; the cluster-robust
    estimate sqrt(G/(G-1) * sum_q (sum of deviations in q)^2) / N accounts for that. With one rating per
    question (the per-turn means) it is exactly the usual sample stderr; with one question it is undefined.
    """
    if not items:
        return None, None
    mean = sum(x for _, x in items) / len(items)
    dev: dict[str, float] = {}
    for qid, x in items:
        dev[qid] = dev.get(qid, 0.0) + (x - mean)
    g = len(dev)
    if g < 2:
        return mean, None
    return mean, math.sqrt(g / (g - 1) * sum(d * d for d in dev.values())) / len(items)


def score_judgments(task: str, rows: list[tuple[Question, int, Judgment]], max_failures: int,
                    where: str) -> TaskResult:
    """Means (overall, per turn, per category) over parsed judgments; fail loudly past `max_failures`."""
    failed = {f"{q.question_id}/t{t + 1}": j.error or "no rating" for q, t, j in rows if j.rating is None}
    total, parsed = len(rows), len(rows) - len(failed)
    summary = f"judgments: {parsed}/{total} parsed"
    log.info("mtbench %s: %s", task, summary)
    if len(failed) > max_failures:
        listed = "\n".join(f"    {k}: {v}" for k, v in list(failed.items())[:20])
        more = f"\n    ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise AccbenchError(
            f"mtbench task {task}: {summary}; {len(failed)} failed judgments exceed max_judge_failures="
            f"{max_failures}, so no score is reported. Failed (question/turn):\n{listed}{more}",
            f"read the judge replies in {where}; fix the judge (endpoint, model) or raise judge.parse_retries "
            "and rerun with --resume (only the missing judgments are paid for), or accept N failures with "
            "max_judge_failures: N (the score is then the mean over parsed judgments only)")
    if failed:
        log.warning("mtbench %s: %d judgments failed and are excluded from the score: %s", task, len(failed),
                    ", ".join(failed))
    groups: dict[str, list[tuple[str, float]]] = {"score": []}
    per_sample = {}
    for q, t, j in rows:
        if j.rating is None:
            continue
        per_sample[f"{q.question_id}/t{t + 1}"] = float(j.rating)
        for g in ("score", f"turn{t + 1}", f"category/{q.category}"):
            groups.setdefault(g, []).append((q.question_id, float(j.rating)))
    metrics, stderr = {}, {}
    for g in sorted(groups, key=lambda g: (g.startswith("category/"), g)):
        metrics[g], stderr[g] = mean_stderr(groups[g])
    extra = {"judgments": {"total": total, "parsed": parsed, "failed": failed, "summary": summary},
             "questions": len({q.question_id for q, _, _ in rows})}
    return TaskResult(task=task, type="mtbench", metrics=metrics, stderr=stderr, n=parsed,
                      per_sample={"score": per_sample}, extra=extra)


# ----------------------------------------------------------------------------- entry point


def make_openai_judge(j: JudgeCfg) -> OpenAIJudge:
    if not j.model:
        raise AccbenchError("mtbench: judge.model is not set", "name the judge model, e.g. judge: {model: gpt-4o}")
    return OpenAIJudge(j.model, j.api_key_env, j.base_url, j.timeout, j.max_retries, j.concurrency, j.max_tokens)


def evaluate_mtbench(cfg: MTBenchTask, generate: GenerateFn, tokenizer: Any, cache_dir: Path, *,
                     judge: JudgeClient | None = None, cache: ReplyCache | None = None,
                     model_id: str = "") -> TaskResult:
    """Answer, judge and score MT-bench for one model.

    `judge`: a ready client; by default one is built from `cfg.judge` (type openai). An `hf` judge needs the
    engine: build ``HFJudge(judge_generate, judge_tokenizer, cfg.judge.path, cfg.judge.max_tokens)`` and pass it.
    `cache`: where answers and judge replies are kept (default: ``cache_dir/cache.jsonl``).
    `model_id`: names the model under test inside answer cache keys (useful when a cache is shared).
    """
    questions = load_questions(cfg.questions, cfg.limit)
    ref_spec = cfg.reference_answers or ("builtin:sample" if cfg.questions == "builtin:sample" else None)
    refs = load_references(ref_spec) if ref_spec else {}
    template = _chat_template(tokenizer, cfg.chat_template_override)
    if judge is None:  # built before generating, so a missing key fails in seconds, not after an hour
        if cfg.judge.type == "hf":
            raise AccbenchError("mtbench: an hf judge must be built by the pipeline (it loads judge.path)",
                                "pass judge=HFJudge(...) to evaluate_mtbench")
        judge = make_openai_judge(cfg.judge)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else JsonlCache(cache_dir / "cache.jsonl")

    answers = generate_answers(questions, generate, tokenizer, template, cfg.max_new_tokens, cfg.seed, cache,
                               model_id)
    slots, prompts = [], []
    for q in questions:
        ref = refs.get(q.question_id, q.reference) if q.category in NEED_REFERENCE else None
        if q.category in NEED_REFERENCE and not ref:
            log.info("mtbench: question %s (%s) has no reference answer; judged without one", q.question_id,
                     q.category)
        for t in range(len(q.turns)):
            slots.append((q, t, ref))
            prompts.append(judge_prompt(q, answers[q.question_id], t, ref))
    judgments = judge_ratings(prompts, judge, cache, cfg.judge.parse_retries)

    samples = cache_dir / "samples.jsonl"
    with samples.open("w", encoding="utf-8") as f:
        for (q, t, ref), j in zip(slots, judgments):
            f.write(json.dumps({"id": f"{q.question_id}/t{t + 1}", "category": q.category, "turn": t + 1,
                                "question": q.turns[t], "answer": answers[q.question_id][t],
                                "reference_used": bool(ref and t < len(ref)), "rating": j.rating, "error": j.error,
                                "judge_replies": j.replies}, ensure_ascii=False) + "\n")
    result = score_judgments(cfg.name, [(q, t, j) for (q, t, _), j in zip(slots, judgments)],
                             cfg.max_judge_failures, str(samples))
    result.extra.update({"judge": {k: v for k, v in judge.identity.items()}, "samples_file": str(samples),
                         "judge_requests_sent": sum(j.sent for j in judgments),
                         "reference_guided": sum(1 for _, t, r in slots if r and t < len(r))})
    return result
