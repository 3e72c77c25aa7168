"""Synthetic finished runs (results.json only, no model) for the compare/report tests.

Every number is built by hand from small patterns so tests can pin what the statistics must give.
"""

from __future__ import annotations

import math
from pathlib import Path

from accbench.results import FidelityEntry, PplEntry, Results, TaskEntry, TrainEntry

N_MC = 200


def mc_pattern(n: int = N_MC) -> list[float]:
    """Baseline correctness: 3 of every 4 samples correct."""
    return [0.0 if i % 4 == 3 else 1.0 for i in range(n)]


def flipped(base: list[float], correct_to_wrong: int, wrong_to_correct: int) -> list[float]:
    out = list(base)
    c2w = [i for i, v in enumerate(base) if v == 1.0][:correct_to_wrong]
    w2c = [i for i, v in enumerate(base) if v == 0.0][:wrong_to_correct]
    for i in c2w:
        out[i] = 0.0
    for i in w2c:
        out[i] = 1.0
    return out


def task_entry(model: str, task: str, metric: str, values: list[float], type_: str = "multiple_choice",
               **extra) -> TaskEntry:
    per = {f"{task}-{i}": v for i, v in enumerate(values)}
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return TaskEntry(model=model, task=task, type=type_, metrics={metric: mean}, n=len(values),
                     stderr={metric: math.sqrt(var / len(values))}, per_sample={metric: per}, **extra)


def window_losses(shift: float, n: int = 24) -> list[float]:
    return [3.0 + 0.1 * math.sin(i) + shift + 0.004 * math.cos(3 * i) * (shift != 0) for i in range(n)]


def ppl_entry(position: str, losses: list[float]) -> PplEntry:
    return PplEntry(position=position, dataset="wikitext2", ppl=math.exp(sum(losses) / len(losses)), seq_len=128,
                    windows=len(losses), tokens=128 * len(losses), recipe="test", window_losses=losses)


def gen_samples(model: str, values: list[float]) -> dict[str, dict[str, str]]:
    return {f"gen-{i}": {"prompt": f"Q{i}: what is {i} + {i}?", "reference": str(2 * i),
                         "response": str(2 * i) if v == 1.0 else f"{2 * i + 1} <wrong> & more"}
            for i, v in enumerate(values)}


def mtbench_scores(shift: int) -> list[float]:
    return [float(min(10, max(1, (i * 7) % 10 + 1 - (shift if i % 3 == 0 else 0)))) for i in range(40)]


def compression_results(run_dir: Path, c2w: int = 12, w2c: int = 2, ppl_shift: float = 0.03,
                        n_mc: int = N_MC) -> Results:
    """pretrain vs fake_quant: ppl, fidelity, a multiple-choice task, a generation task, MT-bench scores."""
    r = Results(run_dir=str(run_dir), status="complete")
    r.ppl = [ppl_entry("pretrain", window_losses(0.0)), ppl_entry("fake_quant", window_losses(ppl_shift))]
    r.fidelity = [FidelityEntry(position="fake_quant", dataset="wikitext2", kld_mean=0.05, kld_stderr=0.002,
                                kld_median=0.03, kld_p99=0.4, top1_agreement=0.93, delta_p_mean=0.01,
                                delta_p_rms=0.02, ppl_ratio=1.03, tokens=3072,
                                kld_hist={"edges": [0.0, 0.05, 0.1, 0.2, 0.4, 0.8],
                                          "counts": [2000, 600, 300, 150, 22]})]
    base_mc = mc_pattern(n_mc)
    base_gen = [1.0 if i % 2 else 0.0 for i in range(20)]
    cand_gen = flipped(base_gen, 3, 1)
    for model, mc, gen, shift in (("pretrain", base_mc, base_gen, 0), ("fake_quant", flipped(base_mc, c2w, w2c),
                                                                        cand_gen, 1)):
        r.tasks.append(task_entry(model, "mc", "acc", mc))
        r.tasks.append(task_entry(model, "gen", "exact_match", gen, "generate", samples=gen_samples(model, gen)))
        scores = mtbench_scores(shift)
        e = task_entry(model, "mtbench", "score", scores, "mtbench",
                       samples={f"mtbench-{i}": {"prompt": f"Write about topic {i}", "response": f"{model} answer {i}"}
                                for i in range(len(scores))})
        for cat, idx in (("writing", range(0, 20)), ("coding", range(20, 40))):
            e.metrics[f"category/{cat}"] = sum(scores[i] for i in idx) / len(idx)
        r.tasks.append(e)
    return r


def training_results(run_dir: Path, loss_gap: float = 0.0001) -> Results:
    r = Results(run_dir=str(run_dir), status="complete")
    for v, loss, sps in (("native", 2.0916, 5.785), ("compiled", 2.0916 + loss_gap, 6.5)):
        curve = [{"step": s, "loss": 4.0 * math.exp(-s / 30) + loss} for s in range(0, 101, 10)]
        r.train.append(TrainEntry(variant=v, train_loss=loss, train_runtime=round(600 / sps, 1),
                                  train_steps_per_second=sps, loss_curve=curve, baseline=v == "native",
                                  speedup=sps / 5.785))  # as the training stage writes them
    base = mc_pattern(80)
    for model, vals in (("pretrain", flipped(base, 10, 0)), ("native", base), ("compiled", flipped(base, 1, 1))):
        r.tasks.append(task_entry(model, "mc", "acc", vals))
    return r


def write_run(results: Results, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    results.run_dir = str(run_dir)
    results.save(run_dir)
    return run_dir
