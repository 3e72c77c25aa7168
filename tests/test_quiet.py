"""Quiet by default: the engine uses transformers' current KV-cache keyword (no past_key_values deprecation),
the misleading token-length warning is dropped, progress bars are off without a terminal, and lm-eval's
git probe does not run."""

from __future__ import annotations

import io
import logging
import warnings

import pytest


def test_engine_generates_and_scores_without_cache_deprecation_warnings(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.evaluate.backends.hf import HFBackend as Engine, cache_kwarg
    from accbench.evaluate.requests import GenerateRequest, ScoreRequest

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = Engine(model, tok, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = eng.generate([GenerateRequest("def f(x):", 6), GenerateRequest("import", 6)])
        lls = eng.score([ScoreRequest("x = 1", " + 2"), ScoreRequest("x = 1 + 2", " * 3")])
    assert len(out) == 2 and all(isinstance(o, str) for o in out) and len(lls) == 2
    import inspect

    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert cache_kwarg(model) == expected


def test_token_length_warning_is_dropped_and_bars_off_without_a_terminal(tiny_tokenizer, monkeypatch):
    from accbench import quiet

    logger = logging.getLogger("transformers.tokenization_utils_base")
    seen: list[str] = []

    class Catch(logging.Handler):  # transformers' loggers do not propagate to the root (pytest's caplog)
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    def tokenize_long() -> None:
        tiny_tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
        assert len(tiny_tokenizer("word " * 2000)["input_ids"]) > tiny_tokenizer.model_max_length

    handler = Catch()
    logging.getLogger("transformers").addHandler(handler)
    saved = list(logger.filters)
    try:
        for f in saved:
            logger.removeFilter(f)
        tokenize_long()
        assert any("Token indices sequence length" in m for m in seen)  # the warning exists without us
        seen.clear()
        for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            monkeypatch.delenv(var, raising=False)
        quiet.install(io.StringIO())  # not a terminal
        quiet.install(io.StringIO())  # idempotent
        tokenize_long()
        assert seen == [] and len(logger.filters) == 1
    finally:
        logging.getLogger("transformers").removeHandler(handler)
        for f in list(logger.filters):
            logger.removeFilter(f)
        for f in saved:
            logger.addFilter(f)
    import os

    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_lm_eval_git_probe_is_skipped(monkeypatch):
    pytest.importorskip("lm_eval")
    import lm_eval.evaluator as ev

    from accbench.evaluate.tasks.lmeval import quiet_lm_eval

    original = ev.get_git_commit_hash
    with quiet_lm_eval():
        assert ev.get_git_commit_hash() is None  # no `git describe` subprocess, no "fatal: not a git repository"
    assert ev.get_git_commit_hash is original
