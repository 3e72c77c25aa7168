"""Fidelity (KL to the baseline, top-1 agreement, Δp): the math against direct torch computations, the
recording on disk, the pipeline and CLI wiring, and the ordering of quantizers (once accbench.quant exists)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from accbench.errors import AccbenchError
from accbench.evaluate.fidelity import (DistributionRecorder, FidelityComparer, compare_recordings, read_recording,
                                        recording_dir, score_logprobs, summarize_logprobs, tail_logmass)
from accbench.evaluate.perplexity import perplexity

META = {"position": "pretrain", "dataset": "toy", "seq_len": 9}


def _logits(n: int, vocab: int, scale: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, vocab, generator=g) * scale
    return base, base + torch.randn(n, vocab, generator=g)


def _exact_kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) per row over the full vocabulary, in float64, with torch's own kl_div."""
    lp, lq = lp.double().log_softmax(-1), lq.double().log_softmax(-1)
    return torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)


def _direct_bucketed_kl(lp: torch.Tensor, lq: torch.Tensor, k: int) -> torch.Tensor:
    """The tail-bucket KL written out token by token: P's top-k tokens individually, the rest summed."""
    p, q = lp.double().softmax(-1), lq.double().softmax(-1)
    out = []
    for pi, qi in zip(p, q):
        top = torch.topk(pi, k).indices
        rest = torch.ones_like(pi, dtype=torch.bool)
        rest[top] = False
        kl = (pi[top] * (pi[top].log() - qi[top].log())).sum()
        if rest.any():
            kl += pi[rest].sum() * (pi[rest].sum().log() - qi[rest].sum().log())
        out.append(kl)
    return torch.stack(out)


def _score(lp: torch.Tensor, lq: torch.Tensor, k: int) -> torch.Tensor:
    """Bucketed KL from float32 log-probs, without storage (no float16 rounding)."""
    labels = torch.zeros(lp.shape[0], dtype=torch.long)
    s = summarize_logprobs(lp.log_softmax(-1), labels, k)
    return score_logprobs(lq.log_softmax(-1), labels, s["top_logp"], s["top_idx"], s["tail_logp"])["kl"]


def _record(path: Path, lp: torch.Tensor, labels: torch.Tensor, k: int, chunk: int = 37) -> Path:
    rec = DistributionRecorder(path, lp.shape[0], k, META)
    for s in range(0, lp.shape[0], chunk):
        rec(s, lp[s : s + chunk].log_softmax(-1), labels[s : s + chunk])
    return rec.finish()


# ----------------------------------------------------------------------------- the math


@pytest.mark.parametrize("vocab,k", [(5, 1), (7, 3), (11, 10), (32, 8)])
def test_bucketed_kl_equals_direct_computation(vocab, k):
    lp, lq = _logits(40, vocab)
    torch.testing.assert_close(_score(lp, lq, k), _direct_bucketed_kl(lp, lq, k), rtol=1e-5, atol=1e-6)


def test_top_k_equal_to_vocabulary_is_the_exact_kl(tmp_path):
    lp, lq = _logits(64, 23)
    exact = _exact_kl(lp, lq)
    torch.testing.assert_close(_score(lp, lq, 23), exact, rtol=1e-5, atol=1e-6)
    # through the float16 recording on disk: the storage rounding stays below 1e-3 relative
    labels = torch.randint(0, 23, (64,), generator=torch.Generator().manual_seed(1))
    cmp = FidelityComparer(_record(tmp_path / "rec", lp, labels, 64))  # k capped at the vocabulary
    cmp(0, lq.log_softmax(-1), labels)
    e = cmp.entry("model")
    assert e.top_k == 23 and e.tail_mass_mean == 0.0
    assert e.kld_mean == pytest.approx(exact.mean().item(), rel=1e-3)
    assert e.top1_agreement == pytest.approx((lp.argmax(-1) == lq.argmax(-1)).double().mean().item())
    p_y = lp.log_softmax(-1).gather(1, labels[:, None]).exp().squeeze(1).double()
    q_y = lq.log_softmax(-1).gather(1, labels[:, None]).exp().squeeze(1).double()
    assert e.delta_p_mean == pytest.approx((q_y - p_y).mean().item(), abs=1e-6)
    assert e.delta_p_rms == pytest.approx((q_y - p_y).pow(2).mean().sqrt().item(), rel=1e-5)
    nll = lambda x: torch.nn.functional.cross_entropy(x.double(), labels).item()  # noqa: E731
    assert e.ppl_ratio == pytest.approx(math.exp(nll(lq) - nll(lp)), rel=1e-6)


