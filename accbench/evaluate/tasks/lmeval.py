"""Any lm-eval task (by name, or a local task YAML via include_path), run in-process on our engine.

lm-eval builds the prompts and computes the metrics and their aggregation; accbench only answers the
requests. Metrics are reported under lm-eval's names (filter "none" dropped, others kept as
"metric,filter"); per_sample comes from lm-eval's logged samples, keyed by doc_id.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.errors import AccbenchError
from accbench.evaluate.requests import Answerer, TaskResult

if TYPE_CHECKING:
    from accbench.config import LmEvalTask

BOOTSTRAP_ITERS = 1000  # only for metrics without a closed-form standard error


@functools.lru_cache(maxsize=8)  # built once per run: the check before loading and the run reuse it
def task_manager(include_path: str | None, name: str | None = None) -> Any:
    """lm-eval's task index; with include_path, only the local YAMLs when they define `name` (indexing
    lm-eval's thousands of built-in tasks takes tens of seconds)."""
    from accbench.integrations.lm_eval import import_lm_eval

    import_lm_eval()
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if include_path:
        if not Path(include_path).expanduser().exists():
            raise AccbenchError(f"lm-eval include_path not found: {include_path}",
                                "point include_path at a folder of lm-eval task YAML files")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if name is None or name in local.all_tasks:
            return local
    return TaskManager(include_path=include_path)


def check_task_name(name: str, tm: Any) -> None:
    known = tm.all_tasks
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}?" if near else "list them with: lm_eval ls tasks"
        raise AccbenchError(f"unknown lm-eval task '{name}'", hint + " (local task YAMLs: set include_path)")


def _metric_name(key: str) -> str:
    metric, _, flt = key.partition(",")
    return metric if flt in ("", "none") else key


def _checked(cfg: "LmEvalTask") -> Any:
    name = cfg.task or cfg.name
    tm = task_manager(cfg.include_path, name)
    check_task_name(name, tm)
    return tm


def check(cfg: "LmEvalTask") -> Any:
    """lm-eval installed, include_path present, the task known and its dataset loadable (downloaded now, before
    any model loads, into the datasets cache the run then reads); returns the task index."""
    tm = _checked(cfg)
    name = cfg.task or cfg.name
    with dataset_errors(cfg.name, tm, name), quiet_lm_eval():
        tm.load([name])  # builds the task: its dataset is fetched (or found in the cache) here
    return tm


def _dataset_of(tm: Any, name: str) -> str:
    entry = getattr(tm, "task_index", {}).get(name)
    cfg = getattr(entry, "cfg", None) or {}
    if cfg.get("dataset_path"):
        return str(cfg["dataset_path"]) + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")
    return f"the datasets of '{name}'"


class dataset_errors:
    """An lm-eval dataset that cannot be fetched is bad input (exit 2), not a crash: say which dataset, that the
    machine is offline or the hub unreachable, and how to use a local copy."""

    def __init__(self, task: str, tm: Any, name: str) -> None:
        self.task, self.tm, self.name = task, tm, name

    def __enter__(self) -> "dataset_errors":
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not _is_unreachable(exc):
            return False
        import os

        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "") not in ("", "0")]
        why = (f"this machine is set offline ({', '.join(offline)}=1) and the dataset is not in the local cache"
               if offline else "the Hugging Face hub is unreachable from this machine and the dataset is not cached")
        raise AccbenchError(
            f"task '{self.task}': cannot load dataset {_dataset_of(self.tm, self.name)}: {why} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "run once where the hub is reachable to fill the cache (HF_HOME / HF_DATASETS_CACHE), or point the task "
            "at a local copy: copy its lm-eval YAML into a folder, set `dataset_path: json` (or parquet) with "
            "`dataset_kwargs: {data_files: {test: /path/to/test.jsonl}}`, and pass that folder as --include_path "
            "(include_path: in a config)") from None


