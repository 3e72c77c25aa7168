"""quant.kvcache on the downstream tasks: the HF backend's forwards take their caches from the KV quantizer
(scoring and generation), tasks run at fake_quant (with it) and fake_quant_wo_kv (without it), and what cannot
apply it (vLLM, worker replicas) is refused up front."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import accbench.quant.kvcache as kvcache
from accbench.cli import main
from accbench.evaluate.backends.hf import HFBackend, cache_kwarg
from accbench.evaluate.requests import GenerateRequest
from accbench.evaluate.tasks.multiple_choice import build_requests, load_questions
from accbench.config import MultipleChoiceTask
from accbench.quant.kvcache import KVCacheQuantizer, KVQuantSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tiny_tokenizer


@pytest.fixture(scope="module")
def requests():
    mc = MultipleChoiceTask(name="c", type="multiple_choice", path="builtin:pydoc-cloze")
    return build_requests(mc, load_questions(mc)[:4])


def _scores(model_tok, requests, kv=None, bs=4) -> list[float]:
    model, tok = model_tok
    return [ll for ll, _ in HFBackend(model, tok, batch_size=bs, kv=kv).score(requests)]


def test_2_bit_kv_changes_the_scores_and_16_bit_leaves_them(model_tok, requests):
    plain = _scores(model_tok, requests)
    assert len(plain) == len(requests) == 16
    for method in ("Naive", "Kivi"):
        q16 = _scores(model_tok, requests, KVCacheQuantizer(KVQuantSpec(method, 16)))
        assert q16 == pytest.approx(plain, abs=1e-4)
    q2 = _scores(model_tok, requests, KVCacheQuantizer(KVQuantSpec("Naive", 2)))
    diffs = [abs(a - b) for a, b in zip(q2, plain)]
    assert min(diffs) > 1e-3, diffs  # every sample sees its quantized keys/values
    # batch independent (per_token ranges), and equal to scoring one request at a time
    assert _scores(model_tok, requests, KVCacheQuantizer(KVQuantSpec("Naive", 2)), bs=1) == pytest.approx(q2, abs=1e-4)


def test_dynamic_per_tensor_kv_runs_at_batch_size_1(model_tok, requests):
    """One per_tensor range covers the batch: the backend keeps the scores batch independent (batch size 1)."""
    model, tok = model_tok
    kv = KVCacheQuantizer(KVQuantSpec("Naive", 3, granularity="per_tensor"))
    backend = HFBackend(model, tok, batch_size=4, kv=kv)
    got = [ll for ll, _ in backend.score(requests)]
    assert backend.stats.batch_sizes["score"] == 1
    one = [[ll for ll, _ in HFBackend(model, tok, batch_size=1, kv=kv).score([r])][0] for r in requests[:3]]
    assert got[:3] == pytest.approx(one, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(got, _scores(model_tok, requests))) > 1e-3


def test_scoring_forward_goes_through_the_quantizer(model_tok, requests, monkeypatch):
    """A spy on the quantizer counts the keys/values it rounds, and a by-hand forward of the whole text with a
    quantized cache gives the same log-likelihood."""
    model, tok = model_tok
    seen: list[tuple[int, ...]] = []
    real = kvcache.fake_quantize_kv

    def spy(x, spec, static_range=None):
        seen.append(tuple(x.shape))
        return real(x, spec, static_range)

    monkeypatch.setattr(kvcache, "fake_quantize_kv", spy)
    kv = KVCacheQuantizer(KVQuantSpec("Naive", 2))
    backend = HFBackend(model, tok, batch_size=1, kv=kv)
    got = backend.score(requests[:2])
    layers = model.config.num_hidden_layers
    assert len(seen) == 2 * 2 * layers  # 2 forwards (batch 1) x keys and values x layers
    pairs = [backend.encode_pair(r.context, r.continuation) for r in requests[:2]]
    assert sorted({s[2] for s in seen}) == sorted({len(c) + len(t) - 1 for c, t in pairs})
    monkeypatch.setattr(kvcache, "fake_quantize_kv", real)
    for (ctx, cont), (ll, _) in zip(pairs, got):
        ids = torch.tensor([ctx + cont[:-1]])
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=True, **{cache_kwarg(model): kv.new_cache()}).logits[0].float()
        lp = torch.log_softmax(logits[-len(cont):], -1)
        assert ll == pytest.approx(float(lp[torch.arange(len(cont)), torch.tensor(cont)].sum()), abs=1e-4)


def test_generation_uses_the_quantized_cache(model_tok):
    model, tok = model_tok
    reqs = [GenerateRequest(context=c, max_new_tokens=6) for c in ("def main", "import os\n", "The value of")]
    plain = HFBackend(model, tok, batch_size=3).generate(reqs)
    for method in ("Naive", "Kivi"):
        assert HFBackend(model, tok, batch_size=3, kv=KVCacheQuantizer(KVQuantSpec(method, 16))).generate(reqs) == plain
    calls = []
    kv = KVCacheQuantizer(KVQuantSpec("Kivi", 2, residual_length=2))
    real = kv.new_cache
    kv.new_cache = lambda: calls.append(1) or real()  # type: ignore[method-assign]
    out = HFBackend(model, tok, batch_size=3, kv=kv).generate(reqs)
    assert len(out) == 3 and calls == [1]  # one cache for the batch, kept through the decoding loop


def _cfg(tmp_path, model_dir, bit: int = 2, **extra) -> str:
    cfg = {"model": {"path": str(model_dir)},
           "quant": {"method": "RTN", "weight": {"bit": 8, "group_size": 32},
                     "kvcache": {"method": "Naive", "bit": bit, "granularity": "per_token"}},
           "tasks": [{"name": "cloze", "type": "multiple_choice", "path": "builtin:pydoc-cloze", "limit": 6,
                      "eval_pos": ["fake_quant", "fake_quant_wo_kv"]}], **extra}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _stored_lls(run_dir, position: str) -> dict[str, float]:
    """request -> log-likelihood, as the per-sample store of the run holds them at `position`."""
    from accbench.store import SampleStore

    store = SampleStore(run_dir)
    try:
        rows = store.sample_rows(store.models()[position], "cloze")
    finally:
        store.close()
    return {json.dumps(req, sort_keys=True): resp[0] for _, kind, req, resp in rows if kind == "score"}


@pytest.mark.parametrize("bit", [2, 16])
def test_cli_runs_tasks_at_fake_quant_and_fake_quant_wo_kv(tmp_path, tiny_model_dir, capsys, bit):
    run = tmp_path / "run"
    code = main(["run", _cfg(tmp_path, tiny_model_dir, bit), "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "without KV-cache quantization" not in err
    res = json.loads((run / "results.json").read_text())
    by = {t["model"]: t for t in res["tasks"] if t["task"] == "cloze"}
    assert set(by) == {"fake_quant", "fake_quant_wo_kv"}
    assert all(len(by[m]["per_sample"]["acc"]) == 6 for m in by)
    kv, wo = _stored_lls(run, "fake_quant"), _stored_lls(run, "fake_quant_wo_kv")
    assert set(kv) == set(wo) and len(kv) == 24  # 6 questions x 4 choices
    diffs = [abs(kv[k] - wo[k]) for k in kv]
    if bit == 2:
        assert min(diffs) > 1e-3, diffs
    else:
        assert max(diffs) < 1e-4, diffs


@pytest.mark.parametrize("extra, what", [({"runner": {"engine": "vllm"}}, "engine vllm"),
                                         ({"runner": {"max_num_workers": 2}}, "worker replicas")])
def test_kvcache_with_vllm_or_workers_is_refused(tmp_path, tiny_model_dir, capsys, extra, what):
    code = main(["run", _cfg(tmp_path, tiny_model_dir, **extra), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and what in err and "quant.kvcache" in err, err[-2000:]
