"""Perplexity equals a straightforward llmc-style implementation; the recipe's details are pinned."""

from __future__ import annotations

import math

import pytest
import torch

from accbench.data.text import join_texts, ppl_token_stream
from accbench.evaluate.perplexity import perplexity
from accbench.models import load_model


def llmc_reference_ppl(model, ids: torch.Tensor, seq_len: int, bs: int) -> float:
    """llmc's eval_ppl loop, written out plainly (full logits, nn.CrossEntropyLoss)."""
    n = ids.numel() // seq_len
    ids = ids.unsqueeze(0)
    nlls = []
    for i in range(0, n, bs):
        j = min(i + bs, n)
        inputs = ids[:, i * seq_len : j * seq_len].reshape(j - i, seq_len)
        logits = model(inputs).logits
        loss = torch.nn.CrossEntropyLoss()(logits[:, :-1, :].reshape(-1, logits.size(-1)),
                                           inputs[:, 1:].reshape(-1))
        nlls.append(loss.float() * seq_len * (j - i))
    return torch.exp(torch.stack(nlls).sum() / (n * seq_len)).item()


@pytest.mark.parametrize("seq_len,bs", [(64, 1), (50, 3)])
def test_matches_llmc_reference(tiny_model_dir, eval_txt, seq_len, bs):
    loaded = load_model(str(tiny_model_dir), "float32", device="cpu")
    stream = ppl_token_stream("custom", [eval_txt.read_text()], loaded.tokenizer, seq_len)
    ours = perplexity(loaded.model, stream, seq_len, bs, "cpu", progress=False)
    with torch.inference_mode():
        ref = llmc_reference_ppl(loaded.model, stream, seq_len, bs)
    assert ours.ppl == pytest.approx(ref, rel=1e-5)
    assert ours.windows == stream.numel() // seq_len  # tail dropped
    assert ours.tokens == ours.windows * seq_len
    assert math.exp(sum(ours.window_losses) / ours.windows) == pytest.approx(ours.ppl, rel=1e-12)


def test_window_cap_and_too_short(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), "float32", device="cpu")
    stream = torch.arange(300) % 100
    assert perplexity(loaded.model, stream, 64, 2, max_windows=2, progress=False).windows == 2
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(loaded.model, stream[:10], 64, progress=False)


def test_join_rules_follow_llmc(tiny_tokenizer):
    docs = ["a", "b", "c"]
    assert join_texts("wikitext2", docs) == "a\n\nb\n\nc"
    assert join_texts("ptb", docs) == "a b c"
    assert join_texts("c4", [str(i) for i in range(2000)]).count(" ") == 1099  # first 1100 documents
    stream = ppl_token_stream("c4", ["word " * 5000], tiny_tokenizer, seq_len=8)
    assert stream.numel() == 256 * 8  # c4 is cut to 256 windows
