"""MT-bench: two-turn chat answers from the model under test, each turn graded by a judge model.

Questions are in FastChat's format, one JSON object a line: ``{question_id, category, turns: [t1, t2],
reference?: [r1, r2]}`` (``builtin:sample`` is our own 6-question file). Reference answers (FastChat's
``reference_answer/gpt-4.jsonl``, or ``{question_id, turns}`` lines, or a question's own ``reference``)
are used for math, reasoning and coding, as MT-bench does.

Answers: mtbench_answers.py (as FastChat's gen_model_answer). Grading (``judge.prompts``):

- ``fastchat`` (default): FastChat's own judge prompts from the user's ``judge_prompts.jsonl``, chosen and
  filled as FastChat's gen_judgment does (fastchat_judge.py), read by FastChat's rating rule; a reply with no
  rating is a failed judgment, not asked again unless ``judge.parse_retries`` says so.
- ``accbench``: accbench's own prompts and strict parser (accbench_judge.py).

Scores as FastChat's show_result.py: ``turn1`` / ``turn2`` the mean rating of each turn and ``score`` the
mean over all rated judgments of both turns; standard errors clustered by question and per-category means
beside them. Every judgment is accounted for: ``extra["judgments"]`` says "N of M judgments rated" and lists
each failed one (question, turn, why); ``n`` is the number of rated judgments, ``extra["n_per_turn"]`` per
turn; ``judge_requests_sent`` counts every HTTP request, the client's retries included. More than
``max_judge_failures`` failures (when set) fail the task. With ``pairwise: true`` and a baseline's answers at
hand, the model is also judged against the baseline (mtbench_pairwise.py): win/tie/loss and win rates.

Entry point: ``evaluate_mtbench(cfg, generate, tokenizer, cache_dir)``. ``cache_dir`` belongs to one model
under test (one position); pass the same directory again to resume without paying twice. It holds
``cache.jsonl`` (every answer and every judge request/reply), ``samples.jsonl`` (readable records) and
``model_answer.jsonl`` (the answers in FastChat's format).
"""


from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from accbench.config import JudgeCfg, MTBenchTask
from accbench.data.jsonl import iter_jsonl
from accbench.errors import AccbenchError, DataError
from accbench.evaluate import accbench_judge, fastchat_judge
from accbench.evaluate.judge import (JsonlCache, JudgeClient, Judgment, Messages, OpenAIJudge, ReplyCache,
                                     judge_ratings, parse_rating_strict)
from accbench.evaluate.mtbench_answers import ANSWER_FILE, chat_template, generate_answers, read_answers, write_answers
from accbench.evaluate.requests import GenerateFn, TaskResult

log = logging.getLogger("accbench.mtbench")

NEED_REFERENCE = fastchat_judge.NEED_REFERENCE
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


def score_judgments(task: str, rows: list[tuple["Slot", Judgment]], max_failures: int | None,
                    where: str) -> TaskResult:
    """FastChat's show_result means (per turn; overall over all rated judgments) with clustered stderrs and
    per-category means; every failed judgment listed; fail loudly past `max_failures` when it is set."""
    failed = [{"question_id": s.question.question_id, "turn": s.turn, "why": j.error or "no rating"}
              for s, j in rows if j.rating is None]
    total, rated = len(rows), len(rows) - len(failed)
    summary = f"{rated} of {total} judgments rated"
    log.info("mtbench %s: %s", task, summary)
    listed = "\n".join(f"    question {f['question_id']} turn {f['turn']}: {f['why']}" for f in failed[:20])
    more = f"\n    ... and {len(failed) - 20} more" if len(failed) > 20 else ""
    if max_failures is not None and len(failed) > max_failures:
        raise AccbenchError(
            f"mtbench task {task}: {summary}; {len(failed)} failed judgments exceed max_judge_failures="
            f"{max_failures}, so no score is reported. Failed:\n{listed}{more}",
            f"read the judge replies in {where}; fix the judge (endpoint, model) and rerun with --resume (only "
            "the missing judgments are paid for), or remove max_judge_failures to score over rated judgments "
            "(each failure is listed in the report)")
    if failed:
        log.warning("mtbench %s: %s; failed (left out of the score, as FastChat does):\n%s%s", task, summary,
                    listed, more)
    groups: dict[str, list[tuple[str, float]]] = {"score": []}
    per_sample = {}
    for s, j in rows:
        if j.rating is None:
            continue
        qid = s.question.question_id
        per_sample[f"{qid}/t{s.turn}"] = float(j.rating)
        for g in ("score", f"turn{s.turn}", f"category/{s.question.category}"):
            groups.setdefault(g, []).append((qid, float(j.rating)))
    metrics, stderr = {}, {}
    for g in sorted(groups, key=lambda g: (g.startswith("category/"), g)):
        metrics[g], stderr[g] = mean_stderr(groups[g])
    extra = {"judgments": {"total": total, "rated": rated, "failed": failed, "summary": summary},
             "n_per_turn": {g: len(v) for g, v in groups.items() if g.startswith("turn")},
             "questions": len({s.question.question_id for s, _ in rows})}
    return TaskResult(task=task, type="mtbench", metrics=metrics, stderr=stderr, n=rated,
                      per_sample={"score": per_sample}, extra=extra)


