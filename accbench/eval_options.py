"""lm-eval-shaped options of `accbench eval` and the `accbench tasks` listing.

A user moving from `lm_eval --model hf --model_args pretrained=M,revision=R --tasks X --limit N` types
`accbench eval --model M --model_args revision=R --tasks X --limit N`; this module turns those options into
the model and task settings of the run config.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import yaml

from accbench.errors import AccbenchError

# lm-eval's hf model_args -> our model section
_MODEL_KEYS = {"pretrained": "path", "revision": "revision", "dtype": "torch_dtype", "torch_dtype": "torch_dtype",
               "trust_remote_code": "trust_remote_code", "peft": "peft", "tokenizer": "tokenizer_path",
               "attn_implementation": "attn_implementation", "device": "device"}
# lm-eval HFLM options that only steer lm-eval's own batching/placement; ours are set elsewhere
BUILTIN_TYPES = ("multiple_choice", "generate", "perplexity", "humaneval", "mtbench")
_IGNORED = {"batch_size", "max_batch_size", "parallelize", "backend", "logits_cache", "use_fast_tokenizer"}


def parse_model_args(text: str | None) -> dict[str, Any]:
    """`k=v,k=v` as lm-eval's --model_args: known keys map onto the model section, the rest go to
    from_pretrained (values read as YAML scalars: true, 8, bfloat16)."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AccbenchError(f"--model_args {text!r}: {item!r} is not key=value",
                                "write e.g. --model_args revision=main,dtype=bfloat16,trust_remote_code=True")
        value = yaml.safe_load(raw.strip()) if raw.strip() else ""
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if key in _MODEL_KEYS:
            out[_MODEL_KEYS[key]] = value if _MODEL_KEYS[key] == "trust_remote_code" else str(value)
        elif key not in _IGNORED:
            extra[key] = value
    if extra:
        out["from_pretrained"] = extra
    return out


def parse_limit(text: str | None) -> int | float | None:
    """--limit as lm-eval reads it: a count (5) or, below 1, a fraction of each task's documents (0.1)."""
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise AccbenchError(f"--limit {text!r} is not a number", "a count (--limit 100) or a fraction (--limit 0.1)") \
            from None
    if v <= 0 or (v >= 1 and not v.is_integer()):
        raise AccbenchError(f"--limit {text}: must be a whole count >= 1 or a fraction between 0 and 1")
    return int(v) if v >= 1 else v


def parse_batch_size(text: str | None) -> int | str | None:
    if text is None:
        return None
    if text == "auto" or text.startswith("auto:"):
        return "auto"  # lm-eval's auto:N re-tunes N times; our engine sizes batches per request length anyway
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise AccbenchError(f"--batch_size {text!r}: expected auto or a positive number")


def task_options(limit: str | None, num_fewshot: int | None, batch_size: str | None,
                 apply_chat_template: bool) -> dict[str, Any]:
    """The per-task settings the command line sets on every task (left out when not given)."""
    opts: dict[str, Any] = {}
    if (lim := parse_limit(limit)) is not None:
        opts["limit"] = lim
    if num_fewshot is not None:
        opts["num_fewshot"] = num_fewshot
    if (bs := parse_batch_size(batch_size)) is not None:
        opts["batch_size"] = bs
    if apply_chat_template:
        opts["chat_template"] = True
    return opts


def list_tasks(pattern: str | None, config: str | None, include_path: str | None,
               registry: bool = True) -> list[tuple[str, str]]:
    """(name, where it comes from) of every runnable task matching the glob `pattern`: the config's tasks,
    the built-in data sets, and lm-eval's registry (tasks, groups, tags; plus include_path's YAMLs)."""
    out: list[tuple[str, str]] = []
    if config:
        from pathlib import Path

        data = yaml.safe_load(Path(config).read_text()) or {}
        for t in data.get("tasks") or []:
            if isinstance(t, dict) and t.get("name"):
                out.append((str(t["name"]), f"{config} ({t.get('type', '?')})"))
    out += [(t, "built-in task type (a tasks: entry in a config)") for t in BUILTIN_TYPES]
    from accbench.builtin_tasks import BUILTIN_TASK_DATA

    out += [(f"builtin:{n}", f"built-in data for a {d['type']} task (path: builtin:{n}): {d['doc']}")
            for n, d in BUILTIN_TASK_DATA.items()]
    if registry:
        from accbench.evaluate.tasks.lmeval import task_manager

        tm = task_manager(include_path)
        kinds = {n: "lm-eval group" for n in getattr(tm, "all_groups", [])}
        kinds.update({n: "lm-eval tag" for n in getattr(tm, "all_tags", [])})
        out += [(n, kinds.get(n, "lm-eval task")) for n in tm.all_tasks]
    pat = pattern or "*"
    if not any(c in pat for c in "*?["):
        pat = f"*{pat}*"
    return [(n, w) for n, w in out if fnmatch.fnmatch(n, pat)]
