"""The request engine against lm-eval's own HF model and against plain full forwards on the tiny model."""

from __future__ import annotations

import pytest
import torch

from accbench.evaluate.backends.hf import HFBackend as Engine
from accbench.evaluate.requests import GenerateRequest, RollingRequest, ScoreRequest

# items where one item's full text is a prefix-cut of another's (the lm-eval 0.4.13 logits_cache trap),
# shared contexts, trailing whitespace in a context, an empty context and multi-token choices
MC_ITEMS = [
    ("x = 1", ["+ 2", "+ 2 * 3", "- 1"]),
    ("x = 1 + 2", ["* 3", "* 3 + 4", "/ 5"]),
    ("def f(a, b):\n    return", ["a + b", "a - b", "None", "a"]),
    ("The class keyword ", ["defines a class", "imports a module"]),
    ("", ["print('hi')", "import os"]),
    ("for i in range(10):", ["pass", "break", "continue"]),
]


def _requests() -> list[ScoreRequest]:
    return [ScoreRequest(ctx, " " + ch if ctx else ch) for ctx, chs in MC_ITEMS for ch in chs]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _reference_score(model, pairs):
    """One full forward per request, no batching, no sharing: the definition of the number."""
    out = []
    for ctx, cont in pairs:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
        rows = lp[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
        out.append((float(rows[torch.arange(len(cont)), cont].sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all())))
    return out


@pytest.mark.parametrize("bs", [1, 3])
def test_score_matches_full_forward(tiny, bs):
    model, tok = tiny
    eng = Engine(model, tok, batch_size=bs)
    reqs = _requests()
    got = eng.score(reqs)
    ref = _reference_score(model, [eng.encode_pair(r.context, r.continuation) for r in reqs])
    for (a, ga), (b, gb) in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    # the shared contexts ran once: fewer tokens than one forward per request
    full = sum(len(c) + len(t) - 1 for c, t in (eng.encode_pair(r.context, r.continuation) for r in reqs))
    assert eng.stats.forward_tokens < full


def test_tokenization_follows_lm_eval(tiny):
    model, tok = tiny
    eng = Engine(model, tok)
    ctx, cont = eng.encode_pair("The class keyword ", "defines")
    assert ctx == tok.encode("The class keyword", add_special_tokens=True)
    assert ctx + cont == tok.encode("The class keyword defines")  # the space moved to the continuation
    assert eng.encode_pair("", "import os")[0] == [tok.bos_token_id]


def test_score_matches_lm_eval_hf(tiny):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `lm_eval`")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    reqs = _requests()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, logits_cache=False, device="cpu")
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, (r.context, r.continuation), i)
                               for i, r in enumerate(reqs)], disable_tqdm=True)
    ours = Engine(model, tok, batch_size=4).score(reqs)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    text = "import os\n" * 400  # several windows of the 512-token model
    theirs_r = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ours_r = Engine(model, tok, batch_size=4).score_rolling([RollingRequest(text)])
    assert ours_r[0] == pytest.approx(theirs_r[0], rel=1e-5)


def test_left_truncation_is_counted(tiny):
    model, tok = tiny
    eng = Engine(model, tok, batch_size=2, max_length=16)
    reqs = [ScoreRequest("word " * 40, " end"), ScoreRequest("short", " end")]
    got = eng.score(reqs)
    assert eng.stats.truncated == 1
    ctx, cont = eng.encode_pair(reqs[0].context, reqs[0].continuation)
    kept = (ctx + cont)[-17:]
    assert got[0][0] == pytest.approx(_reference_score(model, [(kept[: -len(cont)], cont)])[0][0], abs=1e-4)


