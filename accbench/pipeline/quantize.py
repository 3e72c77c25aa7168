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
from accbench.config_sections import ActQuantCfg, W48LevelCfg, WeightQuantCfg
from accbench.errors import AccbenchError
from accbench.fingerprints import ResumeLog
from accbench.pipeline import real_quant
from accbench.pipeline.records import Evaluate, ModelPath, Record, timed
from accbench.results import QuantInfo

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel
    from accbench.quant.kvcache import KVCacheQuantizer
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec
    from accbench.quant.spec import QuantSpec

log = logging.getLogger("accbench")


def quant_spec(q: QuantCfg, calib: CalibCfg | None, ignored: IgnoredLayersCfg | None = None) -> "QuantSpec":
    """The quant section as the plain spec the quantizer takes (method options with their defaults)."""
    from accbench.quant.mixbits import MixSetting
    from accbench.quant.spec import QuantSpec

    _method_format_problems(q)
    try:
        w, a = weight_spec(q.weight), act_spec(q.act)
        mix = tuple(MixSetting(MixSetting.parse_layer_names(m.layer_name), m.do_quant,
                               weight_spec(m.weight) if m.weight else None, act_spec(m.act))
                    for _, m in sorted((q.mix_bits or {}).items(), key=lambda kv: int(kv[0].split("_")[1])))
    except ValueError as exc:
        raise AccbenchError(f"quant section: {exc}", "see docs/quantization.md for the valid settings") from None
    clip_tokens = calib.seq_len if calib is not None else 512
    special = q.special_with_defaults()
    if ignored is None:
        return QuantSpec(q.method, w, a, special, q.quant_out, clip_tokens, mix_bits=mix)
    return QuantSpec(q.method, w, a, special, q.quant_out, clip_tokens, frozenset(ignored.blocks()),
                     frozenset(ignored.layer_names), frozenset(ignored.speical_names), mix)


def _method_format_problems(q: QuantCfg) -> None:
    """Weight formats a method cannot take (yet), as an AccbenchError."""
    if q.weight.granularity == "per_block" and q.method not in ("RTN", "SmoothQuant"):
        raise AccbenchError(f"llmc's per_block granularity with {q.method} is not supported yet",
                            "use per_block with RTN or SmoothQuant, or per_group / per_channel")
    if q.weight.bit == 48 and q.method not in ("RTN", "SmoothQuant"):
        raise AccbenchError(f"llmc's two-level W4A8 weights (bit: 48) with {q.method} are not supported yet",
                            "use bit: 48 with RTN (as llmc's rtn_w_a_wint4aint8.yml) or SmoothQuant")


def weight_spec(c: WeightQuantCfg) -> "WeightQuantSpec":
    """A weight section (quant.weight, or a mix_bits setting's weight) as the quantizer's spec."""
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.w48 import LevelSpec, Weight48Spec

    def level(bit: int, lv: W48LevelCfg) -> LevelSpec:
        return LevelSpec(bit, lv.symmetric, lv.granularity, lv.group_size,
                         tuple(lv.int_range) if lv.int_range else None, lv.scales_bit, lv.scales_symmetric,
                         lv.zeros_bit, lv.zeros_symmetric)

    w48 = Weight48Spec(level(8, c.bit8), level(4, c.bit4)) if c.bit8 is not None and c.bit4 is not None else None
    return WeightQuantSpec(c.bit, c.symmetric, "per_channel" if w48 else c.granularity, c.group_size,
                           c.calib_algo, c.block_size, tuple(c.int_range) if c.int_range else None, c.round_zp, w48)


def act_spec(c: ActQuantCfg | None) -> "ActQuantSpec | None":
    """An act section as the quantizer's spec (None when activations stay in float)."""
    from accbench.quant.quantizer import ActQuantSpec

    if c is None:
        return None
    return ActQuantSpec(c.bit, c.symmetric, c.granularity, c.static, c.group_size or 128, c.calib_algo)


def kv_quantizer(q: QuantCfg) -> "KVCacheQuantizer | None":
    """quant.kvcache as the KV-cache quantizer the evaluations at fake_quant use (static when quant.act.static,
    as llmc makes it); None without a kvcache section."""
    if q.kvcache is None:
        return None
    from accbench.quant.kvcache import KVCacheQuantizer, KVQuantSpec

    k = q.kvcache
    try:
        spec = KVQuantSpec(k.method, k.bit, k.symmetric, k.granularity, k.group_size, k.residual_length,
                           static=q.act is not None and q.act.static)
    except ValueError as exc:
        raise AccbenchError(f"quant.kvcache: {exc}", "see docs/quantization.md (KV-cache quantization)") from None
    return KVCacheQuantizer(spec)


