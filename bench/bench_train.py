"""How much of the training stage is ours: time outside `Trainer.train()` as a share of the stage's total.

Runs accbench's real training stage (pipeline.run_training_stage, no eval blocks, one or more built-in
variants) and splits each variant's wall time with the marks its worker writes:

  data prep      load the texts, tokenize, group into blocks, save (once per run, parent)
  process+import spawn the worker, import torch/transformers (any training script pays most of this)
  model load     from_pretrained + tokenizer + Trainer construction
  train          inside trainer.train()  (== train_runtime, the Trainer's own number)
  save           save_model + metrics + state
  after          parent: read the result files, reload the checkpoint for evaluation

Goal: everything but `train` under 5% of the total. The fixed part does not grow with the number of
steps, so the script also prints the training length at which it falls under 5%.

    PYTHONPATH=. python bench/bench_train.py --steps 100 --block-size 128 --batch 4
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path


def bench(model: str, steps: int, block_size: int, batch: int, variants: list[str]) -> dict:
    from rich.console import Console

    from accbench.config import validate_config
    from accbench.pipeline import RunContext, baseline_position, evaluate_position, train
    from accbench.pipeline.spine import _load
    from accbench.results import Results
    from accbench.train.clm import TIMING_FILE

    opts = {"native": {}, "foreach": {"optim": "adamw_torch"}, "bf16": {"bf16": True},
            "compiled": {"torch_compile": True}}
    cfg = validate_config({
        "model": {"path": model, "torch_dtype": "float32"},
        "train": {"dataset": {"name": "builtin:pydoc"}, "block_size": block_size, "per_device_train_batch_size": batch,
                  "max_steps": steps, "learning_rate": 5e-4, "variants": {v: opts[v] for v in variants}},
    })
    run_dir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    (run_dir / "logs").mkdir()
    ctx = RunContext(cfg, run_dir, Results(run_dir=str(run_dir)), Console(file=io.StringIO()),
                     baseline=baseline_position(cfg))
    loaded = _load(cfg)
    t0 = time.perf_counter()
    train.run_training(cfg.train, cfg.model, cfg.runner.num_gpus, ctx.baseline, loaded, run_dir, False, [], ctx.record,
                       lambda position, model: evaluate_position(ctx, position, model), ctx.console, ctx.fps,
                       ctx.resumed)
    stage = time.perf_counter() - t0

    rows = []
    for e in ctx.results.train:
        m = json.loads((Path(e.checkpoint) / TIMING_FILE).read_text())
        rows.append({
            "variant": e.variant, "wall": e.wall_time, "train_runtime": e.train_runtime,
            "process+import": m["imported"] - m["process_start"],
            "model load": m["train_start"] - m["imported"],
            "train": m["train_end"] - m["train_start"],
            "save": m["saved"] - m["train_end"],
        })
    train_total = sum(r["train_runtime"] for r in rows)
    out = {"stage_seconds": stage, "train_seconds": train_total, "overhead_seconds": stage - train_total,
           "overhead_share": (stage - train_total) / stage, "data_prep": ctx.results.timings.get("train_data"),
           "variants": rows, "steps": steps, "run_dir": str(run_dir)}
    per_step = train_total / (steps * len(rows))
    # steps per variant at which the fixed overhead is 5% of the total
    out["steps_for_5pct"] = int((stage - train_total) / 0.05 * 0.95 / (per_step * len(rows))) + 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny-llama")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--variants", default="native", help="comma list of native,foreach,bf16,compiled")
    a = p.parse_args()
    r = bench(a.model, a.steps, a.block_size, a.batch, a.variants.split(","))
    shutil.rmtree(r["run_dir"], ignore_errors=True)
    print(f"training stage {r['stage_seconds']:.1f} s, inside Trainer.train() {r['train_seconds']:.1f} s, "
          f"ours/outside {r['overhead_seconds']:.1f} s = {100 * r['overhead_share']:.1f}% (goal < 5%)")
    print(f"  data prep (once) {r['data_prep']:.2f} s")
    for v in r["variants"]:
        parts = ", ".join(f"{k} {v[k]:.2f} s" for k in ("process+import", "model load", "train", "save"))
        after = v["wall"] - (v["process+import"] + v["model load"] + v["train"] + v["save"])
        print(f"  {v['variant']}: wall {v['wall']:.2f} s = {parts}, spawn/exit+read {after:.2f} s")
    print(f"  at {r['steps']} steps/variant; the fixed part falls under 5% from ~{r['steps_for_5pct']} steps/variant")


if __name__ == "__main__":
    main()