def test_greedy_generation_independent_of_batch_size(tiny):
    model, tok = tiny
    reqs = [GenerateRequest(p, max_new_tokens=6) for p in ["def f(", "import", "The class keyword", "x = [1, 2,"]]
    one = Engine(model, tok, batch_size=1).generate(reqs)
    many = Engine(model, tok, batch_size=3).generate(reqs)
    assert one == many
    # the same as a plain unbatched greedy loop
    for r, text in zip(reqs, one):
        ids = tok.encode(r.context)
        new = []
        with torch.no_grad():
            for _ in range(r.max_new_tokens):
                t = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if t == tok.eos_token_id:
                    break
                new.append(t)
        assert text == tok.decode(new, skip_special_tokens=True)


def test_stop_strings_cut_and_sampling_is_seeded(tiny):
    model, tok = tiny
    eng = Engine(model, tok, batch_size=4)
    free = eng.generate([GenerateRequest("def f(", max_new_tokens=16)])[0]
    stop = free.strip()[2:4] if len(free.strip()) >= 4 else free[-1]
    cut = eng.generate([GenerateRequest("def f(", max_new_tokens=16, stop=(stop,))])[0]
    assert cut == free[: free.find(stop)] and stop not in cut
    s = [GenerateRequest("import", max_new_tokens=8, temperature=1.0, seed=k) for k in (1, 2, 1)]
    a = eng.generate(s)
    b = Engine(model, tok, batch_size=1).generate(s)
    assert a == b and a[0] == a[2]


def test_bos_adding_tokenizer_matches_lm_eval_hf(tiny):
    """Llama-style tokenizers add BOS; lm-eval 0.4.13 keeps the tokenizer's default, and so do we."""
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `lm_eval`")
    import copy

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from tokenizers.processors import TemplateProcessing

    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok.encode("import os")[0] == tok.bos_token_id
    reqs = _requests() + [ScoreRequest("<s>already has a BOS", " yes")]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, logits_cache=False, device="cpu")
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, (r.context, r.continuation), i)
                               for i, r in enumerate(reqs)], disable_tqdm=True)
    eng = Engine(model, tok, batch_size=4)
    assert eng.encode_pair("x = 1", " + 2")[0][0] == tok.bos_token_id
    for (a, ga), (b, gb) in zip(eng.score(reqs), theirs):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_out_of_memory_halves_the_batch_and_records_it(tiny, monkeypatch):
    model, tok = tiny
    real = Engine._forward

    def small_memory(self, ids, mask, pos, cache):
        if ids.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, ids, mask, pos, cache)

    monkeypatch.setattr(Engine, "_forward", small_memory)
    eng = Engine(model, tok, batch_size=16)
    reqs = _requests()
    got = eng.score(reqs)
    assert eng.stats.batch_sizes["score"] == 4
    ref = _reference_score(model, [eng.encode_pair(r.context, r.continuation) for r in reqs])
    assert [g[0] for g in got] == pytest.approx([r[0] for r in ref], abs=1e-4)
    assert Engine(model, tok, max_batch_size=64).probe_batch_size(32) == 4  # what batch_size=auto probes on GPU
    gen = Engine(model, tok, batch_size=16).generate([GenerateRequest(p, max_new_tokens=3) for p in "abcdefg"])
    assert len(gen) == 7


def test_a_long_pass_logs_plain_progress_lines(monkeypatch, caplog):
    """Logs are files: a long engine pass says how far it got as plain lines, never a carriage-return bar."""
    import logging

    from accbench.evaluate.backends import batching

    monkeypatch.setattr(batching, "PROGRESS_LOG_S", 0.0)  # every chunk is "long enough" to report
    seen: list[int] = []
    with caplog.at_level(logging.INFO, logger="accbench.engine"):
        bs = batching.run_in_batches(list(range(10)), 4, lambda chunk, bs: seen.extend(chunk), "scoring")
    assert bs == 4 and seen == list(range(10))
    lines = [r.getMessage() for r in caplog.records if r.name == "accbench.engine"]
    assert lines == ["scoring: 4/10 requests done (batch size 4)", "scoring: 8/10 requests done (batch size 4)"]
    assert not any("\r" in m for m in lines)
