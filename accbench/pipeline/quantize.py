"""Stage: quantize the loaded model in place (llmc's flow): calibration data, the method's transform, the
`transformed` position, fake quantization, the `fake_quant` position; each model saved when asked.

The quant section becomes a plain `QuantSpec` (quant/spec.py) here; the quantizer never sees the config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.config import CalibCfg, IgnoredLayersCfg, QuantCfg, SaveCfg
from accbench.errors import AccbenchError
from accbench.pipeline.records import Evaluate, ModelPath, Record, timed
from accbench.results import QuantInfo

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel
    from accbench.quant.spec import QuantSpec

log = logging.getLogger("accbench")


def quant_spec(q: QuantCfg, calib: CalibCfg | None, ignored: IgnoredLayersCfg | None = None) -> "QuantSpec":
    """The quant section as the plain spec the quantizer takes (method options with their defaults)."""
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec
    from accbench.quant.spec import QuantSpec

    if q.weight.int_range is not None:
        raise AccbenchError("quant.weight.int_range is an llmc option accbench does not support yet",
                            "remove it; the integer range follows from bit and symmetric")
    if q.weight.granularity == "per_block" and q.method not in ("RTN", "SmoothQuant"):
        raise AccbenchError(f"llmc's per_block granularity with {q.method} is not supported yet",
                            "use per_block with RTN or SmoothQuant, or per_group / per_channel")
    if q.method == "GPTQ" and (q.weight.quant_type == "float-quant"):
        raise AccbenchError("llmc's float quantization (quant_type: float-quant) with GPTQ is not supported yet",
                            "use RTN, Awq or SmoothQuant for float formats, or integer bits with GPTQ")
    try:
        w = WeightQuantSpec(q.weight.bit, q.weight.symmetric, q.weight.granularity, q.weight.group_size,
                            q.weight.calib_algo, q.weight.block_size)
        a = ActQuantSpec(q.act.bit, q.act.symmetric, q.act.granularity, q.act.static) if q.act else None
    except ValueError as exc:
        raise AccbenchError(f"quant section: {exc}", "see docs/quantization.md for the valid settings") from None
    clip_tokens = calib.seq_len if calib is not None else 512
    if ignored is None:
        return QuantSpec(q.method, w, a, q.special_with_defaults(), q.quant_out, clip_tokens)
    return QuantSpec(q.method, w, a, q.special_with_defaults(), q.quant_out, clip_tokens, frozenset(ignored.blocks()),
                     frozenset(ignored.layer_names), frozenset(ignored.speical_names))


def build_calib_batches(c: CalibCfg, tok: Any) -> list:
    """Calibration token batches from the calib section (llmc's preprocessing and grouping)."""
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts

    texts = load_texts(c.name, c.path, c.download, c.text_column, c.split, builtin_split="calib")
    return calib_batches(calib_samples(texts, tok, c.preproc, c.n_samples, c.seq_len, c.seed), c.bs)


def run_quantization(spec: "QuantSpec", q: QuantCfg, calib: CalibCfg | None, save: SaveCfg, loaded: "LoadedModel",
                     run_dir: Path, record: Record, evaluate: Evaluate, console: "Console") -> None:
    """Calibrate and quantize block by block; hand `transformed` and `fake_quant` to `evaluate`; save as asked."""
    from accbench.quant.methods import METHODS, needs_calibration
    from accbench.quant.runner import check_quant, fake_quantize_model, transform_model

    check_quant(loaded.model, spec, calib is not None)
    batches = None
    if calib is not None and needs_calibration(spec.method, spec.act is not None and spec.act.static):
        with timed(record, "calib_data"):
            batches = build_calib_batches(calib, loaded.tokenizer)
        n = sum(len(b) for b in batches)
        console.print(f"calibration: {n} samples x {calib.seq_len} tokens ({calib.preproc}, "
                      f"{len(batches)} batch{'es' if len(batches) != 1 else ''})")
    info = QuantInfo(method=spec.method, weight=q.weight.model_dump(), act=q.act.model_dump() if q.act else None,
                     special=spec.special, quant_out=spec.quant_out,
                     calib_samples=sum(len(b) for b in batches) if batches else 0)
    save_root = Path(save.save_path) if save.save_path else run_dir / "models"

    with timed(record, "quant_transform"):
        state = transform_model(loaded.model, spec, batches, loaded.device)
    record(info)
    evaluate("transformed", loaded)
    if save.save_trans:
        _save_position(loaded, "transformed", save_root, "transformed model", record, console)

    with timed(record, "quant_fake"):
        fake_quantize_model(loaded.model, spec, batches, loaded.device, state)
    if state.losses:
        info = info.model_copy(update={"gptq_error_sum": sum(state.losses.values())})
    record(info)
    evaluate("fake_quant", loaded)
    if save.save_fake:
        _save_position(loaded, "fake_quant", save_root, "fake-quantized model"
                       + (" (weights only: activation quantization is applied at run time, not saved)"
                          if spec.act is not None else ""), record, console)
    saved = METHODS[spec.method].options.of(spec).saved_state()  # AWQ's save_scale / save_clip
    if saved:
        import torch

        save_root.mkdir(parents=True, exist_ok=True)
        if "scales" in saved:
            torch.save(state.scales, save_root / "scales.pt")
        if "clips" in saved:
            torch.save(state.clips, save_root / "clips.pt")


LLMC_SAVE_FOLDERS = {"transformed": "transformed_model", "fake_quant": "fake_quant_model"}


def _save_position(loaded: "LoadedModel", position: str, root: Path, what: str, record: Record,
                   console: "Console") -> None:
    """Save the model as it is at `position` under llmc's folder name (root/transformed_model,
    root/fake_quant_model, so a script written for llmc finds it) and hand back where it went."""
    from accbench.models import save_model

    with timed(record, f"save_{position}"):
        path = str(save_model(loaded.model, loaded.tokenizer, root / LLMC_SAVE_FOLDERS[position]))
    record(ModelPath(position, path))
    console.print(f"saved {what} → {path}")