def _is_unreachable(exc: BaseException) -> bool:
    """A network/offline failure to fetch a dataset (datasets and huggingface_hub raise several kinds)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, ConnectionError) or name in ("OfflineModeIsEnabled", "DatasetNotFoundError",
                                                       "LocalEntryNotFoundError", "ConnectTimeout", "ConnectError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def run(cfg: "LmEvalTask", answerer: Answerer, tokenizer: Any = None) -> TaskResult:
    """Run the lm-eval task on `answerer`; with `chat_template: true`, prompts go through `tokenizer`'s chat
    template, as lm-eval's --apply_chat_template does."""
    tm = _checked(cfg)
    from lm_eval.evaluator import simple_evaluate

    from accbench.integrations.lm_eval import make_lm

    if cfg.chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise AccbenchError(f"task '{cfg.name}': chat_template is set but the model's tokenizer has no chat template",
                            "use a chat model's tokenizer (model.tokenizer_path) or set chat_template: false")
    name = cfg.task or cfg.name
    # num_fewshot left out of the config: the task's own default, as on lm-eval's command line
    shots = cfg.num_fewshot if "num_fewshot" in cfg.model_fields_set else None
    with dataset_errors(cfg.name, tm, name), quiet_lm_eval():
        out = simple_evaluate(model=make_lm(answerer, tokenizer if cfg.chat_template else None), tasks=[name],
                              num_fewshot=shots, limit=cfg.limit, task_manager=tm, log_samples=True,
                              bootstrap_iters=BOOTSTRAP_ITERS, apply_chat_template=bool(cfg.chat_template),
                              random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                              fewshot_random_seed=cfg.seed)
    metrics, stderr = aggregate_metrics(out["results"][name])
    subtasks = list(out["samples"])
    per: dict[str, dict[str, float]] = {}
    texts: dict[str, dict[str, Any]] = {}
    for sub in subtasks:
        for s in out["samples"][sub]:
            sid = str(s["doc_id"]) if len(subtasks) == 1 else f"{sub}/{s['doc_id']}"
            for key, value in sample_values(s).items():
                if key in metrics:
                    per.setdefault(key, {})[sid] = value
            add_sample_text(texts, sid, s, out["configs"].get(sub, {}).get("output_type", ""))
    n = sum(int(out["n-samples"][sub]["effective"]) for sub in subtasks if sub in out.get("n-samples", {}))
    exported = {k: v for k, v in out.items() if k != "samples"}
    return TaskResult(task=cfg.name, type="lm_eval", metrics=metrics, stderr=stderr, n=n, per_sample=per,
                      samples=texts,
                      extra={"lm_eval_task": name, "lm_eval_versions": out.get("versions", {}),
                             "n_shot": out.get("n-shot", {})},
                      exports={"lm_eval": {"results": exported, "samples": out["samples"]}})


def aggregate_metrics(res: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """lm-eval's `metric,filter` aggregates (and their `_stderr`) under our names: `metric` for filter "none"."""
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key, val in res.items():
        if "," not in key or not isinstance(val, (int, float)):
            continue
        metric, _, flt = key.partition(",")
        if metric.endswith("_stderr"):
            stderr[_metric_name(metric.removesuffix("_stderr") + "," + flt)] = float(val)
        else:
            metrics[_metric_name(key)] = float(val)
    for m in metrics:
        stderr.setdefault(m, None)
    return metrics, stderr


def sample_values(sample: dict[str, Any]) -> dict[str, float]:
    """One logged lm-eval sample's numeric metric values under our metric names. lm-eval logs one sample per
    (document, filter), so gsm8k's strict-match and flexible-extract each give their own per-sample value;
    non-numeric values (perplexity's (loglikelihood, words) pairs, bleu's references) are aggregated corpus-wide
    by lm-eval and have no per-sample score."""
    flt = sample.get("filter", "none")
    out = {}
    for m in sample.get("metrics", []):
        v = sample.get(m)
        if isinstance(v, (int, float)):
            out[_metric_name(f"{m},{flt}")] = float(v)
    return out


_PROMPT_CHARS = 2000  # the question's end is what a reader needs; few-shot examples come first


def _text(x: Any) -> str:
    return x if isinstance(x, str) else str(x)


def add_sample_text(texts: dict[str, dict[str, Any]], sid: str, s: dict[str, Any], output_type: str) -> None:
    """The prompt, gold answer and model answer of a logged sample (per filter when a filter changes it)."""
    args = [a for a in s.get("arguments", [])]
    flt = s.get("filter", "none")
    prompt = _text(args[0][0]) if args and args[0] else ""
    prompt = prompt if len(prompt) <= _PROMPT_CHARS else "…" + prompt[-_PROMPT_CHARS:]
    target, filtered = s.get("target"), s.get("filtered_resps", [])
    if output_type == "multiple_choice" and args and all(len(a) > 1 for a in args):
        lls = [r[0] if isinstance(r, (list, tuple)) else r for r in filtered]
        pick = max(range(len(lls)), key=lambda i: (float(lls[i]), -i)) if lls else None
        choice = [_text(a[1]).strip() for a in args]
        answer = choice[pick] if pick is not None else ""
        ref = choice[target] if isinstance(target, int) and 0 <= target < len(choice) else _text(target)
    else:
        raw = s.get("resps", [[]])
        answer = _text(filtered[0]) if filtered else ""
        ref = _text(target)
        response = _text(raw[0][0]) if raw and raw[0] else answer
        rec = texts.setdefault(sid, {"prompt": prompt, "reference": ref, "response": response, "answers": {}})
        rec["answers"][flt] = answer
        return
    rec = texts.setdefault(sid, {"prompt": prompt, "reference": ref, "response": answer, "answers": {}})
    if flt != "none":
        rec["answers"][flt] = answer


class quiet_lm_eval:
    """lm-eval's own chatter that does not concern an accbench user: `git rev-parse` run in a directory that is
    not a repository ("fatal: not a git repository" on stderr) and its INFO logging; restored on exit."""

    def __enter__(self) -> "quiet_lm_eval":
        import logging

        import lm_eval.evaluator as ev
        import lm_eval.loggers.utils as lu

        self._saved = [(mod, name, getattr(mod, name)) for mod in (ev, lu) for name in ("get_git_commit_hash",)
                       if hasattr(mod, name)]
        for mod, name, _ in self._saved:
            setattr(mod, name, lambda: None)
        self._level = logging.getLogger("lm_eval").level
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        for mod, name, fn in self._saved:
            setattr(mod, name, fn)
        logging.getLogger("lm_eval").setLevel(self._level)
