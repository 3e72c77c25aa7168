"""The sparsity methods by config name (`sparse.method`), as a plain dict of what each one does.

A new method is its own file with a `sparsify(model, blocks, inputs, spec, device) -> SparseOutcome` plus one
line here. `calibrated`: the method needs the calibration data's block inputs; `removes_layers`: it deletes
decoder blocks (its target is `weight.n_prune_layers`) instead of zeroing weights (`weight.sparsity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from accbench.sparse import magnitude, shortgpt, wanda


@dataclass(frozen=True)
class SparseMethod:
    sparsify: Callable  # (model, blocks, BlockInputs | None, SparseSpec, device) -> SparseOutcome
    calibrated: bool
    removes_layers: bool = False


SPARSE_METHODS: dict[str, SparseMethod] = {
    "Magnitude": SparseMethod(magnitude.sparsify, calibrated=False),
    "Wanda": SparseMethod(wanda.sparsify, calibrated=True),
    "ShortGPT": SparseMethod(shortgpt.sparsify, calibrated=True, removes_layers=True),
}
