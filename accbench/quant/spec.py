"""What a quantization method is given (`QuantSpec`) and what it leaves for the fake-quant step (`QuantState`).

Both are plain data built by the pipeline from the `quant` config section; methods never see the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec

if TYPE_CHECKING:
    from accbench.quant.codes import WeightCodes


@dataclass(frozen=True)
class QuantSpec:
    """Weight (and optional activation) quantization plus the method's `special` options (defaults filled)."""

    method: str
    weight: WeightQuantSpec
    act: ActQuantSpec | None = None
    special: dict[str, Any] = field(default_factory=dict)
    quant_out: bool = False
    clip_tokens: int = 512  # tokens AWQ's clip search samples (llmc: calib.seq_len)
    # llmc's ignored_layers: linears left unquantized (weights and inputs), by block index and name in the
    # block (both must match) or by full module name
    ignored_blocks: frozenset[int] = frozenset()
    ignored_names: frozenset[str] = frozenset()
    ignored_full: frozenset[str] = frozenset()

    def is_ignored(self, prefix: str, block: int, name: str) -> bool:
        """Whether the linear `name` of decoder block `block` (under `prefix`) stays in high precision."""
        return (block in self.ignored_blocks and name in self.ignored_names) or f"{prefix}.{block}.{name}" in self.ignored_full


@dataclass
class QuantState:
    """Per-linear results a method hands to the fake-quant step, keyed by the linear's full module name."""

    clips: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # per-row (lo, hi)
    act_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # static acts
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # AWQ / SmoothQuant scales, by subset
    losses: dict[str, float] = field(default_factory=dict)  # GPTQ's per-layer error, for the log
    # the integer / FP8 codes of every fake-quantized linear, kept only when a real-quant export is asked for
    codes: "dict[str, WeightCodes] | None" = None
