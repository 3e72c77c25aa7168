"""The `accbench` command: parses arguments, forwards to the pipeline or a tool, sets the exit code.

Exit codes: 0 all good; 1 crash (a bug: traceback in the run's log); 2 bad input (config, paths, data);
3 a comparison gate failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from accbench.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_OK, AccbenchError

log = logging.getLogger("accbench")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def cmd_validate(args: argparse.Namespace) -> int:
    from accbench.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(f"{args.config}: valid ({', '.join(k for k, v in cfg if v not in (None, [], {}))})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from accbench.config import load_config
    from accbench.pipeline import prepare_run_dir, resolve_run_dir, run_pipeline, setup_logging
    from accbench.report.console import print_summary
    from accbench.results import Results

    cfg = load_config(args.config, args.overrides)  # all config errors surface here, before any model loads
    run_dir = resolve_run_dir(cfg, args.output)
    prepare_run_dir(run_dir, args.resume, args.overwrite)
    setup_logging(run_dir)
    console = _console()
    console.print(f"accbench run → {run_dir}")
    try:
        results = run_pipeline(cfg, run_dir, console, resume=args.resume)
    except BaseException as exc:
        _mark_failed(run_dir, exc)
        raise
    print_summary(results, console)
    return int(results.compare.get("exit_code", EXIT_OK)) if results.compare else EXIT_OK


def cmd_setup_opencompass(args: argparse.Namespace) -> int:
    from accbench.backends.opencompass import setup_env

    setup_env(Path(args.dir), args.python)
    return EXIT_OK


def _mark_failed(run_dir: Path, exc: BaseException) -> None:
    from accbench.results import Results

    path = run_dir / "results.json"
    if not path.is_file():
        return
    try:
        res = Results.load(run_dir)
    except Exception:  # a results file we cannot read must not hide the original error
        return
    res.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    res.error = str(exc) or type(exc).__name__
    res.save(run_dir)
    log.error("run %s: %s", res.status, "".join(traceback.format_exception(exc)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accbench", description="Is the changed model still as accurate as before?")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a config: load, transform, evaluate, compare, report")
    r.add_argument("config", help="YAML config (llmc-compatible)")
    r.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. eval.seq_len=512")
    r.add_argument("-o", "--output", help="run directory (default: <base.output_dir>/<run_name or timestamp>)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in the same directory")
    g.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config without loading anything")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    v.set_defaults(func=cmd_validate)

    o = sub.add_parser("setup-opencompass", help="create a virtual environment with OpenCompass and its working pins")
    o.add_argument("dir", help="directory of the new environment; then set opencompass.python: DIR/bin/python")
    o.add_argument("--python", help="interpreter to base the environment on (default: the one running accbench)")
    o.set_defaults(func=cmd_setup_opencompass)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`run cfg.yaml -o dir eval.bs=4`)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except AccbenchError as exc:
        print(f"accbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("accbench: interrupted; everything computed so far is in the run directory (--resume continues it)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep the traceback in the log, show a short message
        log.error("crash: %s", traceback.format_exc())
        print(f"accbench: internal error: {type(exc).__name__}: {exc}\n"
              "  the traceback is in the run's logs/run.log; please report it", file=sys.stderr)
        if "--debug" in sys.argv or __import__("os").environ.get("ACCBENCH_DEBUG"):
            traceback.print_exc()
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
