"""llmc's chat calibration data (data/chat.py): custom_txt samples with apply_chat_template / add_answer,
ultrachat conversations by ultrachat_general, padding with attention masks; and llmc's shipped chat configs run
on the built-in model with only their paths changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from accbench.cli import main
from accbench.data import chat
from llmc_fixtures import LLMC, with_paths, write_chat_data

needs_llmc = pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    return write_chat_data(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def builtin_tok():
    from transformers import AutoTokenizer

    from accbench.builtin import builtin_model_path

    return AutoTokenizer.from_pretrained(builtin_model_path())


def test_custom_texts_follow_llmc_batch_process(chat_data, builtin_tok):
    """The question in llmc's system + user turns with the generation prompt; the answer after it with add_answer;
    the system prompt by llmc model type (Qwen2 has its own)."""
    samples = chat.load_custom_samples(str(chat_data / "custom"))
    raw = json.loads((chat_data / "custom" / "samples.json").read_text())
    assert [s.question for s in samples] == [r["question"] for r in raw]
    plain = chat.custom_texts(samples, builtin_tok, False, False, None)
    assert plain == [r["question"] for r in raw]
    templ = chat.custom_texts(samples[:1], builtin_tok, True, True, "Llama")
    q, a = raw[0]["question"], raw[0]["answer"]
    assert templ == [f"system: You are a helpful assistant.</s>\nuser: {q}</s>\nassistant: {a}"]
    qwen = chat.custom_texts(samples[:1], builtin_tok, True, False, "Qwen2")
    assert qwen[0].startswith("system: You are Qwen, created by Alibaba Cloud.") and qwen[0].endswith("assistant: ")


def test_custom_samples_with_images_are_refused(tmp_path):
    (tmp_path / "samples.json").write_text(json.dumps([{"question": "q", "image": "a.png"}]))
    with pytest.raises(chat.DataError, match="sample 0 has image"):
        chat.load_custom_samples(str(tmp_path))


def test_ultrachat_general_equals_llmc_recipe(chat_data, builtin_tok):
    """llmc: dataset.shuffle(seed=42).select(range(n)), apply_chat_template(messages, tokenize=False), tokenized
    without special tokens and truncated to seq_len; here against `datasets` itself."""
    from datasets import Dataset

    convs = chat.load_conversations(str(chat_data / "ultrachat.jsonl"), None)
    got = chat.ultrachat_general(convs, builtin_tok, 10, 64)
    ds = Dataset.from_list([{"messages": c} for c in convs]).shuffle(seed=42).select(range(10))
    want = [builtin_tok(builtin_tok.apply_chat_template(e["messages"], tokenize=False), padding=False,
                        max_length=64, truncation=True, add_special_tokens=False).input_ids for e in ds]
    assert got == want and len(got) == 10
    assert max(len(s) for s in got) == 64 and got[0][0] != builtin_tok.bos_token_id


def test_padded_batches_pad_to_the_longest_with_a_mask(builtin_tok):
    rows = [[5, 6, 7], [8], [9, 10]]
    (b,) = chat.padded_batches(rows, builtin_tok, -1)
    pad = builtin_tok.pad_token_id
    assert b.input_ids.tolist() == [[5, 6, 7], [8, pad, pad], [9, 10, pad]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]] and len(b) == 3
    builtin_tok.padding_side = "left"
    try:
        b1, b2 = chat.padded_batches(rows, builtin_tok, 2)
    finally:
        builtin_tok.padding_side = "right"
    assert b1.input_ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and b2.attention_mask.tolist() == [[1, 1]]


def test_awq_clip_search_leaves_padding_out():
    """llmc's auto_clip drops padded tokens: searching with a mask equals searching on the real tokens alone."""
    from accbench.quant.awq import search_clip
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.spec import QuantSpec

    torch.manual_seed(0)
    spec = QuantSpec("Awq", WeightQuantSpec(3, False, "per_group", 16), None, {"clip_sym": False})
    w, x = torch.randn(8, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    x_pad = x.clone()
    x_pad[mask == 0] = 50.0  # padding that would dominate the search if it were counted
    masked = search_clip(w, [x_pad], spec, 512, masks=[mask])
    real = search_clip(w, [x[mask == 1].unsqueeze(0)], spec, 512)
    assert all(torch.equal(a, b) for a, b in zip(masked, real))
    assert not all(torch.equal(a, b) for a, b in zip(search_clip(w, [x_pad], spec, 512), real))


def _shipped(tmp_path: Path, name: str, chat_data: Path, data: Path) -> Path:
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), "builtin:tiny-llama", data, tmp_path / "save",
                     chat_data)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@needs_llmc
def test_custom_data_padding_config_runs_on_builtin(tmp_path, chat_data, pydoc_eval_txt, capsys, one_thread):
    """llmc's awq_w_only_custom_data_padding.yml, only its paths changed: every sample of samples.json in one
    padded batch (n_samples and seq_len not applied, as llmc), chat template on; validate agrees with run."""
    p = _shipped(tmp_path, "quantization/methods/Awq/awq_w_only_custom_data_padding.yml", chat_data, pydoc_eval_txt)
    assert main(["validate", str(p)]) == 0
    code = main(["run", str(p), "-o", str(tmp_path / "run")])
    err = capsys.readouterr()
    assert code == 0, err.err[-3000:]
    assert "calibration: 8 samples" in err.out and "padded, 1 batch" in err.out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["quant"]["calib_samples"] == 8
    ppl = {e["position"]: e["ppl"] for e in res["ppl"]}
    assert ppl["transformed"] == pytest.approx(ppl["pretrain"], rel=1e-4) and ppl["fake_quant"] != ppl["pretrain"]