# ----------------------------------------------------------------------------- grading plan


@dataclass(frozen=True)
class Slot:
    """One judgment to make: a question's turn (1-based), its reference answer, and the judge prompt's name."""

    question: Question
    turn: int
    reference: tuple[str, ...] | None
    prompt: str


def grading_plan(questions: list[Question], refs: dict[str, tuple[str, ...]], prompts: str) -> list[Slot]:
    """Which judgments to make. FastChat's plan: turn 1 of every question, turn 2 of the two-turn ones, math/
    reasoning/coding against their answer in the reference file (which must exist; a question's own `reference`
    field is not what FastChat grades with). accbench's: every turn, a reference when there is one."""
    slots = []
    for q in questions:
        needs = q.category in NEED_REFERENCE
        ref = refs.get(q.question_id, q.reference) if needs else None
        if prompts != "accbench" and needs:  # FastChat reads references only from the reference-answer file
            ref = refs.get(q.question_id)
        if prompts == "accbench":
            if needs and not ref:
                log.info("mtbench: question %s (%s) has no reference answer; judged without one", q.question_id,
                         q.category)
            slots += [Slot(q, t + 1, ref, accbench_judge.PROMPT_NAME) for t in range(len(q.turns))]
            continue
        turns = [1, 2] if len(q.turns) == 2 else [1]
        if needs and (ref is None or len(ref) < turns[-1]):
            raise DataError(f"mtbench: question {q.question_id} ({q.category}) has no reference answer"
                            + (" for turn 2" if ref else "") + "; FastChat grades math, reasoning and coding "
                            "questions against one",
                            "set reference_answers: to FastChat's data/mt_bench/reference_answer/gpt-4.jsonl "
                            "(see docs/mtbench.md)")
        slots += [Slot(q, t, ref, fastchat_judge.prompt_name(q.category, t)) for t in turns]
    return slots


def judge_requests(slots: list[Slot], answers: dict[str, list[str]],
                   prompts: dict[str, fastchat_judge.JudgePrompt] | None) -> list[Messages]:
    """The judge conversation of every slot: FastChat's prompt filled as FastChat fills it, or accbench's."""
    out = []
    for s in slots:
        ans = answers[s.question.question_id]
        if prompts is None:
            out.append(accbench_judge.judge_prompt(s.question.turns, ans, s.turn - 1, s.reference))
        else:
            out.append(fastchat_judge.fill_single(prompts[s.prompt], s.question.turns, ans, s.turn, s.reference))
    return out


# ----------------------------------------------------------------------------- entry point


def make_openai_judge(j: JudgeCfg) -> OpenAIJudge:
    if not j.model:
        raise AccbenchError("mtbench: judge.model is not set", "name the judge model, e.g. judge: {model: gpt-4o}")
    return OpenAIJudge(j.model, j.api_key_env, j.base_url, j.timeout, j.max_retries, j.concurrency, j.max_tokens)


