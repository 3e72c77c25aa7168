"""Training benchmark: run_clm data semantics, variant options, HF result files, command variants, the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from accbench.errors import AccbenchError
from accbench.results import Results, TrainEntry, PplEntry, TaskEntry
from accbench.train.clm import TrainSpec, build_train_blocks, group_texts, train_clm
from accbench.train.launch import TrainingFailed, worker_command
from accbench.train.variants import (baseline_trainer_args, check_trainer_args, fill_placeholders,
                                     read_trainer_results, variant_trainer_args)

# ----------------------------------------------------------------------------- data (run_clm semantics)


def test_group_texts_concatenates_per_map_batch_and_drops_each_tail():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
    # one batch: 11 tokens -> 3 blocks of 3, tail [10, 11] dropped
    assert group_texts(docs, 3) == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # run_clm groups per datasets.map batch: batch 1 = docs 0-1 (5 tokens), batch 2 = docs 2-3 (6 tokens)
    assert group_texts(docs, 3, batch_docs=2) == [[1, 2, 3], [6, 7, 8], [9, 10, 11]]
    assert group_texts([[1, 2]], 3) == []


def test_build_train_blocks_matches_independent_tokenization(tiny_tokenizer):
    texts = ["def f(x): return x", "class A: pass", "import os\nprint(os.sep)"]
    flat = []
    for t in texts:  # independent: one call per document, special tokens as the tokenizer adds them
        flat += tiny_tokenizer(t)["input_ids"]
    blocks = build_train_blocks(texts, tiny_tokenizer, 4)
    n = len(flat) // 4
    assert blocks.shape == (n, 4)
    assert blocks.flatten().tolist() == flat[: n * 4]


def test_build_train_blocks_too_little_text_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(AccbenchError, match="fewer than one block of block_size=4096"):
        build_train_blocks(["tiny"], tiny_tokenizer, 4096)


# ----------------------------------------------------------------------------- variant options


def test_variant_options_switch_trainer_arguments():
    base = baseline_trainer_args(7, 2, 4, 1.5, -1, 1e-4, {"warmup_steps": 3})
    assert base["seed"] == 7 and base["gradient_accumulation_steps"] == 4 and base["warmup_steps"] == 3
    assert base["logging_steps"] == 1 and base["report_to"] == "none"
    v = variant_trainer_args(base, torch_compile=True, bf16=True, optim="adamw_torch", gradient_checkpointing=True,
                             user_args={"max_grad_norm": 0.5})
    assert v == {**base, "torch_compile": True, "bf16": True, "optim": "adamw_torch", "gradient_checkpointing": True,
                 "max_grad_norm": 0.5}
    assert variant_trainer_args(base) == base  # the baseline is the shared arguments, nothing switched
    # every key we produce is one the Trainer accepts
    check_trainer_args(v, "test")


def test_trainer_args_misspelled_or_reserved_keys_are_errors():
    with pytest.raises(AccbenchError, match="'warmup_step' is not a TrainingArguments option .did you mean 'warmup_steps'"):
        check_trainer_args({"warmup_step": 3}, "train.trainer_args")
    with pytest.raises(AccbenchError, match="'output_dir' is set by accbench"):
        check_trainer_args({"output_dir": "/x"}, "train.trainer_args")
    with pytest.raises(AccbenchError, match="optim 'adamw_torch_fuse' .*did you mean 'adamw_torch_fused'"):
        check_trainer_args({"optim": "adamw_torch_fuse"}, "train.variants.fast")


def test_placeholders_fill_known_names_and_leave_shell_braces():
    cmd = fill_placeholders("run {model} --out {output_dir} --seed {seed} --data {train_file} ${HOME} {other}",
                            {"model": "/m", "output_dir": "/o", "seed": "42", "train_file": "/d.json"})
    assert cmd == "run /m --out /o --seed 42 --data /d.json ${HOME} {other}"


def test_worker_command_plain_and_torchrun(tmp_path):
    spec = tmp_path / "s.json"
    assert worker_command(spec)[1:] == ["-m", "accbench.train.worker", "--spec", str(spec)]
    argv = worker_command(spec, "torchrun", 8, ["--master_port", "29511"])
    assert argv[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "--master_port", "29511",
                        "-m", "accbench.train.worker", "--spec", str(spec)]


def test_variant_config_rules():
    from accbench.config import validate_config

    base = {"model": {"path": "m"}, "train": {"dataset": {"name": "builtin:pydoc"}}}
    bad = [({"acc": {"command": "x", "bf16": True}}, "command variant runs the user's own script"),
           ({"pretrain": {}}, "variant name 'pretrain' is reserved"),
           ({"mixed": {"bf16": True, "fp16": True}}, "bf16 or fp16, not both"),
           ({}, "train.variants is empty")]
    for variants, msg in bad:
        with pytest.raises(AccbenchError, match=msg):
            validate_config({**base, "train": {**base["train"], "variants": variants}})


# ----------------------------------------------------------------------------- reading HF result files


def _write_trainer_files(out: Path, loss: float = 2.5, sps: float = 4.0, runtime: float = 10.0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "all_results.json").write_text(json.dumps(
        {"epoch": 1.0, "total_flos": 1.0, "train_loss": loss, "train_runtime": runtime, "train_samples": 40,
         "train_samples_per_second": 4 * sps, "train_steps_per_second": sps}))
    (out / "trainer_state.json").write_text(json.dumps(
        {"global_step": 3, "log_history": [
            {"epoch": 0.3, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": 3.0, "step": 1},
            {"epoch": 0.6, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": 2.5, "step": 2},
            {"epoch": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": 2.0, "step": 3},
            {"epoch": 1.0, "step": 3, "total_flos": 1.0, "train_loss": loss, "train_runtime": runtime}]}))


def test_read_trainer_results(tmp_path):
    _write_trainer_files(tmp_path, loss=2.5, sps=4.0, runtime=10.0)
    res = read_trainer_results(tmp_path, "acc")
    assert (res.train_loss, res.train_runtime, res.train_steps_per_second, res.global_step) == (2.5, 10.0, 4.0, 3)
    assert res.loss_curve == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 2.0}]


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "all_results.json").unlink(), r"'acc' left no all_results.json"),
    (lambda d: (d / "trainer_state.json").unlink(), r"'acc' left no trainer_state.json"),
    (lambda d: (d / "all_results.json").write_text("{not json"), r"all_results.json is not valid JSON"),
    (lambda d: (d / "all_results.json").write_text("[1, 2]"), r"all_results.json holds a list"),
    (lambda d: (d / "all_results.json").write_text('{"train_runtime": 1}'), r"all_results.json has no 'train_loss'"),
    (lambda d: (d / "all_results.json").write_text('{"train_loss": NaN}'), r"non-finite"),
    (lambda d: (d / "trainer_state.json").write_text('{"global_step": 1}'), r"trainer_state.json has no 'log_history'"),
])
def test_broken_result_files_are_errors_naming_the_file(tmp_path, breakage, message):
    _write_trainer_files(tmp_path)
    breakage(tmp_path)
    with pytest.raises(TrainingFailed, match=message) as exc:
        read_trainer_results(tmp_path, "acc")
    assert str(tmp_path) in str(exc.value)


# ----------------------------------------------------------------------------- the console block


def test_training_block_layout():
    from accbench.report.training import format_training_block

    r = Results(run_dir="/runs/x")
    r.train = [TrainEntry(variant="native", train_loss=2.091632914, train_runtime=2552.8252, train_steps_per_second=5.785,
                          baseline=True, speedup=1.0),
               TrainEntry(variant="compiled", train_loss=2.0917317, train_runtime=2272.1399, train_steps_per_second=6.5,
                          speedup=6.5 / 5.785)]
    r.ppl = [PplEntry(position=p, dataset="wikitext2", ppl=v, seq_len=2048, windows=1, tokens=1)
             for p, v in (("pretrain", 9.0), ("native", 8.5), ("compiled", 8.51))]
    r.tasks = [TaskEntry(model="compiled", task="mmlu", metrics={"acc": 0.25})]
    lines = format_training_block(r).splitlines()
    assert lines[1] == "=" * 20 + " Training Results " + "=" * 20
    assert lines[-1] == "=" * 58
    rows = dict(ln.split(" = ") for ln in lines if " = " in ln)
    rows = {" ".join(k.split()): v for k, v in rows.items()}
    assert rows["native train loss"] == "2.091633" and rows["compiled train runtime (s)"] == "2272.14"
    assert rows["compiled train steps per second"] == "6.500"
    assert rows["compiled speed-up vs native"] == "1.124x" and "native speed-up vs native" not in rows
    assert rows["Original Model ppl wikitext2 (seq_len 2048)"] == "9.0000"
    assert rows["compiled Model ppl wikitext2 (seq_len 2048)"] == "8.5100"
    assert rows["compiled Model mmlu acc"] == "0.2500"
    assert rows["More details can be found in"] == "/runs/x"
    assert lines.index("native   train loss".ljust(lines[2].index("=") - 1) + " = 2.091633") == 2  # variants aligned
    assert len({ln.index("=") for ln in lines if " = " in ln}) == 1  # one column of '='


# ----------------------------------------------------------------------------- real training (in-process)


def _train(tmp_path: Path, model_dir: Path, tokenizer, name: str, steps: int = 12, **options) -> dict:
    import torch

    from accbench.data.text import load_texts

    data = tmp_path / "blocks.pt"
    if not data.exists():
        texts = load_texts("builtin:pydoc", split="train")[:40]
        torch.save(build_train_blocks(texts, tokenizer, 32), data)
    args = variant_trainer_args(baseline_trainer_args(42, 4, 1, 1.0, steps, 2e-3), **options)
    out = tmp_path / name
    train_clm(TrainSpec(str(model_dir), str(data), str(out), args))
    return json.loads((out / "all_results.json").read_text()) | {"out": out}


def test_native_and_optimizer_variant_train_the_same_way(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Same seed, data and order: the fused and the for-each AdamW give the same losses to float noise."""
    native = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "native", steps=8)
    other = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "foreach", steps=8, optim="adamw_torch")
    curve_n = read_trainer_results(native["out"], "native").loss_curve
    curve_o = read_trainer_results(other["out"], "foreach").loss_curve
    assert [p["step"] for p in curve_n] == list(range(1, 9))
    assert curve_n[-1]["loss"] < curve_n[0]["loss"] - 0.2  # it learned something
    assert native["train_loss"] == pytest.approx(other["train_loss"], abs=1e-4)
    for a, b in zip(curve_n, curve_o):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)
    assert (native["out"] / "model.safetensors").is_file() and (native["out"] / "tokenizer.json").is_file()
    # control: another seed is another data order, and the tolerance above does tell them apart
    reshuffled = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "seed7", steps=8, user_args={"seed": 7})
    assert abs(reshuffled["train_loss"] - native["train_loss"]) > 1e-3


