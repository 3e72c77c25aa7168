"""The `sparse` config section (llmc's): the method, its target in `weight`, and `sparsity_out`.

Magnitude and Wanda take `weight.sparsity` (the fraction of weights zeroed) and optionally
`weight.sparsity_type` ("unstructured", llmc's only kind, or "N:M": n non-zeros kept in every m consecutive
weights of a row, e.g. "2:4"); ShortGPT takes `weight.n_prune_layers`. `SparseCfg.spec()` is the plain
`SparseSpec` the sparsifier takes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from accbench.config_sections import Section, suggest

if TYPE_CHECKING:
    from accbench.sparse.spec import SparseSpec

# the names of accbench/sparse/methods.py: SPARSE_METHODS (kept here so reading a config imports no torch; a
# test keeps them equal), those that need calibration data, those that remove layers
SPARSE_METHODS = ("Magnitude", "Wanda", "ShortGPT")
_CALIBRATED = ("Wanda", "ShortGPT")
_LAYER_METHODS = ("ShortGPT",)


class SparseWeightCfg(Section):
    sparsity: float | None = Field(None, ge=0, lt=1)
    sparsity_type: str = "unstructured"
    n_prune_layers: int | None = Field(None, ge=1)

    @field_validator("sparsity_type", mode="before")
    @classmethod
    def _sexagesimal(cls, v: object) -> object:
        """YAML 1.1 reads an unquoted 2:4 as the base-60 number 124 (2 x 60 + 4): read it back as 2:4."""
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return f"{v // 60}:{v % 60}"
        return v

    @field_validator("sparsity_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v == "unstructured":
            return v
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", v)
        if m is None or not 0 < int(m[1]) < int(m[2]):
            raise ValueError(f"sparsity_type '{v}' is neither 'unstructured' nor 'N:M' with 0 < N < M (e.g. '2:4': "
                             "two non-zeros kept in every four consecutive weights of a row)")
        return f"{int(m[1])}:{int(m[2])}"

    def n_m(self) -> tuple[int, int] | None:
        if self.sparsity_type == "unstructured":
            return None
        n, m = self.sparsity_type.split(":")
        return int(n), int(m)


class SparseCfg(Section):
    method: str
    weight: SparseWeightCfg = Field(default_factory=SparseWeightCfg)
    sparsity_out: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        canon = {m.lower(): m for m in SPARSE_METHODS}.get(v.lower())
        if canon is None:
            raise ValueError(f"unknown sparse method '{v}'{suggest(v, SPARSE_METHODS)}; "
                             f"supported: {', '.join(SPARSE_METHODS)}")
        return canon

    @model_validator(mode="after")
    def _target(self) -> "SparseCfg":
        w = self.weight
        if self.method in _LAYER_METHODS:
            if w.n_prune_layers is None:
                raise ValueError(f"sparse method {self.method} removes whole layers: set weight.n_prune_layers "
                                 "(how many decoder blocks to remove)")
            if w.sparsity is not None or w.sparsity_type != "unstructured":
                raise ValueError(f"sparse method {self.method} removes whole layers; weight.sparsity and "
                                 "weight.sparsity_type are for Magnitude and Wanda")
            return self
        if w.n_prune_layers is not None:
            raise ValueError(f"weight.n_prune_layers is ShortGPT's; {self.method} takes weight.sparsity")
        nm = w.n_m()
        if nm is None and w.sparsity is None:
            raise ValueError(f"sparse method {self.method} needs weight.sparsity (the fraction of weights to zero, "
                             "e.g. 0.5) or weight.sparsity_type 'N:M' (e.g. '2:4')")
        if nm is not None and w.sparsity is not None and abs(w.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ValueError(f"weight.sparsity {w.sparsity} contradicts sparsity_type {w.sparsity_type}, which keeps "
                             f"{nm[0]} of every {nm[1]} weights (sparsity {1 - nm[0] / nm[1]:g}); drop weight.sparsity "
                             "or make them agree")
        return self

    def needs_calibration(self) -> bool:
        return self.method in _CALIBRATED

    def target_sparsity(self) -> float | None:
        """The fraction of weights zeroed (Magnitude, Wanda); None for layer removal."""
        nm = self.weight.n_m()
        if self.method in _LAYER_METHODS:
            return None
        return 1 - nm[0] / nm[1] if nm is not None else self.weight.sparsity

    def spec(self) -> "SparseSpec":
        from accbench.sparse.spec import SparseSpec

        return SparseSpec(self.method, self.target_sparsity() or 0.0, self.weight.n_m(),
                          self.weight.n_prune_layers or 0, self.sparsity_out)