@pytest.mark.parametrize("k", [1, 4, 16, 60])
def test_tail_bucket_error_is_within_the_documented_bound(k):
    """docs/fidelity.md: 0 <= KL - KL_bucket = p_T KL(P_T‖Q_T) <= p_T log(p_k q_T / (p_T min_tail q))."""
    lp, lq = _logits(200, 64, scale=2.0, seed=3)
    gap = _exact_kl(lp, lq) - _score(lp, lq, k)
    p, q = lp.double().softmax(-1), lq.double().softmax(-1)
    top = torch.topk(p, k, -1).indices
    tail = torch.ones_like(p, dtype=torch.bool).scatter(1, top, False)
    p_t, q_t = (p * tail).sum(-1), (q * tail).sum(-1)
    p_k = p.gather(1, top[:, -1:]).squeeze(1)
    q_min = torch.where(tail, q, torch.ones_like(q)).min(-1).values
    pt, qt = p / p_t[:, None], q / q_t[:, None]  # the conditional tail distributions P_T, Q_T
    identity = p_t * torch.where(tail, pt * (pt.log() - qt.log()), torch.zeros_like(p)).sum(-1)
    bound = p_t * torch.log(p_k * q_t / (p_t * q_min))
    assert (gap >= -1e-6).all()
    torch.testing.assert_close(gap, identity, rtol=1e-4, atol=1e-6)
    assert (gap <= bound + 1e-6).all()
    assert gap.mean() > 0.01 * (k < 60)  # the bound is not trivially met by a zero gap


def test_tail_mass_is_summed_directly_when_tiny():
    # a very confident row: 1 - sum(top-k) would cancel to 0 in float arithmetic
    logp = torch.tensor([[40.0, 0.0, 0.0, 0.0, -1.0]]).log_softmax(-1)
    idx = torch.tensor([[0]])
    tail = tail_logmass(logp, idx, logp.gather(1, idx))
    expected = torch.logsumexp(logp[0, 1:].double(), 0)
    assert tail.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="expects log-probabilities"):
        tail_logmass(logp + 1, idx, logp.gather(1, idx) + 1)


def test_argmax_is_torchs_first_maximum_also_from_the_top_k():
    logp = torch.tensor([[0.0, 2.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 3.0, 0.0]]).log_softmax(-1)
    for k in (1, 2, 4):
        s = summarize_logprobs(logp, torch.zeros(3, dtype=torch.long), k)
        assert s["argmax"].tolist() == logp.argmax(-1).tolist() == [1, 0, 0]
        sc = score_logprobs(logp, torch.zeros(3, dtype=torch.long), s["top_logp"], s["top_idx"], s["tail_logp"])
        assert sc["argmax"].tolist() == [1, 0, 0]


# ----------------------------------------------------------------------------- recording on disk


def test_recording_is_compact_and_complete(tmp_path):
    lp, _ = _logits(50, 300)
    labels = torch.randint(0, 300, (50,), generator=torch.Generator().manual_seed(2))
    path = _record(tmp_path / "rec", lp, labels, 8)
    meta, arr = read_recording(path)
    assert meta == {"format": "accbench-fidelity/1", **META, "tokens": 50, "top_k": 8, "vocab_size": 300}
    assert arr["top_logp"].dtype == np.float16 and arr["top_logp"].shape == (50, 8)
    assert arr["top_idx"].dtype == np.uint16  # vocabularies up to 65536 need 2 bytes an index
    assert np.array_equal(arr["labels"], labels.numpy())
    assert np.array_equal(arr["argmax"], lp.argmax(-1).numpy())
    assert np.array_equal(np.sort(arr["top_idx"], 1), np.sort(torch.topk(lp, 8).indices.numpy(), 1))
    assert not (tmp_path / "rec.tmp").exists()


