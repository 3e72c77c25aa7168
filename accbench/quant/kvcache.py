"""KV-cache quantization (llmc's `quant.kvcache`, methods `Naive` and `Kivi`) as a transformers Cache.

The model runs unchanged; what changes is the cache it is given (`past_key_values`): a cache whose layers
round the keys and values they hold onto an integer grid (fake quantization, in float), exactly where llmc's
`NaiveQuantKVCache` / `KiviQuantKVCache` (llmc/compression/quantization/kvquant.py) do:

- `Naive`: the first update of a layer (the prompt, or the first decoded token) stores the keys/values
  quantized and returns them quantized, so the prompt already attends to quantized keys. Each later update
  (one decoded token) returns the stored tokens followed by the new token in full precision, then quantizes
  the whole concatenation again (a dynamic range is recomputed over everything held, as llmc does).
- `Kivi`: the first update stores the keys/values quantized but returns them in full precision. Later tokens
  wait in a full-precision residual; when the residual holds `residual_length - 1` tokens and one more
  arrives, everything held is quantized again and the residual emptied (llmc's rule, default 128).

Quantization follows llmc's integer quantizer on tensors [batch, kv_heads, tokens, head_dim]:
`per_token` is one range per token per head (over head_dim), `per_tensor` one range for the whole tensor,
`per_group` one per `group_size` consecutive values of head_dim (a head_dim smaller than group_size is one
group, as in llmc). Scales and zero points are those of accbench's weight quantizer (quant/quantizer.py, the
same formulas as llmc). `static: true` (llmc sets it from `quant.act.static`; per_tensor, Naive only) uses
one range per layer for keys and one for values, the min and max over every calibration token (the rule
accbench's static activation ranges use), recorded by `calibrate_kv_ranges` on the transformed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from accbench.quant.quantizer import qparams, quant_dequant

KV_METHODS = ("Naive", "Kivi")
KV_GRANULARITIES = ("per_token", "per_tensor", "per_group")
Range = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class KVQuantSpec:
    """How the KV cache is quantized: llmc's kvcache section, validated."""

    method: str = "Naive"
    bit: int = 8
    symmetric: bool = True
    granularity: str = "per_token"
    group_size: int = 128
    residual_length: int = 128  # Kivi: tokens kept in full precision before they are quantized
    static: bool = False

    def __post_init__(self) -> None:
        if self.method not in KV_METHODS:
            raise ValueError(f"unknown kvcache method {self.method!r}; valid: {', '.join(KV_METHODS)}")
        if not 2 <= self.bit <= 16:
            raise ValueError(f"kvcache bit must be 2..16, got {self.bit}")
        if self.granularity not in KV_GRANULARITIES:
            raise ValueError(f"kvcache granularity {self.granularity!r} is not one llmc's KV quantizers take; "
                             f"valid: {', '.join(KV_GRANULARITIES)}")
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError("kvcache per_group needs a positive group_size")
        if self.residual_length < 1:
            raise ValueError("kvcache residual_length must be at least 1")
        if self.static and (self.method != "Naive" or self.granularity != "per_tensor"):
            raise ValueError("static KV-cache quantization (set by quant.act.static) is per_tensor with the Naive "
                             "method (llmc: Kivi is dynamic only)")


def _rows(x: torch.Tensor, spec: KVQuantSpec) -> torch.Tensor:
    if spec.granularity == "per_group" and x.shape[-1] >= spec.group_size:
        if x.shape[-1] % spec.group_size:
            raise ValueError(f"kvcache group_size {spec.group_size} does not divide head_dim {x.shape[-1]}")
        return x.reshape(-1, spec.group_size)
    return x


def fake_quantize_kv(x: torch.Tensor, spec: KVQuantSpec, static_range: Range | None = None) -> torch.Tensor:
    """Keys or values [batch, heads, tokens, head_dim] rounded to `spec` and back, in x's dtype."""
    rows = _rows(x.float(), spec)
    if static_range is not None:
        lo, hi = (t.to(rows.device) for t in static_range)
    elif spec.granularity == "per_tensor":
        lo, hi = rows.min(), rows.max()
    else:
        lo, hi = rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)
    scale, zero = qparams(lo, hi, spec.bit, spec.symmetric)
    return quant_dequant(rows, scale, zero, spec.bit, spec.symmetric).reshape(x.shape).to(x.dtype)


class NaiveQuantLayer(DynamicLayer):
    """One layer of llmc's Naive quantized KV cache: `keys`/`values` hold the fake-quantized tokens."""

    def __init__(self, spec: KVQuantSpec, ranges: tuple[Range, Range] | None = None):
        super().__init__()
        self.spec, self.ranges = spec, ranges

    def _q(self, x: torch.Tensor, which: int) -> torch.Tensor:
        return fake_quantize_kv(x, self.spec, self.ranges[which] if self.ranges is not None else None)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # prefill: stored and returned quantized
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = self._q(key_states, 0), self._q(value_states, 1)
            return self.keys, self.values
        keys = torch.cat([self.keys, key_states], dim=-2)  # the new token attends in full precision
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = self._q(keys, 0), self._q(values, 1)
        return keys, values


