"""The run: spine.py reads top to bottom and calls one module per stage.

preflight.py (checks that need no weights, shared with `validate`), quantize.py, train.py, positions.py
(perplexity and fidelity at a position), tasks.py (downstream tasks), opencompass.py, compare.py; records.py
holds what stages hand back; rundir.py the run directory; rescore.py the `rescore` command.
"""

from accbench.pipeline.positions import EvalData, prepare_eval_data
from accbench.pipeline.rescore import rescore_run
from accbench.pipeline.rundir import prepare_run_dir, resolve_run_dir, setup_logging
from accbench.pipeline.spine import RunContext, baseline_position, evaluate_position, run_pipeline

__all__ = ["EvalData", "RunContext", "baseline_position", "evaluate_position", "prepare_eval_data",
           "prepare_run_dir", "rescore_run", "resolve_run_dir", "run_pipeline", "setup_logging"]
