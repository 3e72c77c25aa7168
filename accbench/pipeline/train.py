"""Stage: train the baseline and every variant the same way; evaluate the original and each checkpoint.

The original model is the position `pretrain`; each variant's checkpoint is the position named after the
variant. Every eval block and task applies to all of them (eval_pos is ignored in training runs). Each
variant trains in its own process (log: logs/train_<variant>.log); the baseline trains first.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.config import ModelCfg, TrainCfg
from accbench.errors import AccbenchError
from accbench.fingerprints import ResumeLog, check_entry, fingerprint
from accbench.pipeline.records import Evaluate, ModelPath, Record, Timing, timed
from accbench.results import TrainEntry

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel

log = logging.getLogger("accbench")


def training_baseline(variants: list[str], compare_baseline: str | None) -> str:
    """compare.baseline when it names a variant, else the first variant."""
    if compare_baseline is None or compare_baseline == "pretrain":
        return variants[0]
    if compare_baseline not in variants:
        raise AccbenchError(f"compare.baseline '{compare_baseline}' is not a training variant (variants: "
                            f"{', '.join(variants)})",
                            "set compare.baseline to one of train.variants, usually the plain PyTorch one")
    return compare_baseline


def variant_args(t: TrainCfg) -> dict[str, dict[str, Any]]:
    """Each variant's full Trainer arguments (the shared ones with the variant's switches applied), checked
    against transformers.TrainingArguments (an unknown key or optimizer is an error naming it)."""
    from accbench.train.variants import baseline_trainer_args, check_trainer_args, variant_trainer_args

    base_args = baseline_trainer_args(t.seed, t.per_device_train_batch_size, t.gradient_accumulation_steps,
                                      t.num_train_epochs, t.max_steps, t.learning_rate, t.trainer_args)
    check_trainer_args(t.trainer_args, "train.trainer_args")
    out = {}
    for name, v in t.variants.items():
        out[name] = variant_trainer_args(base_args, v.torch_compile, v.bf16, v.fp16, v.optim,
                                         v.gradient_checkpointing, v.trainer_args)
        check_trainer_args(v.trainer_args, f"train.variants.{name}.trainer_args")
        check_trainer_args(out[name], f"train.variants.{name}")
    return out


def run_training(t: TrainCfg, m: ModelCfg, num_gpus: int, baseline: str, loaded: "LoadedModel", run_dir: Path,
                 resume: bool, earlier: list[TrainEntry], record: Record, evaluate: Evaluate, console: "Console",
                 fps: dict[str, str], resumed: ResumeLog) -> None:
    """Prepare the training data, evaluate `pretrain`, then train, evaluate (and unless kept, delete) each
    variant in turn. `earlier`: the TrainEntries of the run being resumed (reused where their fingerprint
    matches); `fps`: the fingerprint of the model at each position, to which each variant's is added."""
    from accbench.data.text import load_texts
    from accbench.models import model_fingerprint
    from accbench.train.clm import build_train_blocks

    order = [baseline] + [n for n in t.variants if n != baseline]
    args = variant_args(t)
    with timed(record, "train_data"):  # before any evaluation: data problems surface first
        d = t.dataset
        texts = load_texts(d.name, d.path, d.download, d.text_column, d.split, builtin_split="train")
        data_dir = run_dir / "train_data"
        data_dir.mkdir(exist_ok=True)
        _save_train_data(build_train_blocks(texts, loaded.tokenizer, t.block_size), texts, data_dir)

    evaluate("pretrain", loaded)
    _release_device_memory(loaded)  # the variants' processes need the accelerator, not our copy of the model
    entries = {e.variant: e for e in earlier}
    for name in order:
        entry = entries.get(name)
        out = run_dir / "models" / name
        fp = fingerprint(fps.get("pretrain"), t.model_dump(mode="json", exclude={"variants", "save_checkpoints"}),
                         t.variants[name].model_dump(mode="json"), name == baseline)
        if not (entry is not None and resume and (out / "config.json").is_file()
                and check_entry(entry.fingerprint, fp, f"training of variant {name}", resumed)):
            entry = _train_variant(t, m, loaded.path, name, args[name], data_dir, out, run_dir,
                                   entries.get(baseline), baseline == name, record, console)
            entry.fingerprint = fp
            entries[name] = entry
        record(entry)
        record(ModelPath(name, entry.checkpoint))
        fps[name] = fingerprint(entry.fingerprint, model_fingerprint(entry.checkpoint or str(out), m.torch_dtype))
        model_v = load_checkpoint(m, num_gpus, entry.checkpoint or str(out), loaded.path, name)
        evaluate(name, model_v)
        del model_v
        if not t.save_checkpoints:
            shutil.rmtree(out, ignore_errors=True)
            entry.checkpoint = None
            record(ModelPath(name, None))
            record(entry)


