"""Stage: evaluate one position's perplexity on every eval dataset, with fidelity (KL etc.) against the baseline.

The eval datasets are tokenized once per run (`prepare_eval_data`). At the baseline position the model's
output distributions are recorded; at every other position they are compared with that recording in the
same perplexity pass. Each number is handed back (`record`) as soon as it exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.config import EvalCfg
from accbench.fingerprints import ResumeLog, check_entry, fingerprint
from accbench.pipeline.records import Record, StaleFidelity, timed
from accbench.pipeline.resume import ppl_fingerprint, recording_fingerprint
from accbench.results import FidelityEntry, PplEntry

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.evaluate.fidelity import DistributionRecorder, FidelityComparer
    from accbench.models import LoadedModel

log = logging.getLogger("accbench")


@dataclass
class EvalData:
    """One evaluation dataset, tokenized once for the whole run."""

    cfg: EvalCfg
    name: str
    stream: Any  # 1-D LongTensor
    recipe: str
    tokens_id: str = ""  # hash of the token stream (provenance, fingerprints)


def prepare_eval_data(e: EvalCfg, tokenizer: Any) -> EvalData:
    from accbench.data.text import load_texts, ppl_token_stream, recipe_description
    from accbench.fingerprints import tokens_id

    texts = load_texts(e.name, e.path, e.download, e.text_column, e.split)
    stream = ppl_token_stream(e.name, texts, tokenizer, e.seq_len, e.path)
    return EvalData(e, e.name, stream, recipe_description(e.name), tokens_id(stream))


def evaluate_perplexity(evals: list[EvalData], position: str, loaded: "LoadedModel", baseline: str, run_dir: Path,
                        earlier_ppl: list[PplEntry], earlier_fidelity: list[FidelityEntry], record: Record,
                        console: "Console", fps: dict[str, str], resumed: ResumeLog) -> None:
    """Perplexity of `loaded` on each dataset of `evals` (those already in `earlier_ppl` with a matching
    fingerprint are kept, unless fidelity still needs the pass), plus fidelity against `baseline`. `fps`: the
    fingerprint of the model at each position."""
    from accbench.evaluate.perplexity import perplexity

    for ev in evals:
        hook = _fidelity_hook(ev, position, baseline, run_dir, earlier_fidelity, record, console, fps, resumed)
        fp = ppl_fingerprint(fps.get(position), ev)
        stored = next((p for p in earlier_ppl if p.position == position and p.dataset == ev.name
                       and p.seq_len == ev.cfg.seq_len), None)
        have_ppl = stored is not None and check_entry(stored.fingerprint, fp, f"ppl {position}/{ev.name}", resumed)
        if have_ppl and hook is None:
            continue
        with timed(record, f"ppl_{position}"):
            res = perplexity(loaded.model, ev.stream, ev.cfg.seq_len, ev.cfg.bs, loaded.device,
                             max_windows=ev.cfg.num_samples, desc=f"ppl {position} {ev.name}", on_logits=hook)
        if not have_ppl:
            record(PplEntry(position=position, dataset=ev.name, ppl=res.ppl, seq_len=res.seq_len,
                            windows=res.windows, tokens=res.tokens, recipe=ev.recipe, window_losses=res.window_losses,
                            fingerprint=fp))
            log.info("ppl %s %s = %.4f (%d windows)", position, ev.name, res.ppl, res.windows)
            console.print(f"[bold]{position}[/] {ev.name}: ppl = {res.ppl:.4f}  ({res.windows} windows x {res.seq_len})")
        if hook is not None:
            _finish_fidelity(hook, position, ev, baseline, record, console, fps.get(position))


def _fidelity_hook(ev: EvalData, position: str, baseline: str, run_dir: Path, earlier: list[FidelityEntry],
                   record: Record, console: "Console", fps: dict[str, str],
                   resumed: ResumeLog) -> "DistributionRecorder | FidelityComparer | None":
    """The perplexity hook fidelity needs here: record at the baseline, compare elsewhere, or None (a stored
    recording or entry whose fingerprint matches is reused)."""
    from accbench.evaluate.fidelity import (DistributionRecorder, FidelityComparer, recording_complete,
                                            recording_dir)
    from accbench.evaluate.fidelity import recording_fingerprint as stored_recording

    top_k = ev.cfg.fidelity_top_k()
    if top_k is None:
        return None
    path = recording_dir(run_dir, ev.name, ev.cfg.seq_len)
    rec_fp = recording_fingerprint(fps.get(baseline), ev, top_k)
    if position == baseline:
        if recording_complete(path) and check_entry(stored_recording(path), rec_fp,
                                                    f"fidelity recording of {position}/{ev.name}", resumed):
            return None
        n_windows = ev.stream.numel() // ev.cfg.seq_len
        if ev.cfg.num_samples is not None:
            n_windows = min(n_windows, ev.cfg.num_samples)
        return DistributionRecorder(path, n_windows * (ev.cfg.seq_len - 1), top_k,
                                    {"position": position, "dataset": ev.name, "seq_len": ev.cfg.seq_len,
                                     "fingerprint": rec_fp})
    stored = next((f for f in earlier if f.position == position and f.dataset == ev.name
                   and f.seq_len == ev.cfg.seq_len), None)
    if stored is not None and check_entry(stored.fingerprint, fingerprint(fps.get(position), rec_fp),
                                          f"fidelity {position}/{ev.name}", resumed):
        return None
    if not recording_complete(path) or stored_recording(path) != rec_fp:
        if stored is not None:  # it did not match above: withdraw it rather than keep a number of another config
            record(StaleFidelity(position, ev.name, ev.cfg.seq_len))
        log.warning("fidelity skipped at %s %s: no recording of the baseline %s", position, ev.name, baseline)
        console.print(f"[yellow]fidelity skipped at {position} {ev.name}: the baseline '{baseline}' was "
                      f"not evaluated on it first (add {baseline} to eval_pos)[/]")
        return None
    return FidelityComparer(path)


def _finish_fidelity(hook: "DistributionRecorder | FidelityComparer", position: str, ev: EvalData, baseline: str,
                     record: Record, console: "Console", model_fp: str | None) -> None:
    from accbench.evaluate.fidelity import DistributionRecorder

    if isinstance(hook, DistributionRecorder):
        path = hook.finish()
        log.info("fidelity: recorded %s distributions (top %d) to %s", position, hook.meta["top_k"], path)
        return
    e = hook.entry(position)
    e.fingerprint = fingerprint(model_fp, hook.meta.get("fingerprint"))
    record(e)
    log.info("fidelity %s %s vs %s: %s", position, ev.name, baseline, e.model_dump_json())
    console.print(f"[bold]{position}[/] {ev.name}: KL vs {baseline} = {e.kld_mean:.4g} ± {e.kld_stderr:.2g} "
                  f"(median {e.kld_median:.4g}, p99 {e.kld_p99:.4g}), top-1 agree {e.top1_agreement:.2%}, "
                  f"Δp {e.delta_p_mean:+.4f} (rms {e.delta_p_rms:.4f}), ppl ratio {e.ppl_ratio:.4f}")
