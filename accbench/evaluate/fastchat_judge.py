"""FastChat's MT-bench judging rules, written for accbench from FastChat's documented behaviour
(`fastchat/llm_judge/common.py`, `gen_judgment.py`): which judge prompt grades which question and turn, how a
prompt is filled, and how a judge's reply is read.

- Prompt choice: questions of the categories FastChat grades against a reference answer (math, reasoning,
  coding) get `single-math-v1` (turn 1) / `single-math-v1-multi-turn` (turn 2), the others `single-v1` /
  `single-v1-multi-turn`; pairwise judging uses `pair-math-v1(-multi-turn)` / `pair-v2(-multi-turn)`.
  Turn 2 is graded only for questions of exactly two turns, as FastChat does.
- Filling: the template's `str.format` fields (`question`, `answer`, `ref_answer_1`, ... or
  `question_1`, `answer_1`, `answer_2`, `ref_answer_2`, ...; `answer_a`/`answer_b` for pairs); the request is
  the prompt's system message (left out when empty) and one user message, as FastChat's OpenAI call sends it.
- Reading a rating: the first `[[x]]` with x a decimal number, else the first `[x]`, read as a Python literal
  (7 -> 7, 7.5 -> 7.5); no match is "no rating" (FastChat's -1). A rating out of 1..10 is kept, as there.
- Reading a verdict: `[[A]]` anywhere, else `[[B]]`, else `[[C]]` (a tie), else an error.

The prompt texts are not part of accbench: they are read from the user's own `judge_prompts.jsonl`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from accbench.data.jsonl import iter_jsonl
from accbench.errors import DataError

Messages = list[dict[str, str]]

# categories FastChat grades with a reference answer (its NEED_REF_CATS)
NEED_REFERENCE = ("math", "reasoning", "coding", "arena-hard-200")
SINGLE = {(False, 1): "single-v1", (False, 2): "single-v1-multi-turn",
          (True, 1): "single-math-v1", (True, 2): "single-math-v1-multi-turn"}
PAIR = {(False, 1): "pair-v2", (False, 2): "pair-v2-multi-turn",
        (True, 1): "pair-math-v1", (True, 2): "pair-math-v1-multi-turn"}
PROMPTS_HINT = ("use FastChat's fastchat/llm_judge/data/judge_prompts.jsonl from https://github.com/lm-sys/FastChat "
                "(see docs/mtbench.md), unchanged")

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class JudgePrompt:
    """One line of judge_prompts.jsonl."""

    name: str
    type: str  # single | pairwise
    system_prompt: str
    prompt_template: str
    output_format: str


def load_judge_prompts(path: str, pairwise: bool = False) -> dict[str, JudgePrompt]:
    """The prompts of a judge_prompts.jsonl by name; every prompt MT-bench needs must be there."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"judge.prompt_file: {p} does not exist", PROMPTS_HINT)
    prompts = {}
    for n, row in iter_jsonl(p):
        missing = [k for k in ("name", "type", "system_prompt", "prompt_template", "output_format") if k not in row]
        if missing:
            raise DataError(f"{p}:{n}: missing {', '.join(missing)}", PROMPTS_HINT)
        prompts[str(row["name"])] = JudgePrompt(str(row["name"]), str(row["type"]), str(row["system_prompt"]),
                                                str(row["prompt_template"]), str(row["output_format"]))
    needed = list(SINGLE.values()) + (list(PAIR.values()) if pairwise else [])
    absent = [k for k in needed if k not in prompts]
    if absent:
        raise DataError(f"{p}: no judge prompt named {', '.join(absent)} (found: {', '.join(prompts) or 'none'})",
                        PROMPTS_HINT)
    return prompts


def prompt_name(category: str, turn: int, pairwise: bool = False) -> str:
    """The FastChat prompt that grades turn `turn` (1-based) of a question of `category`."""
    return (PAIR if pairwise else SINGLE)[(category in NEED_REFERENCE, turn)]


def _request(prompt: JudgePrompt, user: str) -> Messages:
    system = [{"role": "system", "content": prompt.system_prompt}] if prompt.system_prompt != "" else []
    return system + [{"role": "user", "content": user}]


def _ref_fields(ref: tuple[str, ...] | None, turn: int) -> dict[str, str]:
    if ref is None:
        return {}
    fields = {"ref_answer_1": ref[0]}
    if turn == 2:
        fields["ref_answer_2"] = ref[1]
    return fields


def fill_single(prompt: JudgePrompt, questions: tuple[str, ...], answers: list[str], turn: int,
                ref: tuple[str, ...] | None) -> Messages:
    """The request grading turn `turn` (1 or 2) of one model's answers."""
    if turn == 1:
        user = prompt.prompt_template.format(question=questions[0], answer=answers[0], **_ref_fields(ref, 1))
    else:
        user = prompt.prompt_template.format(question_1=questions[0], question_2=questions[1], answer_1=answers[0],
                                             answer_2=answers[1], **_ref_fields(ref, 2))
    return _request(prompt, user)


def fill_pair(prompt: JudgePrompt, questions: tuple[str, ...], answers_a: list[str], answers_b: list[str],
              turn: int, ref: tuple[str, ...] | None) -> Messages:
    """The request comparing assistant A's and assistant B's answers at turn `turn`."""
    if turn == 1:
        user = prompt.prompt_template.format(question=questions[0], answer_a=answers_a[0], answer_b=answers_b[0],
                                             **_ref_fields(ref, 1))
    else:
        user = prompt.prompt_template.format(question_1=questions[0], question_2=questions[1],
                                             answer_a_1=answers_a[0], answer_b_1=answers_b[0],
                                             answer_a_2=answers_a[1], answer_b_2=answers_b[1], **_ref_fields(ref, 2))
    return _request(prompt, user)


def parse_rating(text: str | None) -> tuple[int | float | None, str]:
    """FastChat's rating rule: first [[x]], else first [x], x a decimal number read as a literal."""
    if not text:
        return None, "empty reply"
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    if match is None:
        return None, "no [[rating]] or [rating] in the reply"
    raw = match.group(1)
    try:
        value = ast.literal_eval(raw)
    except (SyntaxError, ValueError):  # "07": a leading zero, which FastChat's literal_eval cannot read either
        return None, f"[{raw}] is not a number FastChat can read"
    return value, ""


def parse_verdict(text: str | None) -> tuple[str | None, str]:
    """FastChat's pairwise rule: "A" if [[A]] appears, else "B" for [[B]], else "tie" for [[C]]."""
    if not text:
        return None, "empty reply"
    for mark, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if mark in text:
            return verdict, ""
    return None, "no [[A]], [[B]] or [[C]] verdict in the reply"
