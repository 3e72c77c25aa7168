"""What a quantization method is given (`QuantSpec`) and what it leaves for the fake-quant step (`QuantState`).

Both are plain data built by the pipeline from the `quant` config section; methods never see the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from accbench.quant.mixbits import MixSetting, setting_for
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
    mix_bits: tuple[MixSetting, ...] = ()  # llmc's quant.mix_bits settings, in order (quant/mixbits.py)

    def is_ignored(self, prefix: str, block: int, name: str) -> bool:
        """Whether the linear `name` of decoder block `block` (under `prefix`) stays in high precision."""
        return (block in self.ignored_blocks and name in self.ignored_names) or f"{prefix}.{block}.{name}" in self.ignored_full

    def mix_setting(self, block_prefix: str, name: str) -> MixSetting | None:
        """The mix_bits setting of linear `name` in the block at `block_prefix` ('model.layers.3.'), if any."""
        if not self.mix_bits:
            return None
        return setting_for(self.mix_bits, _split(block_prefix)[1], name)

    def mix_weight(self, block_prefix: str, name: str) -> WeightQuantSpec | None:
        """The weight spec mix_bits gives linear `name` (quant.weight when no setting names it); None: float.
        AWQ's searches use this one: llmc applies ignored_layers only when it fake-quantizes."""
        mix = self.mix_setting(block_prefix, name)
        if mix is None:
            return self.weight
        return mix.weight if mix.do_quant else None

    def mix_act(self, block_prefix: str, name: str) -> ActQuantSpec | None:
        """The act spec mix_bits gives linear `name`'s input (quant.act when no setting names it); None: none."""
        mix = self.mix_setting(block_prefix, name)
        if mix is None:
            return self.act
        return mix.act if mix.do_quant else None

    def weight_for(self, block_prefix: str, name: str) -> WeightQuantSpec | None:
        """How linear `name` of the block at `block_prefix` rounds its weights; None: it stays in float
        (ignored_layers, or a mix_bits setting with do_quant: false)."""
        prefix, block = _split(block_prefix)
        return None if self.is_ignored(prefix, block, name) else self.mix_weight(block_prefix, name)

    def act_for(self, block_prefix: str, name: str) -> ActQuantSpec | None:
        """How the input of linear `name` of the block at `block_prefix` is quantized; None: not at all."""
        prefix, block = _split(block_prefix)
        return None if self.is_ignored(prefix, block, name) else self.mix_act(block_prefix, name)

    def static_acts(self) -> list[ActQuantSpec]:
        """Every activation spec in use that needs calibrated ranges."""
        acts = [self.act] + [m.act for m in self.mix_bits if m.do_quant]
        return [a for a in acts if a is not None and a.static]


def _split(block_prefix: str) -> tuple[str, int]:
    """'model.layers.3.' -> ('model.layers', 3)."""
    prefix, _, idx = block_prefix.rstrip(".").rpartition(".")
    return prefix, int(idx)


@dataclass
class QuantState:
    """Per-linear results a method hands to the fake-quant step, keyed by the linear's full module name."""

    clips: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # per-row (lo, hi)
    act_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # static acts
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # AWQ / SmoothQuant scales, by subset
    losses: dict[str, float] = field(default_factory=dict)  # GPTQ's per-layer error, for the log
    epoch_losses: dict[str, list[float]] = field(default_factory=dict)  # OmniQuant: per block, mean loss per epoch
    fp_hidden: list[torch.Tensor] | None = None  # OmniQuant: the float model's inputs of the current block
    # the integer / FP8 codes of every fake-quantized linear, kept only when a real-quant export is asked for
    codes: "dict[str, WeightCodes] | None" = None