def _release_device_memory(loaded: "LoadedModel") -> None:
    import torch

    if str(loaded.device).startswith("cuda") and loaded.placement == "single":
        loaded.model.to("cpu")
        torch.cuda.empty_cache()


def _save_train_data(blocks: Any, texts: list[str], data_dir: Path) -> None:
    """blocks.pt for built-in variants; train.json (JSON lines {"text"}) for a command's {train_file}."""
    import json

    import torch

    torch.save(blocks, data_dir / "blocks.pt")
    with open(data_dir / "train.json", "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")


def _train_variant(t: TrainCfg, m: ModelCfg, model_path: str, name: str, trainer_args: dict[str, Any],
                   data_dir: Path, out: Path, run_dir: Path, base: TrainEntry | None, is_baseline: bool,
                   record: Record, console: "Console") -> TrainEntry:
    """Train one variant in its own process and return its TrainEntry (speedup against `base`)."""
    from accbench.train.clm import TrainSpec
    from accbench.train.data_check import data_counts
    from accbench.train.launch import child_env, run_logged, worker_command
    from accbench.train.variants import fill_placeholders, read_trainer_results

    v = t.variants[name]
    log_path = run_dir / "logs" / f"train_{name}.log"
    if out.exists():  # a partial run of this variant: start it clean
        shutil.rmtree(out)
    out.mkdir(parents=True)
    console.print(f"training [bold]{name}[/] → {log_path}")
    t0 = time.perf_counter()
    if v.command is not None:
        cmd = fill_placeholders(v.command, {"model": model_path, "output_dir": str(out), "seed": str(t.seed),
                                            "train_file": str(data_dir / "train.json")})
        run_logged(name, cmd, log_path, child_env(v.env))
    else:
        spec = TrainSpec(model_path, str(data_dir / "blocks.pt"), str(out), trainer_args, m.torch_dtype,
                         m.trust_remote_code, v.attn_implementation or m.attn_implementation, m.tokenizer_path)
        spec_path = spec.save(run_dir / "train_data" / f"spec_{name}.json")
        argv = worker_command(spec_path, t.launcher.type, t.launcher.nproc_per_node, t.launcher.extra_args)
        run_logged(name, argv, log_path, child_env(v.env))
    wall = time.perf_counter() - t0
    record(Timing(f"train_{name}", wall))
    res = read_trainer_results(out, name)
    sps = res.train_steps_per_second
    speedup = 1.0 if is_baseline else (
        sps / base.train_steps_per_second if base and sps and base.train_steps_per_second else None)
    samples, tokens = data_counts(res.metrics, None if v.command is not None else t.block_size)
    log.info("trained %s: loss %.6f, %s steps/s, %.1f s", name, res.train_loss, sps, wall)
    console.print(f"[bold]{name}[/]: train loss = {res.train_loss:.6f}, steps/s = {sps}, "
                  f"runtime = {res.train_runtime} s")
    return TrainEntry(variant=name, train_loss=res.train_loss, train_runtime=res.train_runtime,
                      train_steps_per_second=sps, checkpoint=str(out), baseline=is_baseline, speedup=speedup,
                      global_step=res.global_step, wall_time=round(wall, 3), log=str(log_path),
                      kind="command" if v.command is not None else "builtin", loss_curve=res.loss_curve,
                      train_samples=samples, train_tokens=tokens)


def load_checkpoint(m: ModelCfg, num_gpus: int, ckpt: str, original: str, variant: str) -> "LoadedModel":
    """Load a variant's checkpoint for evaluation; its own tokenizer if it saved one, else the original's."""
    from accbench.models import load_model

    p = Path(ckpt)
    if not (p / "config.json").is_file():
        raise AccbenchError(f"training variant '{variant}' left no model in {p} (no config.json)",
                            "the training must save the final model to its output_dir (trainer.save_model())")
    has_tok = (p / "tokenizer_config.json").is_file() or (p / "tokenizer.json").is_file()
    tok = m.tokenizer_path or (None if has_tok else original)
    return load_model(ckpt, m.torch_dtype, m.trust_remote_code, tok, m.device, m.placement, num_gpus,
                      m.attn_implementation, m.tokenizer_mode == "fast")