def build_calib_batches(c: CalibCfg, tok: Any, model_type: str | None = None) -> list:
    """Calibration token batches from the calib section (llmc's preprocessing and grouping); llmc's chat data
    (custom_txt samples, ultrachat conversations, padding) as data/chat.py builds it."""
    from accbench.data import chat
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts

    if c.name in chat.CHAT_NAMES:
        rows = chat.ultrachat_general(chat.load_conversations(c.path, c.split), tok, c.n_samples, c.seq_len)
        return chat.padded_batches(rows, tok, c.bs) if c.padding else calib_batches(rows, c.bs)
    if c.name in chat.CUSTOM_NAMES:
        texts = chat.custom_texts(chat.load_custom_samples(c.path), tok, c.apply_chat_template, c.add_answer,
                                  model_type)
        if c.padding:
            return chat.padded_batches(texts, tok, c.bs)
    else:
        texts = load_texts(c.name, c.path, c.download, c.text_column, c.split, builtin_split="calib")
    samples = calib_samples(texts, tok, c.preproc, c.n_samples, c.seq_len, c.seed)
    return chat.padded_batches(samples, tok, c.bs) if c.padding else calib_batches(samples, c.bs)


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
                     resume: QuantResume, kv: "KVCacheQuantizer | None" = None) -> None:
    """Quantize block by block with the calibration `batches` (built before the model loaded; None: the method
    needs none); hand `transformed`, `fake_quant` and `fake_quant_wo_kv` to `evaluate`; save as asked (with
    each saved model's fingerprint). A static `kv` quantizer is calibrated on the transformed model. On resume
    a saved model whose fingerprint matches is loaded instead of quantizing again."""
    from accbench.quant.methods import METHODS
    from accbench.quant.runner import check_quant, fake_quantize_model, transform_model

    check_quant(loaded.model, spec, calib is not None)
    if calib is not None and batches is not None:
        from accbench.data.chat import PaddedBatch

        n = sum(len(b) for b in batches)
        tokens = sum(int(b.attention_mask.sum()) if isinstance(b, PaddedBatch) else b.numel() for b in batches)
        how = "padded" if isinstance(batches[0], PaddedBatch) else calib.preproc
        console.print(f"calibration: {n} samples, {tokens} tokens ({how}, "
                      f"{len(batches)} batch{'es' if len(batches) != 1 else ''})")
    info = QuantInfo(method=spec.method, weight=q.weight.model_dump(), act=q.act.model_dump() if q.act else None,
                     special=spec.special, quant_out=spec.quant_out,
                     mix_bits={k: v.model_dump() for k, v in q.mix_bits.items()} if q.mix_bits else None,
                     calib_samples=sum(len(b) for b in batches) if batches else 0)
    save_root = Path(save.save_path) if save.save_path else run_dir / "models"
    exports = real_quant.export_folders(save, save_root, resume.wanted)
    if resume.log.active and not (kv is not None and kv.spec.static) \
            and real_quant.resumable(exports, resume.fps["real_quant"]) \
            and _resume_from_disk(spec, save, save_root, record, evaluate, console, resume):
        real_quant.resume_real_quant(exports, resume.wanted, resume.pending, evaluate, resume.load_export, record)
        return

    with timed(record, "quant_transform"):
        state = transform_model(loaded.model, spec, batches, loaded.device)
    if state.epoch_losses:
        info = info.model_copy(update={"epoch_losses": state.epoch_losses})
    record(info)
    if kv is not None and kv.spec.static:
        _calibrate_kv(kv, loaded, batches or [], record, console)
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
    evaluate("fake_quant_wo_kv", loaded)
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

        for what, folder in saved.items():  # AWQ's scale_path / clip_path, else the save folder
            folder = Path(folder) if folder else save_root
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(state.scales if what == "scales" else state.clips, folder / f"{what}.pt")


def _calibrate_kv(kv: "KVCacheQuantizer", loaded: "LoadedModel", batches: list, record: Record,
                  console: "Console") -> None:
    """Static KV-cache ranges from the calibration batches run through the (transformed) model."""
    from accbench.quant.kvcache import calibrate_kv_ranges

    with timed(record, "kv_calibration"):
        kv.ranges = calibrate_kv_ranges(loaded.model, batches, loaded.device)
    console.print(f"KV cache: static per-tensor ranges of {len(kv.ranges)} layers calibrated on "
                  f"{sum(len(b) for b in batches)} samples")


LLMC_SAVE_FOLDERS = {"transformed": "transformed_model", "fake_quant": "fake_quant_model"}


def _resume_from_disk(spec: "QuantSpec", save: SaveCfg, save_root: Path, record: Record, evaluate: Evaluate,
                      console: "Console", resume: QuantResume) -> bool:
    """On resume, avoid quantizing again: True when every transformed/fake_quant result still to compute can come
    from a saved model whose fingerprint file matches (it is loaded and evaluated), or nothing is left to compute.
    Saved models are trusted only through their fingerprint files; a fake-quantized model with activation
    quantization is not (that is applied at run time, not saved)."""
    from accbench.fingerprints import saved_model_matches

    if spec.special.get("save_scale") or spec.special.get("save_clip") or spec.special.get("online_rotate"):
        return False  # a saved model lacks what the run adds at run time (QuaRot's online Hadamards)
    saves = {"transformed": save.save_trans, "fake_quant": save.save_fake}
    folder = {p: save_root / LLMC_SAVE_FOLDERS[p] for p in saves}
    saved_ok = {p: saved_model_matches(folder[p], resume.fps[p]) for p in saves}
    saved_ok["fake_quant"] = saved_ok["fake_quant"] and spec.act is None
    if "fake_quant_wo_kv" in resume.wanted and resume.pending("fake_quant_wo_kv"):
        return False  # a saved fake_quant model would serve it too, but quantizing again keeps this simple
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
