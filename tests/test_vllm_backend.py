"""The vLLM backend gives the HF backend's numbers (float32, the same requests): identical greedy generations,
log-likelihoods within 1e-4, the same truncations; seeded sampling that does not depend on the batch.

Runs only inside the environment .ci/vllm_env.sh builds (`-m vllm`; .ci/run does it): one vLLM engine for the
whole module (its start-up takes 30-80 s on CPU).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm


def _texts() -> list[str]:
    import pydoc_data.topics as t

    return [t.topics[k] for k in sorted(t.topics)]


@pytest.fixture(scope="module")
def engines(vllm_model_dir):
    pytest.importorskip("vllm", reason="the vLLM tests run inside the environment .ci/vllm_env.sh builds")
    from accbench.evaluate.backends import create_backend
    from accbench.models import load_model

    loaded = load_model(str(vllm_model_dir), "float32")
    vllm_backend = create_backend(loaded, name="vllm")
    yield create_backend(loaded), vllm_backend
    vllm_backend.release()


def _score_requests():
    from accbench.evaluate.requests import ScoreRequest

    texts = _texts()
    reqs = [ScoreRequest("x = 1", " + 2"), ScoreRequest("x = 1", " + 2 * 3"), ScoreRequest("", "import os"),
            ScoreRequest("The class keyword ", "defines a class"), ScoreRequest("def f(a, b):\n    return", " a")]
    reqs += [ScoreRequest(t[:200], t[200:260]) for t in texts[:24]]
    # contexts longer than the 256-token window: cut from the left, and one that fills the window + 1 exactly
    reqs += [ScoreRequest(t[:3000], t[3000:3040]) for t in texts if len(t) > 3100][:6]
    return reqs


def test_log_likelihoods_match_hf(engines):
    hf, vl = engines
    reqs = _score_requests()
    a, b = hf.score(reqs), vl.score(reqs)
    assert hf.last_truncated == vl.last_truncated and len(vl.last_truncated) >= 3
    worst = max(abs(x - y) for (x, _), (y, _) in zip(a, b))
    assert worst < 1e-4, worst
    assert [g for _, g in a] == [g for _, g in b]
    # a pair of exactly window + 1 tokens runs in the window (its last token is the pinned generated one)
    ctx, cont = hf.encode_pair(reqs[-1].context, reqs[-1].continuation)
    n = hf.max_length + 1 - len(cont)
    exact = [(ctx[-n:], cont)]
    assert hf.score_tokens(exact)[0][0] == pytest.approx(vl.score_tokens(exact)[0][0], abs=1e-4)


def test_rolling_and_window_losses_match_hf(engines, tmp_path):
    from accbench.evaluate.requests import RollingRequest, WindowLossRequest

    hf, vl = engines
    texts = _texts()
    reqs = [RollingRequest(t) for t in texts[:8]] + [RollingRequest("\n\n".join(texts[:3]))]
    n_tokens = [len(hf.tok_encode(r.text)) for r in reqs]
    assert max(n_tokens) > 3 * hf.max_length  # several windows
    for x, y, n in zip(hf.score_rolling(reqs), vl.score_rolling(reqs), n_tokens):
        assert abs(x - y) / n < 1e-6 and abs(x - y) < 1e-4 * max(1, n / 100), (x, y, n)
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(texts[:10]))
    w = WindowLossRequest("t", str(path), 128, 1, 6)
    a, b = hf.window_losses(w), vl.window_losses(w)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_greedy_generations_identical_to_hf(engines):
    from accbench.evaluate.requests import GenerateRequest

    hf, vl = engines
    texts = _texts()
    reqs = [GenerateRequest(t[:120 + 7 * i], max_new_tokens=16 + 4 * (i % 5), stop=("\n\n",) if i % 2 else ())
            for i, t in enumerate(texts[:32])]
    reqs.append(GenerateRequest(texts[0] * 20, max_new_tokens=24))  # cut from the left to leave room
    a, b = hf.generate(reqs), vl.generate(reqs)
    assert a == b
    assert hf.last_truncated == vl.last_truncated == [len(reqs) - 1]
    assert sum(len(x) for x in b) > 500  # they said something


def test_stop_strings_cut_as_hf(engines):
    from accbench.evaluate.requests import GenerateRequest

    hf, vl = engines
    free = vl.generate([GenerateRequest("import os", max_new_tokens=40)])[0]
    stop = free[5:7]  # a string the model does produce, so the stop fires
    req = GenerateRequest("import os", max_new_tokens=40, stop=(stop,))
    got = vl.generate([req])[0]
    assert got == free[: free.find(stop)] == hf.generate([req])[0]


def test_sampling_is_seeded_per_request(engines):
    from accbench.evaluate.requests import GenerateRequest

    _, vl = engines
    reqs = [GenerateRequest("The module", max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=50, seed=s)
            for s in (1, 2, 3, 1)]
    a = vl.generate(reqs)
    b = vl.generate(reqs[::-1])[::-1]
    assert a == b  # the batch it runs in does not change a sample
    assert a[0] == a[3] and len({a[0], a[1], a[2]}) == 3
    greedy = vl.generate([GenerateRequest("The module", max_new_tokens=24)])[0]
    assert greedy not in a[:3]
