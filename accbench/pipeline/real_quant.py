"""Stage: export the fake-quantized model as a real-quant checkpoint and evaluate it at `real_quant`.

llmc's `save_vllm` / `save_sgl` write a compressed-tensors checkpoint (export/compressed.py) under
`<save_path>/vllm_quant_model` / `sgl_quant_model`; `real_quant` in eval_pos without either writes it to
`<save root>/vllm_quant_model`. The checkpoint is loaded back by transformers (compressed-tensors decompresses
it), every tensor is compared with the fake-quant model bit for bit, and the position is evaluated like any
other; the compare stage sets its numbers against fake_quant's (`results.json: real_quant.vs_fake_quant`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

from accbench.config import SaveCfg
from accbench.errors import AccbenchError
from accbench.pipeline.records import Evaluate, ModelPath, Record, timed
from accbench.results import RealQuantInfo

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel
    from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench")
EXPORT_FOLDERS = {"save_vllm": "vllm_quant_model", "save_sgl": "sgl_quant_model"}


def export_folders(save: SaveCfg, save_root: Path, wanted: list[str]) -> list[Path]:
    """Where the checkpoint goes (llmc's folder names); empty when neither an export nor real_quant is asked for."""
    keys = save.real_quant_exports() or (["save_vllm"] if "real_quant" in wanted else [])
    return [save_root / EXPORT_FOLDERS[k] for k in keys]


def check_export(spec: "QuantSpec", save: SaveCfg, wanted: list[str]) -> None:
    """Before any weights load: the quantization has a layout the export writes (else one error naming why)."""
    from accbench.export.compressed import export_problems

    if not save.real_quant_exports() and "real_quant" not in wanted:
        return
    import importlib.util

    what = (save.real_quant_exports() or ["eval_pos real_quant"])[0]
    problems = export_problems(spec.weight, spec.act, spec.method, spec.special, what)
    if spec.mix_bits:
        problems.append(f"{what}: quant.mix_bits (per-layer formats) has no single compressed-tensors layout yet")
    if importlib.util.find_spec("compressed_tensors") is None:
        problems.append(f"{what} needs the compressed-tensors package: pip install 'accbench[export]'")
    if problems:
        raise AccbenchError("cannot export a real-quant checkpoint:\n" + "\n".join(f"  - {p}" for p in problems),
                            "change the quant section, or drop the export (and real_quant from eval_pos)")


def export_and_evaluate(loaded: "LoadedModel", spec: "QuantSpec", state: "QuantState", folders: list[Path],
                        record: Record, evaluate: Evaluate, console: "Console", fp: str,
                        load_export: Callable[[str], "LoadedModel"], wanted: list[str]) -> None:
    """Write the checkpoint to `folders` (the first written, the others copies), then load it back, check its
    weights against the fake-quant model and evaluate it at real_quant (when wanted)."""
    from accbench.export.compressed import export_checkpoint
    from accbench.fingerprints import write_model_fingerprint
    from accbench.iofaults import as_disk_error

    assert state.codes is not None, "the fake-quant step kept no codes"
    first = folders[0]
    with timed(record, "save_real_quant"):
        try:
            exported = export_checkpoint(loaded.model, loaded.tokenizer, state.codes, spec.weight, spec.act,
                                         state.act_ranges, first)
            write_model_fingerprint(first, fp, "real_quant")
            for other in folders[1:]:
                shutil.rmtree(other, ignore_errors=True)
                shutil.copytree(first, other)
        except OSError as exc:
            disk = as_disk_error(exc, first)
            if disk is None:
                raise
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)
            raise disk from exc
    record(ModelPath("real_quant", str(first)))
    console.print(f"saved real-quant checkpoint ({exported.format}, {exported.quantized} linears) → {first}"
                  + "".join(f", {f}" for f in folders[1:]))
    info = RealQuantInfo(path=str(first), format=exported.format, copies=[str(f) for f in folders[1:]],
                         quantized_linears=exported.quantized, ignored_linears=exported.ignored,
                         act=None if spec.act is None else asdict(spec.act))
    if "real_quant" not in wanted:
        record(info)
        return
    real = load_real_quant(first, load_export)
    checked = compare_weights(info, loaded.model, real.model)
    record(checked)
    _say_weights(checked, console)
    evaluate("real_quant", real)


def resumable(folders: list[Path], fp: str) -> bool:
    """A resume may skip quantizing only when no export is asked for or the one on disk still matches."""
    from accbench.fingerprints import saved_model_matches

    return not folders or all(saved_model_matches(f, fp) for f in folders)


def resume_real_quant(folders: list[Path], wanted: list[str], pending: Callable[[str], bool], evaluate: Evaluate,
                      load_export: Callable[[str], "LoadedModel"] | None, record: Record) -> None:
    """On a resume that skipped quantizing: evaluate real_quant from the matching checkpoint on disk if needed."""
    if not folders:
        return
    record(ModelPath("real_quant", str(folders[0])))
    if "real_quant" in wanted and pending("real_quant"):
        assert load_export is not None
        evaluate("real_quant", load_real_quant(folders[0], load_export))


def load_real_quant(folder: Path, load_export: Callable[[str], "LoadedModel"]) -> "LoadedModel":
    """The exported checkpoint decompressed by transformers, with its activation quantization installed."""
    import warnings

    from accbench.export.load import install_checkpoint_act_quant

    with warnings.catch_warnings():  # transformers: "the quantization_config from the model will be used" (wanted)
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        real = load_export(str(folder))
    real.model._accbench_act_quant_handles = install_checkpoint_act_quant(real.model, folder)
    return real


def compare_weights(info: RealQuantInfo, fake: Any, real: Any) -> RealQuantInfo:
    """`info` with the bit-for-bit comparison of every state-dict tensor of the two models filled in."""
    import torch

    fs, rs = fake.state_dict(), real.state_dict()
    shared = [k for k in fs if k in rs]
    equal, worst = 0, 0.0
    for k in shared:
        a, b = fs[k].detach().cpu(), rs[k].detach().cpu()
        if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b):
            equal += 1
        elif a.shape == b.shape:
            worst = max(worst, float((a.double() - b.double()).abs().max()))
        else:
            worst = float("inf")
    return info.model_copy(update={"tensors_compared": len(shared), "tensors_equal": equal, "max_abs_diff": worst})


def _say_weights(info: RealQuantInfo, console: "Console") -> None:
    if info.tensors_equal == info.tensors_compared:
        console.print(f"real_quant: the reloaded checkpoint equals the fake-quant model bit for bit "
                      f"({info.tensors_equal} tensors)")
        return
    log.warning("real_quant weights differ from fake_quant: %d of %d tensors, max |diff| %g",
                info.tensors_compared - info.tensors_equal, info.tensors_compared, info.max_abs_diff)
    console.print(f"[yellow]real_quant: {info.tensors_compared - info.tensors_equal} of {info.tensors_compared} "
                  f"tensors differ from the fake-quant model (max |diff| {info.max_abs_diff:.3g}): the export or its "
                  "decompression does not reproduce the evaluated weights[/]")
