"""MT-bench answers from the model under test, generated as FastChat's `gen_model_answer.py` generates them.

One answer per question turn (FastChat's num_choices = 1); turn 2 is conditioned on the model's own turn-1
answer; the temperature is MT-bench's per category (greedy below 1e-4, as FastChat switches off sampling);
`max_new_tokens` per turn (FastChat: 1024); sampled turns also get Hugging Face generate's `top_k` 50 and
`top_p` 1.0 (what FastChat's `model.generate` adds unless the model's generation_config says otherwise). The prompt is the tokenizer's chat template (or
`chat_template_override`) or, for a model without one, a FastChat conversation template by name
(conv_templates.py), whose answers are cut and stripped as FastChat does. Each request carries a seed derived
from the task seed, the question's position and the turn. Answers are cached as they arrive and written in
FastChat's answer format (``model_answer.jsonl``: {question_id, model_id, choices: [{index: 0, turns}]}), so
they can be fed to FastChat's own judging, and pairwise judging reads a baseline's answers from there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from accbench.errors import AccbenchError
from accbench.evaluate import conv_templates
from accbench.evaluate.judge import Messages, ReplyCache, request_key
from accbench.evaluate.requests import GenerateFn, GenerateRequest, request_fields

log = logging.getLogger("accbench.mtbench")

# MT-bench's sampling temperature per category (FastChat's gen_model_answer); other categories get 0.7 as there.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1, "extraction": 0.0, "math": 0.0,
               "coding": 0.0, "reasoning": 0.0, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7
ANSWER_FILE = "model_answer.jsonl"


def chat_template(tokenizer: Any, override: str | None, conv_template: str | None) -> str | None:
    """The Jinja template to use: the override (text or a file holding it), else the tokenizer's own; None when
    the tokenizer's own is used or a FastChat conversation template is named."""
    if conv_template:
        conv_templates.check_template(conv_template)
        return None
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
            "name a FastChat conversation template (conv_template: one_shot, as FastChat uses for a model it does "
            "not know, or vicuna_v1.1), or set chat_template_override (Jinja text or a file)")
    return None


def render_chat(tokenizer: Any, messages: Messages, template: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja errors come in many types; the user's template is the likely cause
        raise AccbenchError(f"mtbench: the chat template failed to render: {type(exc).__name__}: {exc}",
                            "check chat_template_override (or the tokenizer's chat_template)") from None


def _prompt(turns: tuple[str, ...], earlier: list[str], tokenizer: Any, template: str | None,
            conv_template: str | None) -> str:
    if conv_template:
        return conv_templates.render(conv_template, turns, earlier)
    msgs: Messages = []
    for t, text in enumerate(turns[:len(earlier) + 1]):
        msgs.append({"role": "user", "content": text})
        if t < len(earlier):
            msgs.append({"role": "assistant", "content": earlier[t]})
    return render_chat(tokenizer, msgs, template)


def generate_answers(questions: list[Any], generate: GenerateFn, tokenizer: Any, template: str | None,
                     max_new_tokens: int, seed: int, cache: ReplyCache, model_id: str = "",
                     conv_template: str | None = None, top_k: int = 50, top_p: float = 1.0) -> dict[str, list[str]]:
    """Answer turn k of every question in one batch, each conditioned on the model's own earlier answers.
    Sampled categories also get `top_k` / `top_p` (Hugging Face generate's defaults: 50, 1.0)."""
    answers: dict[str, list[str]] = {q.question_id: [] for q in questions}
    for turn in range(max(len(q.turns) for q in questions)):
        batch = []
        for idx, q in enumerate(questions):
            if turn >= len(q.turns):
                continue
            temperature = TEMPERATURE.get(q.category, DEFAULT_TEMPERATURE)
            sampled = temperature >= 1e-4  # FastChat samples above 1e-4, else decodes greedily
            req = GenerateRequest(context=_prompt(q.turns, answers[q.question_id], tokenizer, template, conv_template),
                                  max_new_tokens=max_new_tokens, temperature=temperature if sampled else 0.0,
                                  top_p=top_p if sampled else 1.0, seed=seed + 16 * idx + turn,
                                  top_k=top_k if sampled else 0)
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
            answers[q.question_id].append(conv_templates.finish(conv_template, text) if conv_template
                                          else text.strip())
    return answers


def write_answers(path: Path, answers: dict[str, list[str]], model_id: str) -> None:
    """The answers in FastChat's answer-file format (one line per question)."""
    with path.open("w", encoding="utf-8") as f:
        for qid, turns in answers.items():
            f.write(json.dumps({"question_id": int(qid) if qid.isdigit() else qid, "model_id": model_id,
                                "choices": [{"index": 0, "turns": turns}]}, ensure_ascii=False) + "\n")


def read_answers(path: Path) -> dict[str, list[str]]:
    """Answers from a FastChat-format answer file, by question id (as a string)."""
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[str(row["question_id"])] = list(row["choices"][0]["turns"])
    return out