class KiviQuantLayer(NaiveQuantLayer):
    """One layer of llmc's Kivi cache: quantized `keys`/`values` plus a full-precision residual."""

    def __init__(self, spec: KVQuantSpec, ranges: tuple[Range, Range] | None = None):
        super().__init__(spec, ranges)
        self.res_keys: torch.Tensor | None = None
        self.res_values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # prefill: stored quantized, returned in full precision
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = self._q(key_states, 0), self._q(value_states, 1)
            return key_states, value_states
        held_k = [self.keys] + ([self.res_keys] if self.res_keys is not None else [])
        held_v = [self.values] + ([self.res_values] if self.res_values is not None else [])
        keys = torch.cat(held_k + [key_states], dim=-2)
        values = torch.cat(held_v + [value_states], dim=-2)
        if self.res_keys is not None and self.res_keys.shape[-2] + 1 >= self.spec.residual_length:
            self.keys, self.values = self._q(keys, 0), self._q(values, 1)
            self.res_keys = self.res_values = None
        elif self.res_keys is None:
            self.res_keys, self.res_values = key_states, value_states
        else:
            self.res_keys = torch.cat([self.res_keys, key_states], dim=-2)
            self.res_values = torch.cat([self.res_values, value_states], dim=-2)
        return keys, values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` of the quantized part and of the full-precision residual (generation)."""
        super().batch_select_indices(indices)
        if self.res_keys is not None and self.res_values is not None:
            self.res_keys, self.res_values = self.res_keys[indices, ...], self.res_values[indices, ...]

    def get_seq_length(self) -> int:
        held = super().get_seq_length()
        return held + (self.res_keys.shape[-2] if self.res_keys is not None else 0)


class RangeRecorderLayer(DynamicLayer):
    """Calibration (static KV quantization): records the min and max of every key and value it is given and
    passes them through unquantized and unstored, as llmc's cache does in calibration mode."""

    def __init__(self, into: list[Range | None]):
        super().__init__()
        self.into = into  # [keys range, values range], updated in place

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        for i, x in enumerate((key_states, value_states)):
            lo, hi = x.detach().min().float().cpu(), x.detach().max().float().cpu()
            old = self.into[i]
            self.into[i] = (lo, hi) if old is None else (torch.minimum(lo, old[0]), torch.maximum(hi, old[1]))
        return key_states, value_states


class LayerwiseCache(Cache):
    """A transformers Cache whose layer i is `make_layer(i)`, created when the model first updates it."""

    def __init__(self, make_layer: Callable[[int], CacheLayerMixin]):
        super().__init__(layers=[])
        self._make_layer = make_layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.layers) <= layer_idx:
            self.layers.append(self._make_layer(len(self.layers)))
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


@dataclass
class KVCacheQuantizer:
    """A KV quantization setting and, when static, its calibrated ranges; `new_cache()` for each sequence."""

    spec: KVQuantSpec
    ranges: dict[int, tuple[Range, Range]] = field(default_factory=dict)  # static: layer -> (keys, values)

    def new_cache(self) -> Cache:
        """A fresh quantized cache (one per evaluated sequence or batch of windows)."""
        layer = KiviQuantLayer if self.spec.method == "Kivi" else NaiveQuantLayer
        if self.spec.static and not self.ranges:
            raise RuntimeError("static KV-cache quantization used before calibrate_kv_ranges ran")

        def make(i: int) -> CacheLayerMixin:
            if self.spec.static and i not in self.ranges:
                raise RuntimeError(f"no calibrated KV range for layer {i}")
            return layer(self.spec, self.ranges.get(i) if self.spec.static else None)

        return LayerwiseCache(make)


def calibrate_kv_ranges(model: Any, batches: list[torch.Tensor], device: str) -> dict[int, tuple[Range, Range]]:
    """Per layer, the min and max of its keys and of its values over every calibration token."""
    found: dict[int, list[Range | None]] = {}

    def make(i: int) -> CacheLayerMixin:
        return RangeRecorderLayer(found.setdefault(i, [None, None]))

    from accbench.evaluate.backends.hf import cache_kwarg

    key = cache_kwarg(model)
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch.to(device), use_cache=True, **{key: LayerwiseCache(make)})
    if not found or any(r[0] is None or r[1] is None for r in found.values()):
        raise RuntimeError("static KV-cache calibration saw no keys/values (no calibration batches?)")
    return {i: (r[0], r[1]) for i, r in found.items()}  # type: ignore[misc]