def test_bf16_variant_close_to_native(tmp_path, tiny_model_dir, tiny_tokenizer):
    native = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "native", steps=4)
    bf16 = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "bf16", steps=4, bf16=True)
    assert bf16["train_loss"] != native["train_loss"]  # bf16 autocast really ran
    assert bf16["train_loss"] == pytest.approx(native["train_loss"], abs=0.05)


@pytest.mark.slow  # torch.compile (inductor C++ codegen) on CPU: ~9 min measured on the shared 2-core box
def test_compiled_variant_close_to_native(tmp_path, tiny_model_dir, tiny_tokenizer):
    native = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "native")
    compiled = _train(tmp_path, tiny_model_dir, tiny_tokenizer, "compiled", torch_compile=True)
    assert compiled["train_loss"] == pytest.approx(native["train_loss"], abs=2e-3)


# ----------------------------------------------------------------------------- the CLI with command variants

FAKE_TRAINER = textwrap.dedent('''
    """A stand-in for a user's run_clm.py: copies the model, writes Trainer-style result files."""
    import json, os, shutil, sys
    model, out, seed, train_file, mode = sys.argv[1:6]
    print("fake trainer starting", model, out, seed)
    print(out, file=open(os.path.join(out, "..", "..", "calls.txt"), "a"))
    if os.environ.get("USE_TORCHACC") != "1":
        sys.exit("USE_TORCHACC not passed")
    assert os.path.getsize(train_file) > 0 and json.loads(open(train_file).readline())["text"]
    if mode == "crash":
        sys.exit("boom: out of memory")
    shutil.copytree(model, out, dirs_exist_ok=True)
    if mode == "noresults":
        sys.exit(0)
    loss = 2.0 + int(seed) / 1000 + (0.05 if mode == "slow" else 0.0)
    sps = 4.0 if mode == "slow" else 5.0
    json.dump({"train_loss": loss, "train_runtime": 8.0, "train_steps_per_second": sps, "epoch": 1.0},
              open(os.path.join(out, "all_results.json"), "w"))
    json.dump({"global_step": 2, "log_history": [{"loss": loss + 0.5, "step": 1}, {"loss": loss, "step": 2},
                                                 {"train_loss": loss, "step": 2}]},
              open(os.path.join(out, "trainer_state.json"), "w"))
''')