def test_unfinished_recording_is_refused(tmp_path):
    lp, _ = _logits(10, 20)
    rec = DistributionRecorder(tmp_path / "rec", 20, 4, META)  # expects 20 tokens, gets 10
    rec(0, lp.log_softmax(-1), torch.zeros(10, dtype=torch.long))
    with pytest.raises(AccbenchError, match="got 10 tokens, expected 20"):
        rec.finish()
    with pytest.raises(AccbenchError, match="no finished fidelity recording"):
        FidelityComparer(tmp_path / "rec")


def test_comparer_refuses_other_windows(tmp_path):
    lp, lq = _logits(30, 20)
    labels = torch.zeros(30, dtype=torch.long)
    cmp = FidelityComparer(_record(tmp_path / "rec", lp, labels, 4))
    with pytest.raises(AccbenchError, match="does not match the baseline recording"):
        cmp(0, lq.log_softmax(-1), labels + 1)
    cmp(0, lq[:10].log_softmax(-1), labels[:10])
    with pytest.raises(AccbenchError, match="covered 10 of the 30"):
        cmp.entry("model")


def test_compare_recordings_is_a_lower_bound_with_exact_agreement(tmp_path):
    lp, lq = _logits(120, 40, scale=2.0, seed=5)
    labels = torch.randint(0, 40, (120,), generator=torch.Generator().manual_seed(6))
    for k in (6, 40):
        a = _record(tmp_path / f"a{k}", lp, labels, k)
        b = _record(tmp_path / f"b{k}", lq, labels, k)
        cmp = FidelityComparer(a)
        cmp(0, lq.log_softmax(-1), labels)
        in_pass, from_files = cmp.entry("model"), compare_recordings(a, b)
        assert from_files.top1_agreement == in_pass.top1_agreement
        assert from_files.delta_p_mean == pytest.approx(in_pass.delta_p_mean, abs=1e-7)
        assert from_files.ppl_ratio == pytest.approx(in_pass.ppl_ratio, rel=1e-6)
        exact = _exact_kl(lp, lq).mean().item()
        # lower bounds of the exact KL, the files' partition being the coarser (up to float16 rounding)
        assert from_files.kld_mean <= in_pass.kld_mean * (1 + 1e-4) and in_pass.kld_mean <= exact * (1 + 1e-4)
        if k == 40:  # both recordings hold the whole vocabulary: nothing is bucketed
            assert from_files.kld_mean == pytest.approx(exact, rel=2e-3)
        else:
            assert from_files.kld_mean > 0.3 * exact
        same = compare_recordings(a, a)
        assert same.kld_mean < 1e-12 and same.top1_agreement == 1.0 and same.ppl_ratio == 1.0


def test_compare_recordings_refuses_other_windows(tmp_path):
    lp, _ = _logits(20, 10)
    a = _record(tmp_path / "a", lp, torch.zeros(20, dtype=torch.long), 3)
    b = _record(tmp_path / "b", lp, torch.ones(20, dtype=torch.long), 3)
    with pytest.raises(AccbenchError, match="not on the same token windows"):
        compare_recordings(a, b)


# ----------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, eval_txt):
    from accbench.models import load_model

    loaded = load_model(str(tiny_model_dir), "float32", device="cpu")
    stream = loaded.tokenizer(eval_txt.read_text(), return_tensors="pt").input_ids[0]
    return loaded, stream


def _noisy(model, sigma: float):
    from accbench.models import find_parts

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    w = find_parts(m).blocks[0].mlp.down_proj.weight
    with torch.no_grad():
        w += sigma * w.std() * torch.randn(w.shape, generator=g)
    return m


def _fidelity(model, stream, path: Path):
    cmp = FidelityComparer(path)
    perplexity(model, stream, 64, bs=2, max_windows=6, on_logits=cmp, progress=False)
    return cmp.entry("model")


@pytest.fixture(scope="module")
def baseline_recording(tiny, tmp_path_factory):
    loaded, stream = tiny
    path = tmp_path_factory.mktemp("fid") / "rec"
    rec = DistributionRecorder(path, 6 * 63, 64, META)
    perplexity(loaded.model, stream, 64, bs=2, max_windows=6, on_logits=rec, progress=False)
    return rec.finish()