def grading_record(j: JudgeCfg) -> dict[str, Any]:
    """Which prompt set and which rating rule graded the answers (kept with the scores)."""
    if j.prompts == "accbench":
        return {"prompts": "accbench", "prompt_names": [accbench_judge.PROMPT_NAME], "parser": "accbench-strict"}
    data = Path(j.prompt_file).expanduser().read_bytes()
    return {"prompts": "fastchat", "prompt_file": str(j.prompt_file),
            "prompt_file_sha256": hashlib.sha256(data).hexdigest(), "parser": "fastchat"}


@dataclass
class Plan:
    """What one MT-bench task reads before answering: questions, the judgments to make, FastChat's prompts."""

    questions: list[Question]
    slots: list[Slot]  # single grading
    pair_slots: list[Slot]  # pairwise judging (FastChat's plan), empty without `pairwise`
    prompts: dict[str, fastchat_judge.JudgePrompt] | None  # FastChat's judge prompts, when used


def plan(cfg: MTBenchTask) -> Plan:
    """Read and check every file the task needs: questions, references, judge prompts."""
    questions = load_questions(cfg.questions, cfg.limit)
    ref_spec = cfg.reference_answers or ("builtin:sample" if cfg.questions == "builtin:sample" else None)
    refs = load_references(ref_spec) if ref_spec else {}
    prompts = (fastchat_judge.load_judge_prompts(cfg.judge.prompt_file, cfg.pairwise)
               if cfg.judge.prompt_file and (cfg.judge.prompts == "fastchat" or cfg.pairwise) else None)
    return Plan(questions, grading_plan(questions, refs, cfg.judge.prompts),
                grading_plan(questions, refs, "fastchat") if cfg.pairwise else [], prompts)


def check(cfg: MTBenchTask) -> None:
    """Everything the task reads, read before any model loads, so a wrong path fails in seconds, not after
    training (the conversation template too)."""
    plan(cfg)
    if cfg.conv_template:
        chat_template(None, None, cfg.conv_template)


def write_samples(path: Path, slots: list[Slot], judgments: list[Judgment], answers: dict[str, list[str]]) -> None:
    """One readable record per judgment: question, answer, judge prompt, replies, rating or why none."""
    with path.open("w", encoding="utf-8") as f:
        for s, j in zip(slots, judgments):
            q = s.question
            f.write(json.dumps({"id": f"{q.question_id}/t{s.turn}", "category": q.category, "turn": s.turn,
                                "judge_prompt": s.prompt, "question": q.turns[s.turn - 1],
                                "answer": answers[q.question_id][s.turn - 1],
                                "reference_used": bool(s.reference and s.turn <= len(s.reference)),
                                "rating": j.rating, "error": j.error, "judge_replies": j.replies},
                               ensure_ascii=False) + "\n")


