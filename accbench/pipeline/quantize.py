"""Stage: quantize the loaded model in place (llmc's flow): calibration data, the method's transform, the
`transformed` position, fake quantization, the `fake_quant` position; each model saved when asked.

The quant section becomes a plain `QuantSpec` (quant/spec.py) here; the quantizer never sees the config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from accbench.config import CalibCfg, IgnoredLayersCfg, QuantCfg, SaveCfg
from accbench.errors import AccbenchError
from accbench.fingerprints import ResumeLog
from accbench.pipeline import real_quant
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


@dataclass
class QuantResume:
    """What a resumed run needs to skip the quantization: the fingerprint of the model at each position, which
    positions still have something to compute, and how to load a saved model (position, path)."""

    fps: dict[str, str]
    log: ResumeLog
    pending: Callable[[str], bool]
    load_saved: Callable[[str, str], "LoadedModel"]
    wanted: list[str] = field(default_factory=list)  # the positions the run evaluates
    load_export: Callable[[str], "LoadedModel"] | None = None  # loads a real-quant checkpoint (decompressing)


def run_quantization(spec: "QuantSpec", q: QuantCfg, calib: CalibCfg | None, save: SaveCfg, loaded: "LoadedModel",
                     run_dir: Path, record: Record, evaluate: Evaluate, console: "Console", batches: list | None,
                     resume: QuantResume) -> None:
    """Quantize block by block with the calibration `batches` (built before the model loaded; None: the method
    needs none); hand `transformed` and `fake_quant` to `evaluate`; save as asked (with each saved model's
    fingerprint). On resume a saved model whose fingerprint matches is loaded instead of quantizing again."""
    from accbench.quant.methods import METHODS
    from accbench.quant.runner import check_quant, fake_quantize_model, transform_model

    check_quant(loaded.model, spec, calib is not None)
    if calib is not None and batches is not None:
        n = sum(len(b) for b in batches)
        console.print(f"calibration: {n} samples x {calib.seq_len} tokens ({calib.preproc}, "
                      f"{len(batches)} batch{'es' if len(batches) != 1 else ''})")
    info = QuantInfo(method=spec.method, weight=q.weight.model_dump(), act=q.act.model_dump() if q.act else None,
                     special=spec.special, quant_out=spec.quant_out,
                     calib_samples=sum(len(b) for b in batches) if batches else 0)
    save_root = Path(save.save_path) if save.save_path else run_dir / "models"
    exports = real_quant.export_folders(save, save_root, resume.wanted)
    if resume.log.active and real_quant.resumable(exports, resume.fps["real_quant"]) \
            and _resume_from_disk(spec, save, save_root, record, evaluate, console, resume):
        real_quant.resume_real_quant(exports, resume.wanted, resume.pending, evaluate, resume.load_export, record)
        return

    with timed(record, "quant_transform"):
        state = transform_model(loaded.model, spec, batches, loaded.device)
    record(info)
    evaluate("transformed", loaded)
    if save.save_trans:
        _save_position(loaded, "transformed", save_root, "transformed model", record, console,
                       resume.fps["transformed"])

    if exports:
        state.codes = {}  # the real-quant export writes the codes the fake quantization rounds to
    with timed(record, "quant_fake"):
        fake_quantize_model(loaded.model, spec, batches, loaded.device, state)
    if state.losses:
        info = info.model_copy(update={"gptq_error_sum": sum(state.losses.values())})
    record(info)
    evaluate("fake_quant", loaded)
    if save.save_fake:
        _save_position(loaded, "fake_quant", save_root, "fake-quantized model"
                       + (" (weights only: activation quantization is applied at run time, not saved)"
                          if spec.act is not None else ""), record, console, resume.fps["fake_quant"])
    if exports:
        assert resume.load_export is not None
        real_quant.export_and_evaluate(loaded, spec, state, exports, record, evaluate, console,
                                       resume.fps["real_quant"], resume.load_export, resume.wanted)
    saved = METHODS[spec.method].options.of(spec).saved_state()  # AWQ's save_scale / save_clip
    if saved:
        import torch

        save_root.mkdir(parents=True, exist_ok=True)
        if "scales" in saved:
            torch.save(state.scales, save_root / "scales.pt")
        if "clips" in saved:
            torch.save(state.clips, save_root / "clips.pt")


LLMC_SAVE_FOLDERS = {"transformed": "transformed_model", "fake_quant": "fake_quant_model"}


def _resume_from_disk(spec: "QuantSpec", save: SaveCfg, save_root: Path, record: Record, evaluate: Evaluate,
                      console: "Console", resume: QuantResume) -> bool:
    """On resume, avoid quantizing again: True when every transformed/fake_quant result still to compute can come
    from a saved model whose fingerprint file matches (it is loaded and evaluated), or nothing is left to compute.
    Saved models are trusted only through their fingerprint files; a fake-quantized model with activation
    quantization is not (that is applied at run time, not saved)."""
    from accbench.fingerprints import saved_model_matches

    if spec.special.get("save_scale") or spec.special.get("save_clip"):
        return False
    saves = {"transformed": save.save_trans, "fake_quant": save.save_fake}
    folder = {p: save_root / LLMC_SAVE_FOLDERS[p] for p in saves}
    saved_ok = {p: saved_model_matches(folder[p], resume.fps[p]) for p in saves}
    saved_ok["fake_quant"] = saved_ok["fake_quant"] and spec.act is None
    pending = {p: p in resume.wanted and resume.pending(p) for p in saves}
    if any((pending[p] or saves[p]) and not saved_ok[p] for p in saves):
        return False
    for p in saves:
        if saves[p]:
            record(ModelPath(p, str(folder[p])))
    if not any(pending.values()):
        console.print("resume: every transformed/fake_quant result is stored with matching fingerprints; "
                      "quantization skipped", markup=False)
        resume.log.reuse("quantization (all its results are stored)")
        return True
    for p in (p for p in saves if pending[p]):
        console.print(f"resume: loading the saved {p} model {folder[p]} (its fingerprint matches) instead of "
                      "quantizing again", markup=False)
        resume.log.reuse(f"{p} model {folder[p]}")
        evaluate(p, resume.load_saved(p, str(folder[p])))
    return True


def _save_position(loaded: "LoadedModel", position: str, root: Path, what: str, record: Record,
                   console: "Console", fp: str) -> None:
    """Save the model as it is at `position` under llmc's folder name (root/transformed_model,
    root/fake_quant_model, so a script written for llmc finds it) with its fingerprint, and hand back where it
    went. A full disk names the folder and leaves no half-saved model behind."""
    import shutil

    from accbench.fingerprints import write_model_fingerprint
    from accbench.iofaults import as_disk_error
    from accbench.models import save_model

    folder = root / LLMC_SAVE_FOLDERS[position]
    with timed(record, f"save_{position}"):
        try:
            path = str(save_model(loaded.model, loaded.tokenizer, folder))
            write_model_fingerprint(folder, fp, position)
        except Exception as exc:
            disk = as_disk_error(exc, folder)
            if disk is None:
                raise
            shutil.rmtree(folder, ignore_errors=True)
            raise disk from exc
    record(ModelPath(position, path))
    console.print(f"saved {what} → {path}")
