"""llmc's generation eval blocks as accbench tasks, before the config model validates them.

llmc's `eval` list holds perplexity blocks and, with `type: generate_only` (its CustomGenerate), blocks that
answer custom samples greedily and print the answers. accbench runs such a block as a `generate_only` task
(evaluate/tasks/custom_generate.py) at the block's `eval_pos`, so the answers of every position land in
results.json's `tasks` (per-sample texts) and the report. `max_new_tokens` and `apply_chat_template` are llmc's
options of that eval type; llmc ignores them on a perplexity block, and so does accbench (they are taken out).
"""

from __future__ import annotations

from typing import Any

from accbench.data.chat import LLMC_SYSTEM_PROMPT, LLMC_SYSTEM_PROMPTS

GENERATE_KEYS = ("max_new_tokens", "apply_chat_template")


def move_generate_evals(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every `eval` block of `type: generate_only` turned into a task (appended to `tasks`)."""
    ev = data.get("eval")
    entries = [ev] if isinstance(ev, dict) else ev
    if not isinstance(entries, list) or not any(isinstance(e, dict) for e in entries):
        return data
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    system = LLMC_SYSTEM_PROMPTS.get(str(model.get("type")), LLMC_SYSTEM_PROMPT)
    kept, tasks = [], []
    for e in entries:
        if isinstance(e, dict) and e.get("type") == "generate_only":
            tasks.append(_as_task(e, system))
            continue
        if isinstance(e, dict):
            e = {k: v for k, v in e.items() if k not in GENERATE_KEYS}
        kept.append(e)
    if not tasks:
        return {**data, "eval": kept if isinstance(ev, list) else kept[0]}
    existing = data.get("tasks") if isinstance(data.get("tasks"), list) else []
    return {**data, "eval": kept, "tasks": [*existing, *tasks]}


def _as_task(e: dict[str, Any], system: str) -> dict[str, Any]:
    pos = e.get("eval_pos")
    task = {"type": "generate_only", "name": e.get("name", "custom_gen"), "path": e.get("path"),
            "max_new_tokens": e.get("max_new_tokens", 32), "chat_template": bool(e.get("apply_chat_template")),
            "system_prompt": system, "eval_pos": [pos] if isinstance(pos, str) else pos}
    if isinstance(e.get("bs"), int) and e["bs"] > 0:
        task["batch_size"] = e["bs"]
    # a key no llmc eval block has (a typo) goes along, so that the task's validation names it
    from accbench.config_sections import EvalCfg

    task.update({k: v for k, v in e.items() if k not in EvalCfg.model_fields and k not in GENERATE_KEYS})
    return {k: v for k, v in task.items() if v is not None}
