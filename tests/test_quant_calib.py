"""Calibration preprocessing: llmc's recipes, exact windows, seeding, batching and the errors for too little data."""

from __future__ import annotations

import pytest

from accbench.data.calib import PREPROC, calib_batches, calib_samples
from accbench.errors import DataError


class CharTokenizer:
    """One token per character (ord), so expected windows can be computed by hand."""

    def __call__(self, text: str):
        class Enc:
            input_ids = [ord(c) for c in text]

        return Enc()


TOK = CharTokenizer()
DOCS = ["abcdefghij" * 3, "0123456789" * 2, "short", "KLMNOPQRSTUVWXYZ" * 2]


def test_wikitext2_gptq_windows_come_from_the_joined_text():
    joined = [ord(c) for c in "\n\n".join(DOCS)]
    samples = calib_samples(DOCS, TOK, "wikitext2_gptq", 5, 8, seed=3)
    assert len(samples) == 5 and all(len(s) == 8 for s in samples)
    starts = [next(i for i in range(len(joined) - 7) if joined[i : i + 8] == s) for s in samples]
    assert all(0 <= i <= len(joined) - 8 - 1 for i in starts)


def test_seed_controls_the_samples():
    a = calib_samples(DOCS, TOK, "random_truncate_txt", 4, 8, seed=1)
    assert a == calib_samples(DOCS, TOK, "random_truncate_txt", 4, 8, seed=1)
    assert a != calib_samples(DOCS, TOK, "random_truncate_txt", 4, 8, seed=2)


def test_txt_general_preproc_keeps_only_long_documents_truncated():
    samples = calib_samples(DOCS, TOK, "txt_general_preproc", 10, 25, seed=0)
    # only the 30-char and 32-char documents have 25 tokens; each gives its first 25
    assert sorted(bytes(s).decode() for s in samples) == sorted([("abcdefghij" * 3)[:25], ("KLMNOPQRSTUVWXYZ" * 2)[:25]])


def test_pileval_awq_concatenates_short_documents_into_windows():
    samples = calib_samples(DOCS, TOK, "pileval_awq", 10, 20, seed=0)
    # documents of <= 20 tokens: "0123456789"*2 (20) and "short" (5): 25 tokens -> one window of 20
    assert len(samples) == 1 and len(samples[0]) == 20
    assert set(bytes(samples[0]).decode()) <= set("0123456789short")


def test_c4_gptq_windows_lie_inside_one_document():
    samples = calib_samples(DOCS, TOK, "c4_gptq", 6, 12, seed=0)
    for s in samples:
        text = bytes(s).decode()
        assert any(text in d for d in DOCS)


@pytest.mark.parametrize("preproc,seq_len,match", [
    ("txt_general_preproc", 100, "no calibration document has calib.seq_len=100"),
    ("c4_gptq", 100, "no calibration document is longer than"),
    ("wikitext2_gptq", 500, "not more than calib.seq_len=500"),
    ("pileval_awq", 4, "not one window"),
])
def test_too_little_data_is_a_clear_error(preproc, seq_len, match):
    with pytest.raises(DataError, match=match):
        calib_samples(DOCS, TOK, preproc, 4, seq_len, seed=0)


def test_empty_data_and_unknown_preproc():
    with pytest.raises(DataError, match="empty"):
        calib_samples(["", "  "], TOK, "wikitext2_gptq", 4, 8, seed=0)
    with pytest.raises(DataError, match="unknown calib.preproc 'pileval'"):
        calib_samples(DOCS, TOK, "pileval", 4, 8, seed=0)
    assert set(PREPROC) == {"wikitext2_gptq", "random_truncate_txt", "c4_gptq", "pileval_awq", "txt_general_preproc",
                            "ptb_gptq", "pileval_omni", "pileval_smooth", "original_txt"}


def test_batches_follow_llmc_bs():
    samples = [[i] * 4 for i in range(5)]
    assert [tuple(b.shape) for b in calib_batches(samples, -1)] == [(5, 4)]
    assert [tuple(b.shape) for b in calib_batches(samples, 2)] == [(2, 4), (2, 4), (1, 4)]
    with pytest.raises(DataError, match="calib.bs"):
        calib_batches(samples, 0)


def test_builtin_calib_split_is_used():
    pytest.importorskip("pydoc_data")
    from accbench.data.text import load_texts

    texts = load_texts("builtin:pydoc", builtin_split="calib")
    assert texts and texts != load_texts("builtin:pydoc", builtin_split="test")


@pytest.mark.parametrize("preproc", ["pileval_awq", "pileval_smooth", "txt_general_preproc"])
def test_llmc_fixed_order_is_datasets_shuffle_42_whatever_the_seed(preproc):
    """llmc reads these through `datasets`' shuffle(seed=42) whatever base.seed says: our order is that
    shuffle's (checked against datasets itself), and calib.seed does not change the samples."""
    from datasets import Dataset

    from accbench.data.calib import llmc_shuffled

    docs = [f"document number {i} " * (3 + i % 5) for i in range(40)]
    assert llmc_shuffled(docs) == Dataset.from_dict({"text": docs}).shuffle(seed=42)["text"]
    seq_len = 200 if preproc == "pileval_awq" else 40  # pileval_awq keeps documents of at most seq_len
    first = calib_samples(docs, TOK, preproc, 6, seq_len, seed=1)
    assert first and first == calib_samples(docs, TOK, preproc, 6, seq_len, seed=2)
    if preproc == "pileval_awq":  # the first 6 documents in llmc's order, stripped, joined, cut into windows
        stream = "".join(d.strip() for d in llmc_shuffled(docs)[:6])
        assert [bytes(s).decode() for s in first] == [stream[i : i + 200] for i in range(0, len(stream) - 199, 200)]
    else:  # one sample per document, in llmc's order
        expected = [d for d in llmc_shuffled(docs) if preproc == "pileval_smooth" or len(d) >= 40][:6]
        assert [bytes(s).decode() for s in first] == [d[:40] for d in expected]