def _command_config(tmp_path: Path, model_dir: Path, eval_txt: Path, modes: dict[str, str], extra: str = "") -> Path:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    variants = "".join(
        f"    {name}: {{command: '{sys.executable} {script} {{model}} {{output_dir}} {{seed}} {{train_file}} {mode}', "
        f"env: {{USE_TORCHACC: '1'}}}}\n" for name, mode in modes.items())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {model_dir}}}\n"
                   "train:\n  dataset: {name: builtin:pydoc}\n  block_size: 64\n  seed: 42\n  variants:\n" + variants
                   + f"eval: {{name: custom, path: {eval_txt}, seq_len: 64, num_samples: 2}}\n" + extra)
    return cfg


def _run_cli(cfg: Path, run_dir: Path) -> int:
    from accbench.cli import main

    return main(["run", str(cfg), "-o", str(run_dir)])


def test_command_variants_are_read_from_their_files(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _command_config(tmp_path, tiny_model_dir, eval_txt, {"ref": "fast", "acc": "slow"})
    run = tmp_path / "run"
    assert _run_cli(cfg, run) == 0
    res = Results.load(run)
    ref, acc = res.train
    assert (ref.variant, ref.baseline, ref.kind) == ("ref", True, "command")
    assert ref.train_loss == pytest.approx(2.042) and acc.train_loss == pytest.approx(2.092)  # {seed} = 42 reached it
    assert (acc.train_runtime, acc.train_steps_per_second, acc.speedup) == (8.0, 4.0, pytest.approx(0.8))
    assert acc.loss_curve == [{"step": 1, "loss": pytest.approx(2.592)}, {"step": 2, "loss": pytest.approx(2.092)}]
    assert acc.checkpoint == str(run / "models" / "acc") and res.models["acc"] == acc.checkpoint
    assert "fake trainer starting" in Path(acc.log).read_text() and acc.log == str(run / "logs" / "train_acc.log")
    # the original and both checkpoints evaluated on the same data; the copies equal the original
    ppl = {p.position: p.ppl for p in res.ppl}
    assert set(ppl) == {"pretrain", "ref", "acc"} and ppl["acc"] == pytest.approx(ppl["pretrain"], rel=1e-6)
    out = capsys.readouterr().out
    assert "Training Results" in out and "acc speed-up vs ref" in out
    assert any(ln.startswith("ref train loss") and ln.endswith("= 2.042000") for ln in out.splitlines())
    # --resume keeps finished variants: nothing is trained again, the results stay
    from accbench.cli import main

    assert main(["run", str(cfg), "-o", str(run), "--resume"]) == 0
    assert len((run / "calls.txt").read_text().splitlines()) == 2
    assert Results.load(run).train == res.train
    # a changed training setting is not "already trained": both variants train again, and say why
    capsys.readouterr()
    assert main(["run", str(cfg), "-o", str(run), "--resume", "train.learning_rate=0.001"]) == 0
    assert len((run / "calls.txt").read_text().splitlines()) == 4
    assert "recomputing training of variant acc" in capsys.readouterr().out
    assert {e.fingerprint for e in Results.load(run).train}.isdisjoint({e.fingerprint for e in res.train})


@pytest.mark.parametrize("mode, message", [
    ("crash", r"training variant 'acc' failed \(exit code 1\); log: .*train_acc.log"),
    ("noresults", r"training variant 'acc' left no all_results.json"),
])
def test_failing_command_variant_stops_the_run(tmp_path, tiny_model_dir, eval_txt, capsys, mode, message):
    import re

    cfg = _command_config(tmp_path, tiny_model_dir, eval_txt, {"ref": "fast", "acc": mode})
    run = tmp_path / "run"
    assert _run_cli(cfg, run) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    if mode == "crash":
        assert "boom: out of memory" in err  # the log's tail is shown
        assert "boom: out of memory" in (run / "logs" / "train_acc.log").read_text()
    res = Results.load(run)
    assert res.status == "failed" and [e.variant for e in res.train] == ["ref"]  # what finished is kept


def test_train_loss_gate_fails_the_run(tmp_path, tiny_model_dir, eval_txt):
    # observed difference 0.05 > allowed 0.01
    cfg = _command_config(tmp_path, tiny_model_dir, eval_txt, {"ref": "fast", "acc": "slow"},
                          "compare: {baseline: ref, max_train_loss_diff: 0.01}\n")
    assert _run_cli(cfg, tmp_path / "run") not in (0, 1, 2)
    # and holds when the bound is above the difference
    cfg = _command_config(tmp_path, tiny_model_dir, eval_txt, {"ref": "fast", "acc": "slow"},
                          "compare: {baseline: ref, max_train_loss_diff: 0.1}\n")
    assert _run_cli(cfg, tmp_path / "run2") == 0


# ----------------------------------------------------------------------------- the CLI with built-in variants


@pytest.mark.slow  # three worker processes (each imports torch + transformers): ~40 s idle, minutes under load
def test_builtin_variants_end_to_end_and_a_failing_variant(tmp_path, tiny_model_dir, eval_txt, capsys):
    import re

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}}}\n"
                   "train:\n  dataset: {name: builtin:pydoc}\n  block_size: 32\n  per_device_train_batch_size: 2\n"
                   "  max_steps: 6\n  learning_rate: 2.0e-3\n  variants:\n"
                   "    native: {}\n    foreach: {optim: adamw_torch}\n"
                   "    broken: {trainer_args: {lr_scheduler_type: no_such_schedule}}\n"
                   f"eval: {{name: custom, path: {eval_txt}, seq_len: 64, num_samples: 2}}\n")
    run = tmp_path / "run"
    assert _run_cli(cfg, run) == 2
    err = capsys.readouterr().err
    assert re.search(r"training variant 'broken' failed \(exit code 1\); log: .*logs/train_broken.log", err), err
    res = Results.load(run)
    native, foreach = res.train
    assert native.baseline and native.global_step == 6 and len(native.loss_curve) == 6
    assert foreach.train_loss == pytest.approx(native.train_loss, abs=1e-4)
    assert foreach.speedup == pytest.approx(foreach.train_steps_per_second / native.train_steps_per_second)
    assert native.wall_time > native.train_runtime > 0
    assert {p.position for p in res.ppl} == {"pretrain", "native", "foreach"}
    spec = json.loads((run / "train_data" / "spec_foreach.json").read_text())
    assert spec["training_args"]["optim"] == "adamw_torch" and spec["training_args"]["seed"] == 42
    assert (run / "models" / "foreach" / "model.safetensors").is_file()


def test_bad_training_setup_fails_before_any_training(tmp_path, tiny_model_dir, capsys):
    from accbench.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}}}\n"
                   "train:\n  dataset: {name: builtin:pydoc}\n  block_size: 1024\n"
                   "  variants: {native: {}, fast: {optim: adamw_torch_fuse}}\n")
    assert main(["run", str(cfg), "-o", str(tmp_path / "r1")]) == 2
    assert "optim 'adamw_torch_fuse' is not an optimizer" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace("adamw_torch_fuse", "adamw_torch"))
    assert main(["run", str(cfg), "-o", str(tmp_path / "r2")]) == 2
    assert "train.block_size 1024 exceeds the model's max_position_embeddings 512" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "logs" / "train_native.log").exists()
