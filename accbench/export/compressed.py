"""Write a quantized model as a compressed-tensors checkpoint (what vLLM, SGLang and transformers load natively).

The checkpoint holds the codes the method rounded to (quant/codes.py), never a second rounding: the integer
grid, scales and zero points are the ones `fake_quant` was evaluated with, so the checkpoint dequantizes to
the fake-quant weights bit for bit. The weight scales are values of the model's dtype (fake quantization holds
them there, quant/scale_dtype.py), stored in float32: a loader that keeps them in float32 (transformers >= 5.20)
and one that holds them in the model's dtype (vLLM's WNA16 kernels, transformers < 5.20) dequantize alike.

Layouts (compressed-tensors' names; `config.json: quantization_config` describes them):
- `pack-quantized` (W4A16 / W8A16, integer weights without activation quantization): `weight_packed` (int32,
  32 values of b bits in b words), `weight_scale`, `weight_shape`, and for asymmetric weights a packed
  `weight_zero_point`; per_group (`strategy: group`), per_channel (`channel`) or per_tensor.
- `int-quantized` (W8A8 int8): `weight` int8, `weight_scale` (and `weight_zero_point`), activations int8
  per token (dynamic) or per tensor (dynamic, or static with `input_scale` / `input_zero_point`).
- `float-quantized` (FP8 e4m3 weights, per channel or per tensor; activations FP8 or none).
llmc's integer range 0..2^b-1 of asymmetric weights is compressed-tensors' signed range shifted by 2^(b-1)
(codes and zero points both), which leaves q - zero, and so the weight, unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from accbench.errors import AccbenchError
from accbench.quant.codes import WeightCodes
from accbench.quant.floats import float_scale
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, qparams, signed_offset

PACK, INT, FLOAT = "pack-quantized", "int-quantized", "float-quantized"
STRATEGY = {"per_group": "group", "per_channel": "channel", "per_tensor": "tensor", "per_token": "token"}
VLLM_PACK_BITS = (4, 8)  # vLLM's compressed-tensors WNA16 kernels


# the methods that hand over their codes: RTN, AWQ, SmoothQuant, OmniQuant and QuaRot round in rtn.quantize_block
# (AWQ's and OmniQuant's clip ranges; SmoothQuant's and OmniQuant's LET scales and QuaRot's rotation folded into
# the weights before), GPTQ and HQQ (round_zp: true, axis: 1) hand over their own grids
EXPORTABLE_METHODS = ("RTN", "Awq", "GPTQ", "SmoothQuant", "OmniQuant", "Quarot", "HQQ")
# methods whose results no compressed-tensors checkpoint holds, with the reason
NOT_EXPORTABLE = {
    "LlmInt8": "LLM.int8() keeps the input columns whose activations reach `threshold` in full precision and "
               "rounds the other columns of the weight over those columns only, both chosen per call at run time "
               "from the float weight; compressed-tensors has no layout for that (its checkpoints hold weights "
               "rounded once)",
}


def _method_problems(method: str, weight: WeightQuantSpec, special: dict[str, Any], what: str) -> list[str]:
    """Why `method`'s results (with its options) have no compressed-tensors checkpoint."""
    if method in NOT_EXPORTABLE:
        return [f"{what}: llmc's real-quant export of {method} results is not supported: {NOT_EXPORTABLE[method]}"]
    if method == "HQQ":
        p = []
        if not weight.round_zp:
            p.append(f"{what}: HQQ's optimised zero point is a float (round_zp: false), and compressed-tensors "
                     "stores integer zero points (int8 codes, packed in int32), so no checkpoint holds it exactly; "
                     "set quant.weight.round_zp: true")
        if special.get("axis", 0) == 0:
            p.append(f"{what}: HQQ with axis 0 (its default) groups output rows of each input column, and "
                     "compressed-tensors' groups and channels are input columns of one output row; set "
                     "quant.special.axis: 1")
        return p
    if method not in EXPORTABLE_METHODS:
        return [f"{what}: llmc's real-quant export of {method} results is not supported yet; the export takes "
                f"{', '.join(EXPORTABLE_METHODS)} results"]
    if special.get("online_rotate"):
        return [f"{what}: llmc's real-quant export of {method} with online_rotate is not supported yet: the "
                "run-time Hadamard rotations of o_proj's and down_proj's inputs are not part of the weights, and "
                "accbench does not write them as a compressed-tensors transform_config (hadamard input "
                "transforms); set quant.special.online_rotate: false (llmc's vLLM / SGLang w8a8_combin configs do)"]
    return []


