"""On the trained built-in model (outlier input channels, see accbench.builtin): Wanda beats magnitude pruning
at 50% unstructured and at 2:4, in perplexity and in KL divergence to the dense model -- the Wanda paper's
central result -- and ShortGPT removes the block of lowest Block Influence. The setting of
tests/test_quant_builtin.py (16 calibration windows of 256 tokens, 48 test windows); numbers pinned below are
the table in docs/sparsity.md (bench/bench_sparse.py prints it). About 30 s on a busy 2-core machine once the built-in model is cached (test_quant_builtin builds it in the
default suite too).
"""

from __future__ import annotations

import copy

import pytest

from test_quant_builtin import _log_probs, _ppl_and_kl, setup  # noqa: F401  (setup: the module fixture)

# (ppl, KL vs the dense model) on 48 windows of the built-in test text
PINNED = {("Magnitude", None): (60.6470, 0.070490), ("Wanda", None): (57.5630, 0.025667),
          ("Magnitude", (2, 4)): (63.7189, 0.102807), ("Wanda", (2, 4)): (59.7186, 0.052645)}


def _sparse(base, spec, batches):
    from accbench.sparse.runner import sparsify_model

    model = copy.deepcopy(base)
    outcome, stats = sparsify_model(model, spec, batches, "cpu")
    return model, outcome, stats


@pytest.mark.parametrize("n_m", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_wanda_beats_magnitude_at_half_sparsity(setup, n_m):  # noqa: F811
    from accbench.sparse.spec import SparseSpec

    model, batches, windows, ref = setup
    got = {}
    for method in ("Magnitude", "Wanda"):
        pruned, _, stats = _sparse(model, SparseSpec(method, 0.5, n_m), batches)
        assert stats.achieved_sparsity == 0.5
        got[method] = _ppl_and_kl(_log_probs(pruned, windows), ref, windows)
    print(f"{n_m or 'unstructured'} (ppl, KL): {got}")
    assert got["Wanda"][0] < got["Magnitude"][0] and got["Wanda"][1] < got["Magnitude"][1], got
    assert got["Wanda"][1] < 0.6 * got["Magnitude"][1], got  # by a wide margin, not noise
    for method, (ppl, kl) in got.items():
        assert ppl == pytest.approx(PINNED[method, n_m][0], rel=2e-3), (method, got)
        assert kl == pytest.approx(PINNED[method, n_m][1], rel=0.03), (method, got)


def test_shortgpt_removes_the_least_influential_block(setup):  # noqa: F811
    """Of the four single-block removals, ShortGPT's pick (lowest BI) is the one that hurts least here."""
    from accbench.sparse.shortgpt import remove_blocks
    from accbench.sparse.spec import SparseSpec

    model, batches, windows, ref = setup
    pruned, outcome, stats = _sparse(model, SparseSpec("ShortGPT", n_prune_layers=1), batches)
    bi = outcome.block_influence
    assert outcome.removed_layers == [min(range(4), key=lambda i: bi[i])] and stats.layers_after == 3
    kl = {}
    for i in range(4):
        m = copy.deepcopy(model)
        remove_blocks(m, m.model.layers, [i])
        kl[i] = _ppl_and_kl(_log_probs(m, windows), ref, windows)[1]
    print(f"BI {bi}, KL when removing each block {kl}")
    assert kl[outcome.removed_layers[0]] == min(kl.values()), (bi, kl)
