"""Free generation from a local jsonl (`prompt`, `target` or a list of `targets`), scored by matching.

Metrics: exact_match (after the configured normalisation), contains (a target appears in the output),
regex (a target, read as a regular expression, matches the output). With `regex:` set, the answer is
first extracted from the output (group 1 if the pattern has one, else the whole match) before
exact_match/contains compare it; an output with no match counts as wrong.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accbench.errors import AccbenchError, DataError
from accbench.evaluate.requests import Answerer, GenerateRequest, TaskResult, cut_at_stop
from accbench.evaluate.tasks.common import apply_limit, fewshot_prefix, field, mean_stderr, read_jsonl, sample_id

if TYPE_CHECKING:
    from accbench.config import GenerateTask

_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    targets: tuple[str, ...]


def load_items(cfg: "GenerateTask") -> list[Item]:
    out = []
    for line, doc in read_jsonl(cfg.path, cfg.name):
        where = f"{cfg.path}:{line}"
        prompt = field(doc, cfg.prompt_field, where, cfg.name)
        name = cfg.target_field if cfg.target_field in doc or "targets" not in doc else "targets"
        target = field(doc, name, where, cfg.name)
        targets = tuple(str(t) for t in target) if isinstance(target, list) else (str(target),)
        if not targets or not isinstance(prompt, str):
            raise DataError(f"task '{cfg.name}': {where}: needs a string prompt and at least one target")
        out.append(Item(sample_id(doc, line), prompt, targets))
    return apply_limit(out, cfg.limit)


def normalize(text: str, cfg: "GenerateTask") -> str:
    if cfg.ignore_case:
        text = text.lower()
    if cfg.ignore_punctuation:
        text = text.translate(_PUNCT)
    return text.strip() if cfg.strip else text


def extract(output: str, pattern: str | None) -> str | None:
    if not pattern:
        return output
    m = re.search(pattern, output)
    if m is None:
        return None
    return m.group(1) if m.re.groups else m.group(0)


def score_output(output: str, targets: tuple[str, ...], cfg: "GenerateTask") -> float:
    if cfg.metric == "regex":
        flags = re.IGNORECASE if cfg.ignore_case else 0
        return float(any(re.search(t, output, flags) for t in targets))
    answer = extract(output, cfg.regex)
    if answer is None:
        return 0.0
    a = normalize(answer, cfg)
    if cfg.metric == "contains":
        return float(any(normalize(t, cfg) in a for t in targets))
    return float(any(normalize(t, cfg) == a for t in targets))


def build_requests(cfg: "GenerateTask", items: list[Item]) -> list[GenerateRequest]:
    if cfg.chat_template:
        raise AccbenchError(f"task '{cfg.name}': chat_template is not supported by the generate task yet",
                            "set chat_template: false and put the formatted prompt in the data")
    if cfg.regex:
        try:
            re.compile(cfg.regex)
        except re.error as exc:
            raise AccbenchError(f"task '{cfg.name}': regex {cfg.regex!r} is not a valid regular expression: {exc}") from None
    shots = [it.prompt + it.targets[0] for it in items]
    return [GenerateRequest(fewshot_prefix(shots, cfg.num_fewshot, i, cfg.seed) + it.prompt, cfg.max_new_tokens,
                            tuple(cfg.stop), cfg.temperature, 1.0, cfg.seed, sample_id=it.id)
            for i, it in enumerate(items)]


def compute_metrics(cfg: "GenerateTask", items: list[Item], outputs: list[str]) -> TaskResult:
    outputs = [cut_at_stop(o, cfg.stop)[0] for o in outputs]  # answerers other than the engine may not cut
    per = {it.id: score_output(out, it.targets, cfg) for it, out in zip(items, outputs)}
    texts = {}
    for it, out in zip(items, outputs):
        texts[it.id] = {"prompt": it.prompt, "reference": " | ".join(it.targets), "response": out}
        if cfg.regex and cfg.metric != "regex":  # what exact_match/contains compared
            texts[it.id]["answers"] = {cfg.metric: extract(out, cfg.regex) or ""}
    return TaskResult(task=cfg.name, type="generate", metrics={cfg.metric: sum(per.values()) / len(per)},
                      stderr={cfg.metric: mean_stderr(list(per.values()))}, n=len(per),
                      per_sample={cfg.metric: per}, samples=texts,
                      extra={"examples": [{"id": it.id, "output": o} for it, o in list(zip(items, outputs))[:3]]})


def check(cfg: "GenerateTask") -> None:
    build_requests(cfg, load_items(cfg))


def run(cfg: "GenerateTask", answerer: Answerer) -> TaskResult:
    items = load_items(cfg)
    return compute_metrics(cfg, items, answerer.generate(build_requests(cfg, items)))