def test_identical_model_has_zero_kl_and_full_agreement(tiny, baseline_recording):
    loaded, stream = tiny
    e = _fidelity(loaded.model, stream, baseline_recording)
    assert e.tokens == 6 * 63
    assert e.kld_mean < 1e-6 and e.kld_p99 < 1e-5  # float16 storage rounding only
    assert e.top1_agreement == 1.0 and e.delta_p_mean == 0.0 and e.delta_p_rms == 0.0 and e.ppl_ratio == 1.0
    assert sum(e.kld_hist["counts"]) == e.tokens


def test_kl_grows_with_noise_in_one_layer(tiny, baseline_recording):
    loaded, stream = tiny
    entries = [_fidelity(_noisy(loaded.model, s), stream, baseline_recording) for s in (1.0, 3.0, 10.0)]
    kls = [e.kld_mean for e in entries]
    assert 1e-5 < kls[0] < kls[1] < kls[2], kls
    assert 5 < kls[1] / kls[0] < 15  # small perturbations: KL ~ sigma^2 (9x for 3x the noise)
    assert all(e.kld_stderr > 0 and e.kld_median <= e.kld_p99 <= e.kld_max for e in entries)
    assert entries[0].top1_agreement >= entries[2].top1_agreement
    assert entries[2].top1_agreement < 1.0


# ----------------------------------------------------------------------------- pipeline and CLI


