"""Shared fixtures: tiny models built offline with a fixed seed, and small datasets written to tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pydoc_texts() -> list[str]:
    import pydoc_data.topics as t

    return [t.topics[k] for k in sorted(t.topics)]


def make_bpe_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_pydoc_texts(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   model_max_length=512)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_bpe_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random 2-layer Llama (hidden 64) with a 512-token BPE tokenizer, saved in HF format."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random 2-layer Llama of head size 32 (the smallest vLLM's CPU attention runs; tiny_model_dir's is 16)
    and a 256-token window, saved in HF format: the model of the vLLM tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    out = tmp_path_factory.mktemp("tiny_llama_hd32")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eval_txt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "eval.txt"
    out.write_text("\n\n".join(_pydoc_texts()[:6]))
    return out


@pytest.fixture(scope="session")
def pydoc_eval_txt(tmp_path_factory) -> Path:
    """The built-in test text as a file: an llmc config's `eval.path` then reads what `builtin:pydoc` evaluates."""
    from accbench.builtin import builtin_texts

    out = tmp_path_factory.mktemp("pydoc") / "test.txt"
    out.write_text("\n\n".join(builtin_texts("pydoc", "test")))
    return out


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core machine: one torch thread avoids oversubscription stalls."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LM_EVAL_MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def lm_eval_mc_task(tmp_path):
    """make(name, data_jsonl) -> include_path: an lm-eval task YAML over a local multiple-choice jsonl
    (context / choices / label), the same documents our multiple_choice task reads."""
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `lm_eval`")

    def make(name: str, data: Path) -> Path:
        d = tmp_path / "lm_tasks"
        d.mkdir(exist_ok=True)
        (d / f"{name}.yaml").write_text(LM_EVAL_MC_YAML.format(name=name, path=data))
        return d

    return make


@pytest.fixture
def accbench_eval():
    """run(model_dir, tasks_yaml, out_dir, *extra) -> exit code of `accbench eval` on CPU in float32."""
    from accbench import cli

    def run(model_dir: Path, cfg: Path, out: Path, *extra: str) -> int:
        return cli.main(["eval", "--model", str(model_dir), "--config", str(cfg), "-o", str(out),
                         "--dtype", "float32", "--device", "cpu", *extra])

    return run