def evaluate_mtbench(cfg: MTBenchTask, generate: GenerateFn, tokenizer: Any, cache_dir: Path, *,
                     judge: JudgeClient | None = None, cache: ReplyCache | None = None, model_id: str = "",
                     baseline_dir: Path | None = None, baseline_name: str = "", model_key: str = "") -> TaskResult:
    """Answer, judge and score MT-bench for one model.

    `judge`: a ready client; by default one is built from `cfg.judge` (type openai). An `hf` judge needs the
    engine: build ``HFJudge(judge_generate, judge_tokenizer, cfg.judge.path, cfg.judge.max_tokens)`` and pass it.
    `cache`: where answers and judge replies are kept (default: ``cache_dir/cache.jsonl``).
    `model_id`: names the model under test in FastChat's answer file, and in answer cache keys unless
    `model_key` is given: what the model is (its position and fingerprint), so a cached answer of another
    model under the same name (a resumed run whose quantization changed) is never reused.
    `baseline_dir`: the baseline model's cache_dir; with ``cfg.pairwise`` its answers are judged against ours.
    """
    p = plan(cfg)
    slots = p.slots
    template = chat_template(tokenizer, cfg.chat_template_override, cfg.conv_template)
    if judge is None:  # built before generating, so a missing key fails in seconds, not after an hour
        if cfg.judge.type == "hf":
            raise AccbenchError("mtbench: an hf judge must be built by the pipeline (it loads judge.path)",
                                "pass judge=HFJudge(...) to evaluate_mtbench")
        judge = make_openai_judge(cfg.judge)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else JsonlCache(cache_dir / "cache.jsonl")

    answers = generate_answers(p.questions, generate, tokenizer, template, cfg.max_new_tokens, cfg.seed, cache,
                               model_key or model_id, cfg.conv_template, cfg.top_k, cfg.top_p)
    write_answers(cache_dir / ANSWER_FILE, answers, model_id or cfg.name)
    single = p.prompts if cfg.judge.prompts == "fastchat" else None
    parse = fastchat_judge.parse_rating if cfg.judge.prompts == "fastchat" else parse_rating_strict
    judgments = judge_ratings(judge_requests(slots, answers, single), judge, cache, cfg.judge.parse_retries, parse)

    samples = cache_dir / "samples.jsonl"
    write_samples(samples, slots, judgments, answers)
    result = score_judgments(cfg.name, list(zip(slots, judgments)), cfg.max_judge_failures, str(samples))
    result.extra.update({"judge": dict(judge.identity), "grading": grading_record(cfg.judge),
                         "samples_file": str(samples), "answers_file": str(cache_dir / ANSWER_FILE),
                         "judge_requests_sent": sum(j.sent for j in judgments),
                         "reference_guided": sum(1 for s in slots if s.reference and s.turn <= len(s.reference))})
    if cfg.pairwise and baseline_dir is not None and Path(baseline_dir).resolve() != cache_dir.resolve():
        add_pairwise(result, p.pair_slots, answers, Path(baseline_dir), baseline_name, p.prompts, judge, cache,
                     cache_dir)
    return result


def add_pairwise(result: TaskResult, slots: list[Slot], answers: dict[str, list[str]], baseline_dir: Path,
                 baseline_name: str, prompts: dict[str, fastchat_judge.JudgePrompt], judge: JudgeClient,
                 cache: ReplyCache, cache_dir: Path) -> None:
    """Judge these answers against the baseline's (FastChat's pair prompts, both orders) into `result`."""
    from accbench.evaluate.mtbench_pairwise import OUTCOME_VALUE, judge_pairs, win_rates

    src = baseline_dir / ANSWER_FILE
    base = read_answers(src) if src.is_file() else {}
    lacking = [s.question.question_id for s in slots if len(base.get(s.question.question_id, [])) < s.turn]
    if lacking:
        why = (f"the baseline {baseline_name}'s answers ({src}) lack questions {', '.join(sorted(set(lacking)))}"
               if base else f"the baseline {baseline_name} has no answers yet ({src}): it is evaluated after this model")
        log.warning("mtbench %s: no pairwise judging: %s", result.task, why)
        result.extra["pairwise"] = {"baseline": baseline_name, "skipped": why}
        return
    games, sent = judge_pairs([(s.question, s.turn, s.reference) for s in slots], answers, base, prompts, judge,
                              cache)
    stats = win_rates(games)
    with (cache_dir / "pairwise.jsonl").open("w", encoding="utf-8") as f:
        for g in games:
            f.write(json.dumps(asdict(g), ensure_ascii=False) + "\n")
    rated = [(g.question_id, OUTCOME_VALUE[g.outcome]) for g in games if g.outcome is not None]
    for k in ("win_rate_adjusted", "win_rate", "loss_rate"):
        result.metrics[k] = stats[k]
    result.stderr["win_rate_adjusted"] = mean_stderr(rated)[1]
    result.per_sample["win_rate_adjusted"] = {f"{g.question_id}/t{g.turn}": OUTCOME_VALUE[g.outcome]
                                              for g in games if g.outcome is not None}
    stats.update(baseline=baseline_name, file=str(cache_dir / "pairwise.jsonl"),
                 failed=[{"question_id": g.question_id, "turn": g.turn, "why": g.why} for g in games
                         if g.outcome is None])
    result.extra["pairwise"] = stats
    result.extra["judge_requests_sent"] += sent
    log.info("mtbench %s vs %s: win %d, tie %d, loss %d, win_rate_adjusted %s", result.task, baseline_name,
             stats["win"], stats["tie"], stats["loss"], stats["win_rate_adjusted"])
