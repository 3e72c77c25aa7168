"""Stage: sparsify the loaded model in place (llmc's `sparse` flow): the method block by block on the
calibration data, the `transformed` position (the sparsified model), saved when asked (save.save_trans).

The sparse section becomes a plain `SparseSpec` here; the sparsifier never sees the config. What the method
achieved (the fraction of zero weights, or of parameters removed with whole blocks) goes to results.json
`sparse` before the sparsified model is evaluated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from accbench.config_sparse import SparseCfg
from accbench.config_sections import CalibCfg, SaveCfg
from accbench.pipeline.quantize import LLMC_SAVE_FOLDERS, QuantResume, _save_position
from accbench.pipeline.records import Evaluate, ModelPath, Record, timed
from accbench.results import SparseInfo

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.models import LoadedModel

log = logging.getLogger("accbench")


def run_sparsification(s: SparseCfg, calib: CalibCfg | None, save: SaveCfg, loaded: "LoadedModel", run_dir: Path,
                       record: Record, evaluate: Evaluate, console: "Console", batches: list | None,
                       resume: QuantResume) -> None:
    """Sparsify with the calibration `batches` (built before the model loaded; None: the method needs none),
    record what was achieved, hand `transformed` to `evaluate`, save it as asked. On resume nothing is redone
    when every transformed result is stored, and a saved model whose fingerprint matches is loaded instead."""
    from accbench.sparse.runner import check_sparse, sparsify_model

    spec = s.spec()
    check_sparse(loaded.model, spec, calib is not None)
    save_root = Path(save.save_path) if save.save_path else run_dir / "models"
    if resume.log.active and _resume_from_disk(save, save_root, record, evaluate, console, resume):
        return
    n_calib = sum(len(b) for b in batches) if batches else 0
    if n_calib and calib is not None:
        console.print(f"calibration: {n_calib} samples x {calib.seq_len} tokens ({calib.preproc})")
    with timed(record, "sparsify"):
        outcome, stats = sparsify_model(loaded.model, spec, batches, loaded.device)
    info = SparseInfo(method=spec.method, sparsity=s.target_sparsity(), sparsity_type=spec.pattern,
                      n_prune_layers=s.weight.n_prune_layers, sparsity_out=spec.sparsity_out, calib_samples=n_calib,
                      achieved_sparsity=stats.achieved_sparsity, pruned=stats.pruned, total=stats.total,
                      layers_before=stats.layers_before, layers_after=stats.layers_after,
                      removed_layers=outcome.removed_layers, block_influence=outcome.block_influence)
    record(info)
    console.print(_summary(info), markup=False)
    evaluate("transformed", loaded)
    if save.save_trans:
        _save_position(loaded, "transformed", save_root, "sparsified model", record, console,
                       resume.fps["transformed"])


def _summary(info: SparseInfo) -> str:
    if info.removed_layers:
        return (f"{info.method}: removed blocks {info.removed_layers} of {info.layers_before} (lowest Block "
                f"Influence), {info.achieved_sparsity:.2%} of the decoder-block parameters")
    return (f"{info.method} {info.sparsity_type}: {info.achieved_sparsity:.2%} of the decoder-block linear weights "
            f"are zero ({info.pruned} of {info.total})")


def _resume_from_disk(save: SaveCfg, save_root: Path, record: Record, evaluate: Evaluate, console: "Console",
                      resume: QuantResume) -> bool:
    """On resume: True when nothing at `transformed` is left to compute, or a saved sparsified model whose
    fingerprint file matches was loaded and evaluated instead of sparsifying again."""
    from accbench.fingerprints import saved_model_matches

    folder = save_root / LLMC_SAVE_FOLDERS["transformed"]
    saved_ok = saved_model_matches(folder, resume.fps["transformed"])
    pending = "transformed" in resume.wanted and resume.pending("transformed")
    if (pending or save.save_trans) and not saved_ok:
        return False
    if save.save_trans:
        record(ModelPath("transformed", str(folder)))
    if not pending:
        console.print("resume: every transformed result is stored with matching fingerprints; sparsification "
                      "skipped", markup=False)
        resume.log.reuse("sparsification (all its results are stored)")
        return True
    console.print(f"resume: loading the saved transformed model {folder} (its fingerprint matches) instead of "
                  "sparsifying again", markup=False)
    resume.log.reuse(f"transformed model {folder}")
    evaluate("transformed", resume.load_saved("transformed", str(folder)))
    return True