def _config(tmp_path: Path, model: Path, data: Path, eval_pos: str, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
model: {{path: {model}, torch_dtype: float32, device: cpu}}
eval:
  name: custom
  path: {data}
  eval_pos: {eval_pos}
  seq_len: 64
  bs: 2
  num_samples: 5
  fidelity: {{top_k: 16}}
{extra}""")
    return cfg


def test_cli_records_the_baseline(tmp_path, tiny_model_dir, eval_txt, capsys):
    from accbench.cli import main

    run = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, tiny_model_dir, eval_txt, "[pretrain]")), "-o", str(run)]) == 0
    meta, arr = read_recording(recording_dir(run, "custom", 64))
    assert meta["position"] == "pretrain" and meta["tokens"] == 5 * 63 and meta["top_k"] == 16
    assert arr["top_logp"].shape == (5 * 63, 16)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "complete" and results["fidelity"] == []  # nothing to compare yet
    # a second run of the same model records the same distributions: fidelity between runs is perfect
    run2 = tmp_path / "run2"
    assert main(["run", str(_config(tmp_path, tiny_model_dir, eval_txt, "[pretrain]")), "-o", str(run2)]) == 0
    e = compare_recordings(recording_dir(run, "custom", 64), recording_dir(run2, "custom", 64))
    assert e.kld_mean == 0.0 and e.top1_agreement == 1.0 and e.tokens == 5 * 63


def test_pipeline_compares_a_second_position(tmp_path, tiny, tiny_model_dir, eval_txt):
    """Two positions through evaluate_position (the second one a perturbed model, until quantizers exist)."""
    from rich.console import Console

    from accbench.config import load_config
    from accbench.models import LoadedModel
    from accbench.pipeline import RunContext, baseline_position, evaluate_position, prepare_eval_data
    from accbench.results import Results

    loaded, _ = tiny
    cfg = load_config(_config(tmp_path, tiny_model_dir, eval_txt, "[pretrain, fake_quant]",
                              "quant: {method: RTN, weight: {bit: 3}}"))
    run = tmp_path / "run"
    run.mkdir()
    console = Console(record=True, width=200)
    ctx = RunContext(cfg, run, Results(), console, baseline=baseline_position(cfg))
    assert ctx.baseline == "pretrain"
    ctx.evals = [prepare_eval_data(e, loaded.tokenizer) for e in cfg.eval]
    evaluate_position(ctx, "pretrain", loaded)
    noisy = LoadedModel(_noisy(loaded.model, 10.0), loaded.tokenizer, loaded.path, "cpu", "single")
    evaluate_position(ctx, "fake_quant", noisy)
    (f,) = Results.load(run).fidelity
    assert f.position == "fake_quant" and f.baseline == "pretrain" and f.dataset == "custom" and f.top_k == 16
    assert f.tokens == 5 * 63 and f.kld_mean > 1e-4 and 0 < f.top1_agreement < 1
    ppl = {p.position: p.ppl for p in ctx.results.ppl}
    assert f.ppl_ratio == pytest.approx(ppl["fake_quant"] / ppl["pretrain"], rel=1e-5)
    assert "fake_quant custom: KL vs pretrain" in console.export_text()
    # resume: nothing is recomputed, nothing duplicated
    evaluate_position(ctx, "fake_quant", noisy)
    assert len(ctx.results.fidelity) == 1 and len(ctx.results.ppl) == 2


def test_position_before_its_baseline_is_skipped_then_completed(tmp_path, tiny, tiny_model_dir, eval_txt):
    from rich.console import Console

    from accbench.config import load_config
    from accbench.models import LoadedModel
    from accbench.pipeline import RunContext, evaluate_position, prepare_eval_data
    from accbench.results import Results

    loaded, _ = tiny
    cfg = load_config(_config(tmp_path, tiny_model_dir, eval_txt, "[pretrain, fake_quant]",
                              "quant: {method: RTN, weight: {bit: 3}}"))
    console = Console(record=True, width=200)
    ctx = RunContext(cfg, tmp_path, Results(), console)
    ctx.evals = [prepare_eval_data(e, loaded.tokenizer) for e in cfg.eval]
    noisy = LoadedModel(_noisy(loaded.model, 10.0), loaded.tokenizer, loaded.path, "cpu", "single")
    evaluate_position(ctx, "fake_quant", noisy)
    assert "fidelity skipped at fake_quant custom" in console.export_text() and ctx.results.fidelity == []
    evaluate_position(ctx, "pretrain", loaded)
    evaluate_position(ctx, "fake_quant", noisy)  # ppl is kept, the pass reruns for fidelity only
    assert [p.position for p in ctx.results.ppl] == ["fake_quant", "pretrain"]
    assert [f.position for f in ctx.results.fidelity] == ["fake_quant"]


def test_baseline_position_of_training_runs(tiny_model_dir):
    from accbench.config import validate_config
    from accbench.pipeline import baseline_position

    base = {"model": {"path": str(tiny_model_dir)},
            "train": {"dataset": {"name": "builtin:pydoc"}, "variants": {"plain": {}, "compiled": {}}}}
    assert baseline_position(validate_config(base, "x", "")) == "plain"
    assert baseline_position(validate_config({**base, "compare": {"baseline": "compiled"}}, "x", "")) == "compiled"


# ----------------------------------------------------------------------------- quantizers (once merged)


@pytest.mark.slow  # ~3-5 min on 2 CPU cores: builds the built-in model once, then two quantized runs
def test_rtn_w3_diverges_more_than_gptq_w3(tmp_path):
    pytest.importorskip("accbench.quant.gptq")
    from accbench.cli import main
    from accbench.results import Results

    kld = {}
    for method in ("RTN", "GPTQ"):
        cfg = tmp_path / f"{method}.yaml"
        cfg.write_text(f"""
model: {{path: "builtin:tiny-llama", torch_dtype: float32, device: cpu}}
calib: {{name: "builtin:pydoc", n_samples: 32, seq_len: 256}}
eval: {{name: "builtin:pydoc", eval_pos: [pretrain, fake_quant], seq_len: 256, bs: 4, fidelity: true}}
quant: {{method: {method}, weight: {{bit: 3, group_size: 128}}}}
""")
        assert main(["run", str(cfg), "-o", str(tmp_path / method)]) == 0
        (f,) = Results.load(tmp_path / method).fidelity
        kld[method] = f.kld_mean
    assert kld["RTN"] > kld["GPTQ"] > 0, kld


@pytest.mark.parametrize("vocab,k", [(100, 7), (3000, 64), (9000, 64), (40, 40)])
def test_top_k_rows_is_torch_topk(vocab, k):
    from accbench.evaluate.fidelity import top_k_rows

    x = torch.randn(50, vocab, generator=torch.Generator().manual_seed(vocab))
    x[0, :5] = 9.0  # ties inside the top k
    x[1, : k + 3] = 20.0  # ties across the k-th value
    values, idx = top_k_rows(x, k)
    ref = torch.topk(x, k, -1)
    assert torch.equal(values.sort(-1, descending=True).values, ref.values) and torch.equal(x.gather(1, idx), values)
    assert all(len(set(row.tolist())) == k for row in idx)