def export_problems(weight: WeightQuantSpec, act: ActQuantSpec | None, method: str, special: dict[str, Any],
                    what: str = "save_vllm") -> list[str]:
    """Why this quantization has no compressed-tensors layout vLLM loads (empty: it has one)."""
    p = _method_problems(method, weight, special, what)
    if weight.int_range is not None or (not weight.round_zp and method != "HQQ") or weight.w48 is not None:
        p.append(f"{what}: llmc's int_range, round_zp: false and bit 48 have no compressed-tensors layout yet")
    if weight.granularity == "per_block":
        p.append(f"{what}: per_block weights are not supported yet by the real-quant export; use per_group or "
                 "per_channel")
    if isinstance(weight.bit, str):
        if weight.bit != "e4m3":
            p.append(f"{what}: FP8 weights export as e4m3 only (compressed-tensors' float8_e4m3fn), got {weight.bit}")
        if weight.granularity == "per_group":
            p.append(f"{what}: FP8 weights export per_channel or per_tensor, not per_group")
    elif weight.bit not in VLLM_PACK_BITS:
        p.append(f"{what}: integer weights export with 4 or 8 bits (vLLM's kernels), got {weight.bit}")
    if act is not None:
        if isinstance(act.bit, str) != isinstance(weight.bit, str):
            p.append(f"{what}: weights and activations must both be integer (W8A8) or both FP8")
        elif isinstance(act.bit, str) and act.bit != "e4m3":
            p.append(f"{what}: FP8 activations export as e4m3 only, got {act.bit}")
        elif not isinstance(act.bit, str) and (act.bit != 8 or weight.bit != 8):
            p.append(f"{what}: integer activation quantization exports as W8A8 (8-bit weights and activations), "
                     f"got W{weight.bit}A{act.bit}")
        if weight.granularity == "per_group":
            p.append(f"{what}: weights with activation quantization export per_channel or per_tensor, not per_group")
        if not isinstance(weight.bit, str) and not weight.symmetric and what in ("save_vllm", "save_sgl"):
            p.append(f"{what}: vLLM's and SGLang's W8A8 int8 kernels take symmetric weights only (asymmetric "
                     "activations are fine); set quant.weight.symmetric: true")
    if method == "GPTQ" and special.get("actorder") and not special.get("static_groups") \
            and weight.granularity == "per_group":
        p.append(f"{what}: GPTQ with actorder and dynamic groups (static_groups: false) is not supported yet by the "
                 "real-quant export; set quant.special.static_groups: true")
    return p


def _args(spec: WeightQuantSpec | ActQuantSpec, dynamic: bool) -> dict[str, Any]:
    """compressed-tensors' QuantizationArgs of one spec, as llm-compressor writes them."""
    is_float = isinstance(spec.bit, str)
    gs = spec.group_size if isinstance(spec, WeightQuantSpec) and spec.granularity == "per_group" else None
    return {"num_bits": 8 if is_float else spec.bit, "type": "float" if is_float else "int",
            "symmetric": True if is_float else spec.symmetric, "group_size": gs,
            "strategy": STRATEGY[spec.granularity], "block_structure": None, "dynamic": dynamic,
            "actorder": None, "observer": None if dynamic else "minmax", "observer_kwargs": {}}


