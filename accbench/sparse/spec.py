"""What a sparsity method is given (`SparseSpec`) and what it hands back (`SparseOutcome`).

Plain data built by the pipeline from the `sparse` config section; methods never see the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SparseSpec:
    """One sparsification: the method and its target.

    Weight pruning (Magnitude, Wanda): `sparsity` is the fraction of weights set to zero in every decoder-block
    linear; with `n_m = (n, m)` every group of m consecutive weights along a row (the input dimension) keeps
    exactly its n best and `sparsity` is 1 - n/m. Layer removal (ShortGPT): `n_prune_layers` decoder blocks go.
    `sparsity_out`: each next block is calibrated on this block's pruned outputs (llmc), not its dense ones.
    """

    method: str
    sparsity: float = 0.0
    n_m: tuple[int, int] | None = None
    n_prune_layers: int = 0
    sparsity_out: bool = False

    @property
    def pattern(self) -> str:
        """"layers" (whole blocks removed), "unstructured", or "N:M"."""
        if self.n_prune_layers:
            return "layers"
        return "unstructured" if self.n_m is None else f"{self.n_m[0]}:{self.n_m[1]}"


@dataclass
class SparseOutcome:
    """What a method reports beyond the weights it changed: ShortGPT's Block Influence of every original block
    and the blocks it removed (indices in the original model)."""

    block_influence: list[float] = field(default_factory=list)
    removed_layers: list[int] = field(default_factory=list)
