"""llmc's generate_only eval (its CustomGenerate): greedy answers to llmc's custom samples, no score.

The samples are llmc's samples.json (`path`, a folder; data/chat.py reads it). Each question, wrapped by the
tokenizer's chat template in llmc's system + user turns with the generation prompt when `chat_template` (llmc's
`apply_chat_template`), is answered greedily for `max_new_tokens` tokens, no stop string (llmc stops at the
token budget or the end-of-sequence token). llmc prints the answers; accbench keeps them per position in
results.json (`tasks[].samples`: prompt, the sample's answer as reference, the response), so the answers of
pretrain and fake_quant sit side by side. No metric: llmc computes none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accbench.data.chat import load_custom_samples
from accbench.errors import AccbenchError
from accbench.evaluate.requests import Answerer, GenerateRequest, TaskResult

if TYPE_CHECKING:
    from accbench.config_tasks import CustomGenerateTask


def build_requests(cfg: "CustomGenerateTask", tokenizer: Any) -> tuple[list[GenerateRequest], list[str]]:
    """One greedy request per sample, and each sample's answer (the reference shown beside the response)."""
    samples = load_custom_samples(cfg.path)
    if cfg.limit is not None:
        from accbench.evaluate.tasks.common import apply_limit

        samples = apply_limit(samples, cfg.limit)
    if cfg.chat_template and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise AccbenchError(f"task '{cfg.name}': apply_chat_template is set, but the tokenizer has no chat template",
                            "use a chat model's tokenizer (model.tokenizer_path), or set apply_chat_template: false")
    reqs = []
    for i, s in enumerate(samples):
        prompt = s.question
        if cfg.chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "system", "content": cfg.system_prompt},
                                                    {"role": "user", "content": s.question}],
                                                   tokenize=False, add_generation_prompt=True)
        reqs.append(GenerateRequest(prompt, cfg.max_new_tokens, (), 0.0, 1.0, cfg.seed, sample_id=f"sample{i}"))
    return reqs, [s.answer for s in samples]


def check(cfg: "CustomGenerateTask") -> None:
    load_custom_samples(cfg.path)


def run(cfg: "CustomGenerateTask", answerer: Answerer, tokenizer: Any) -> TaskResult:
    reqs, answers = build_requests(cfg, tokenizer)
    outputs = answerer.generate(reqs)
    texts = {r.sample_id: {"prompt": r.context, "reference": a, "response": o}
             for r, a, o in zip(reqs, answers, outputs)}
    return TaskResult(task=cfg.name, type="generate_only", metrics={}, stderr={}, n=len(reqs), samples=texts,
                      extra={"examples": [{"id": r.sample_id, "output": o} for r, o in list(zip(reqs, outputs))[:3]]})