@needs_llmc
def test_ultrachat_config_runs_on_builtin(tmp_path, chat_data, pydoc_eval_txt, capsys, one_thread):
    """llmc's awq_w_a_chat_data.yml (ultrachat, ultrachat_general, padding) with its paths changed; n_samples
    lowered so the CPU test stays short. (llmc's own code asserts on this config: its padding path takes only
    custom_txt data.)"""
    p = _shipped(tmp_path, "quantization/methods/Awq/awq_w_a_chat_data.yml", chat_data, pydoc_eval_txt)
    assert main(["validate", str(p)]) == 0
    code = main(["run", str(p), "-o", str(tmp_path / "run"), "calib.n_samples=16",
                 "eval.eval_pos=[pretrain,fake_quant]"])
    err = capsys.readouterr()
    assert code == 0, err.err[-3000:]
    assert "calibration: 16 samples" in err.out and "padded, 1 batch" in err.out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    ppl = {e["position"]: e["ppl"] for e in res["ppl"]}
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.05


def test_chat_template_missing_is_refused_before_loading(tmp_path, tiny_model_dir, chat_data, eval_txt, capsys):
    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": {"method": "Awq", "weight": {"bit": 4, "group_size": 32}},
           "calib": {"name": "custom_txt", "path": str(chat_data / "custom"), "apply_chat_template": True,
                     "padding": True},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "eval_pos": ["fake_quant"]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(p)]) == 2
    assert "has none" in capsys.readouterr().err
    assert main(["run", str(p), "-o", str(tmp_path / "run")]) == 2
    assert "has none" in capsys.readouterr().err


@needs_llmc
def test_generate_only_eval_runs_as_a_task(tmp_path, chat_data, pydoc_eval_txt, capsys, one_thread):
    """llmc's awq_w_only_custom_eval.yml (only a generate_only eval on custom_gen, chat template on) with only
    its paths changed: each position's greedy answers to the samples land in results.json's tasks."""
    pile = tmp_path / "pile.jsonl"  # pileval_awq wants many short documents: the test text's paragraphs
    pile.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_eval_txt.read_text().split("\n\n")))
    p = _shipped(tmp_path, "quantization/methods/Awq/awq_w_only_custom_eval.yml", chat_data, pile)
    assert main(["validate", str(p)]) == 0
    code = main(["run", str(p), "-o", str(tmp_path / "run"), "calib.n_samples=16"])
    assert code == 0, capsys.readouterr().err[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["ppl"] == []
    got = {t["model"]: t for t in res["tasks"]}
    assert set(got) == {"pretrain", "transformed", "fake_quant"}
    raw = json.loads((chat_data / "custom" / "samples.json").read_text())
    for t in got.values():
        assert t["task"] == "custom_gen" and t["type"] == "generate_only" and t["n"] == len(raw) and t["metrics"] == {}
        s0 = t["samples"]["sample0"]
        assert s0["prompt"] == f"system: You are a helpful assistant.</s>\nuser: {raw[0]['question']}</s>\nassistant: "
        assert s0["reference"] == raw[0]["answer"] and s0["response"]
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["tasks"][0]["max_new_tokens"] == 32 and resolved["tasks"][0]["chat_template"] is True


def test_custom_ppl_joins_question_and_answer_by_newline(chat_data, builtin_tok):
    """llmc's custom_ppl: '\\n'.join(question + answer), tokenized once with special tokens."""
    from accbench.data.text import load_texts, ppl_token_stream

    raw = json.loads((chat_data / "custom" / "samples.json").read_text())
    texts = load_texts("custom_ppl", str(chat_data / "custom"))
    ids = ppl_token_stream("custom_ppl", texts, builtin_tok, 64)
    want = builtin_tok("\n".join(r["question"] + r["answer"] for r in raw), return_tensors="pt").input_ids[0]
    assert torch.equal(ids, want)


def test_task_eval_pos_limits_positions(tmp_path, tiny_model_dir, chat_data, eval_txt, capsys, one_thread):
    """A generate_only eval at [fake_quant] only runs there; its positions count in the run's positions."""
    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
           "eval": [{"name": "custom", "path": str(eval_txt), "seq_len": 64, "eval_pos": ["pretrain"]},
                    {"name": "custom_gen", "type": "generate_only", "path": str(chat_data / "custom"),
                     "max_new_tokens": 4, "eval_pos": ["fake_quant"], "bs": 1}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "-o", str(tmp_path / "run")]) == 0, capsys.readouterr().err[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [(t["model"], t["task"]) for t in res["tasks"]] == [("fake_quant", "custom_gen")]
    assert [e["position"] for e in res["ppl"]] == ["pretrain"]


def test_custom_txt_without_padding_goes_through_preproc(chat_data, builtin_tok):
    """llmc's awq_w_only_custom_data.yml path: templated samples, then random_truncate_txt windows of seq_len."""
    from accbench.config import CalibCfg
    from accbench.pipeline.quantize import build_calib_batches

    c = CalibCfg(name="custom_txt", path=str(chat_data / "custom"), apply_chat_template=True, n_samples=4,
                 seq_len=64, preproc="random_truncate_txt", seed=42)
    (batch,) = build_calib_batches(c, builtin_tok, "Llama")
    assert tuple(batch.shape) == (4, 64)
    from accbench.data.calib import calib_samples

    texts = chat.custom_texts(chat.load_custom_samples(c.path), builtin_tok, True, False, "Llama")
    assert all(t.startswith("system: You are a helpful assistant.</s>\nuser: What does this say?") for t in texts)
    assert batch.tolist() == calib_samples(texts, builtin_tok, "random_truncate_txt", 4, 64, 42)
