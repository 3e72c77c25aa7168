"""Run an exported compressed-tensors checkpoint as it will be deployed: the `real_quant` position.

transformers loads the checkpoint and decompresses every weight with compressed-tensors' own code (packing
and scales included, `CompressedTensorsConfig(dequantize=True)`); what the checkpoint says about activations
(`input_activations`: dynamic per token / per tensor, or static with the stored `input_scale`) is applied at
run time by forward pre-hooks with llmc's formulas, the scale of a static range read from the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from accbench.errors import AccbenchError
from accbench.quant.floats import fp8_codes
from accbench.quant.quantizer import ActQuantSpec, fake_quantize_act_dynamic, quant_dequant, signed_offset


def quantization_config_of(folder: Path) -> dict[str, Any]:
    """config.json's compressed-tensors `quantization_config` of an exported checkpoint."""
    cfg = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config")
    if not cfg or cfg.get("quant_method") != "compressed-tensors":
        raise AccbenchError(f"{folder} holds no compressed-tensors checkpoint (config.json has no "
                            "quantization_config with quant_method compressed-tensors)",
                            "export it with save.save_vllm: true")
    return cfg


def act_spec_of(qcfg: dict[str, Any]) -> ActQuantSpec | None:
    """The activation quantization the checkpoint's (single) config group asks for, as accbench's spec."""
    groups = list(qcfg["config_groups"].values())
    a = groups[0].get("input_activations") if groups else None
    if a is None:
        return None
    bit: int | str = "e4m3" if a["type"] == "float" else a["num_bits"]
    gran = {"token": "per_token", "tensor": "per_tensor"}[a["strategy"]]
    return ActQuantSpec(bit, bool(a["symmetric"]), gran, not a["dynamic"])


def _static_scales(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """module name -> (input_scale, input_zero_point or None) read from the checkpoint's safetensors files."""
    from safetensors import safe_open

    out: dict[str, list] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                mod, _, leaf = k.rpartition(".")
                if leaf in ("input_scale", "input_zero_point"):
                    out.setdefault(mod, [None, None])[leaf == "input_zero_point"] = st.get_tensor(k)
    return {m: (v[0], v[1]) for m, v in out.items()}


def _static_hook(spec: ActQuantSpec, scale: torch.Tensor, zp: torch.Tensor | None) -> Any:
    """A pre-hook quantizing a linear's input with the checkpoint's per-tensor scale (and zero point)."""
    scale = scale.float()
    if isinstance(spec.bit, str):
        def fp8(mod: Any, args: tuple) -> tuple:
            x = args[0]
            s = scale.to(x.device)
            y = fp8_codes(x.float() / s, spec.bit).float() * s
            return (y.to(x.dtype),) + tuple(args[1:])
        return fp8
    # the checkpoint's zero point is signed (compressed-tensors); llmc's asymmetric range starts at 0
    zero = torch.zeros_like(scale) if zp is None else zp.float() + signed_offset(spec.bit, False)

    def integer(mod: Any, args: tuple) -> tuple:
        x = args[0]
        y = quant_dequant(x.float(), scale.to(x.device), zero.to(x.device), spec.bit, spec.symmetric)
        return (y.to(x.dtype),) + tuple(args[1:])
    return integer


def disable_library_qdq(model: Any) -> None:
    """Turn off compressed-tensors' own run-time quantization where the decompressed model kept it.

    transformers < 5.20 with compressed-tensors 0.17 leaves every decompressed linear with its quantization
    scheme and a forward that quantizes the input (its formulas, on top of the hooks below) and re-quantizes the
    weight; later versions return plain linears. Disabled, both run the same weights and the same activation
    rule as fake_quant (the library's documented switch: `quantization_enabled = False`)."""
    for m in model.modules():
        if hasattr(m, "quantization_scheme"):
            m.quantization_enabled = False


def install_checkpoint_act_quant(model: Any, folder: Path) -> list:
    """Quantize the inputs of the checkpoint's quantized linears as its quantization_config says; hook handles."""
    qcfg = quantization_config_of(folder)
    disable_library_qdq(model)
    spec = act_spec_of(qcfg)
    if spec is None:
        return []
    ignore = set(qcfg.get("ignore") or [])
    lins = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in ignore}
    handles = []
    if spec.static:
        scales = _static_scales(folder)
        for n, m in lins.items():
            if n not in scales:
                raise AccbenchError(f"{folder}: static activation quantization but no input_scale for {n}",
                                    "export the checkpoint again")
            handles.append(m.register_forward_pre_hook(_static_hook(spec, *scales[n])))
        return handles
    for m in lins.values():
        handles.append(m.register_forward_pre_hook(
            lambda mod, args: (fake_quantize_act_dynamic(args[0], spec),) + tuple(args[1:])))
    return handles