def quantization_config(weight: WeightQuantSpec, act: ActQuantSpec | None, ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config` (compressed-tensors, format and one config group for every Linear)."""
    fmt = FLOAT if isinstance(weight.bit, str) else (INT if act is not None else PACK)
    group = {"targets": ["Linear"], "weights": _args(weight, False), "output_activations": None, "format": fmt,
             "input_activations": None if act is None else _args(act, not act.static)}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": sorted(ignore), "kv_cache_scheme": None,
            "global_compression_ratio": None}


def _signed(t: torch.Tensor, spec: WeightQuantSpec | ActQuantSpec) -> torch.Tensor:
    """llmc's asymmetric range 0..2^b-1 as compressed-tensors' signed int8 range."""
    return (t - signed_offset(spec.bit, spec.symmetric)).to(torch.int8)


def _scale(scale: torch.Tensor, granularity: str) -> torch.Tensor:
    return scale.float().reshape(1) if granularity == "per_tensor" else scale.float().contiguous()


def weight_tensors(name: str, codes: WeightCodes, fmt: str) -> dict[str, torch.Tensor]:
    """The serialized tensors of one quantized linear `name` in layout `fmt`."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    spec = codes.spec
    out = {f"{name}.weight_scale": _scale(codes.scale, spec.granularity)}
    if fmt == FLOAT:
        out[f"{name}.weight"] = codes.q.contiguous()
        return out
    if fmt == PACK:
        out[f"{name}.weight_packed"] = pack_to_int32(codes.q, spec.bit)
        out[f"{name}.weight_shape"] = torch.tensor(list(codes.q.shape))
    else:
        out[f"{name}.weight"] = codes.q.contiguous()
    if codes.zero is not None:
        zp = _signed(codes.zero, spec)
        if fmt == PACK and spec.granularity in ("per_group", "per_channel"):
            zp = pack_to_int32(zp, spec.bit, packed_dim=0)
        out[f"{name}.weight_zero_point"] = zp.reshape(1) if spec.granularity == "per_tensor" else zp.contiguous()
    return out


def static_act_scale(act: ActQuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale, zero in llmc's range or None) of a calibrated per-tensor range, as fake quantization computes them."""
    if isinstance(act.bit, str):
        return float_scale(lo.float(), hi.float(), act.bit), None
    scale, zero = qparams(lo.float(), hi.float(), act.bit, act.symmetric)
    return scale, None if act.symmetric else zero


def act_tensors(name: str, act: ActQuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
    scale, zero = static_act_scale(act, lo, hi)
    out = {f"{name}.input_scale": scale.float().reshape(1)}
    if zero is not None:
        out[f"{name}.input_zero_point"] = _signed(zero, act).reshape(1)
    return out


@dataclass
class ExportedModel:
    """What the export wrote: where, in which layout, how many linears are quantized, which kept in float."""

    path: str
    format: str
    quantized: int
    ignored: list[str]


def export_checkpoint(model: Any, tokenizer: Any, codes: dict[str, WeightCodes], weight: WeightQuantSpec,
                      act: ActQuantSpec | None, act_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      folder: Path) -> ExportedModel:
    """Write `model` (its non-quantized tensors as they are) with every linear in `codes` in compressed form."""
    from accbench.models import save_model

    fmt = quantization_config(weight, act, [])["format"]
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [n for n in codes if n not in linears]
    assert not missing, f"codes for modules that are not linears: {missing[:3]}"
    ignore = sorted(linears - set(codes))
    state: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        if leaf == "weight" and mod in codes:
            state.update(weight_tensors(mod, codes[mod], fmt))
            if act is not None and act.static:
                state.update(act_tensors(mod, act, *act_ranges[mod]))
        else:
            state[k] = v
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_model(model, tokenizer, folder, state_dict=state)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = quantization_config(weight, act, ignore)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return ExportedModel(str(folder), fmt, len(codes), ignore)
