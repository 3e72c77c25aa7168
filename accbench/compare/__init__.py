"""Did the change hurt accuracy, and can we trust the answer? Direction-aware paired comparisons and gates.

Every candidate model (a quantization position or a training variant) is compared with a baseline model on
the same data (metrics.py), the models of a run are paired (pairs.py), gates from the `compare` section are
checked (gates.py), and finished runs can be compared with each other (runs.py). The result is the typed
`compare` block of results.json (results.CompareBlock). docs/report.md explains the statistics and the gates.
"""

from accbench.compare.gates import describe_gate, evaluate_gates, gates_from_config, summarize
from accbench.compare.metrics import (compare_fidelity, compare_fidelity_across_runs, compare_ppl,
                                      compare_task_metric, compare_train, metric_direction)
from accbench.compare.pairs import (candidates_for, compare_pair, compare_results, default_baseline,
                                    is_training_run, model_names, run_comparison)
from accbench.compare.runs import compare_runs
from accbench.results import CompareBlock, Comparison, GateCheck

__all__ = ["CompareBlock", "Comparison", "GateCheck", "candidates_for", "compare_fidelity",
           "compare_fidelity_across_runs", "compare_pair", "compare_ppl", "compare_results", "compare_runs",
           "compare_task_metric", "compare_train", "default_baseline", "describe_gate", "evaluate_gates",
           "gates_from_config", "is_training_run", "metric_direction", "model_names", "run_comparison", "summarize"]
