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
    from accbench.quant.kvcache import KVCacheQuantizer

log = logging.getLogger("accbench")


@dataclass
class EvalData:
    """One evaluation dataset, tokenized once for the whole run."""

    cfg: EvalCfg
    name: str
    stream: Any  # 1-D LongTensor (decode_ppl: the samples' tokens, one after the other)
    recipe: str
    tokens_id: str = ""  # hash of the token stream (provenance, fingerprints)
    samples: list[list[int]] | None = None  # decode_ppl: each sample's token ids

    @property
    def seq_len(self) -> int:
        """The seq_len its perplexity entries carry: the window length, 0 for decode_ppl (whole samples)."""
        return 0 if self.cfg.type == "decode_ppl" else self.cfg.seq_len


DECODE_RECIPE = ("llmc decode_ppl: the first num_samples rows, each tokenized alone and decoded token by token "
                 "through the KV cache (fresh per row); ppl = exp(mean loss over every decoded token)")


def prepare_eval_data(e: EvalCfg, tokenizer: Any) -> EvalData:
    import torch

    from accbench.data.text import load_texts, ppl_token_stream, recipe_description
    from accbench.evaluate.decode_ppl import decode_samples
    from accbench.fingerprints import tokens_id

    texts = load_texts(e.name, e.path, e.download, e.text_column, e.split)
    if e.type == "decode_ppl":
        samples = decode_samples(texts, tokenizer, e.num_samples)
        stream = torch.tensor([t for s in samples for t in s], dtype=torch.long)
        return EvalData(e, e.name, stream, DECODE_RECIPE, tokens_id(stream), samples)
    stream = ppl_token_stream(e.name, texts, tokenizer, e.seq_len, e.path)
    return EvalData(e, e.name, stream, recipe_description(e.name), tokens_id(stream))


def evaluate_perplexity(evals: list[EvalData], position: str, loaded: "LoadedModel", baseline: str, run_dir: Path,
                        earlier_ppl: list[PplEntry], earlier_fidelity: list[FidelityEntry], record: Record,
                        console: "Console", fps: dict[str, str], resumed: ResumeLog,
                        kv: "KVCacheQuantizer | None" = None) -> None:
    """Perplexity of `loaded` on each dataset of `evals` (those already in `earlier_ppl` with a matching
    fingerprint are kept, unless fidelity still needs the pass), plus fidelity against `baseline`. `fps`: the
    fingerprint of the model at each position; `kv`: the KV-cache quantization in force there, if any."""
    from accbench.evaluate.perplexity import perplexity

    for ev in evals:
        hook = None if ev.cfg.type == "decode_ppl" else _fidelity_hook(
            ev, position, baseline, run_dir, earlier_fidelity, record, console, fps, resumed)
        fp = ppl_fingerprint(fps.get(position), ev)
        stored = next((p for p in earlier_ppl if p.position == position and p.dataset == ev.name
                       and p.seq_len == ev.seq_len), None)
        have_ppl = stored is not None and check_entry(stored.fingerprint, fp, f"ppl {position}/{ev.name}", resumed)
        if have_ppl and hook is None:
            continue
        if ev.cfg.type == "decode_ppl":
            _decode_ppl(ev, position, loaded, kv, fp, record, console)
            continue
        with timed(record, f"ppl_{position}"):
            res = perplexity(loaded.model, ev.stream, ev.cfg.seq_len, ev.cfg.bs, loaded.device,
                             max_windows=ev.cfg.num_samples, desc=f"ppl {position} {ev.name}", on_logits=hook,
                             new_cache=kv.new_cache if kv is not None else None)
        if not have_ppl:
            record(PplEntry(position=position, dataset=ev.name, ppl=res.ppl, seq_len=res.seq_len,
                            windows=res.windows, tokens=res.tokens, recipe=ev.recipe, window_losses=res.window_losses,
                            fingerprint=fp))
            log.info("ppl %s %s = %.4f (%d windows)", position, ev.name, res.ppl, res.windows)
            console.print(f"[bold]{position}[/] {ev.name}: ppl = {res.ppl:.4f}  ({res.windows} windows x {res.seq_len})")
        if hook is not None:
            _finish_fidelity(hook, position, ev, baseline, record, console, fps.get(position))


def _decode_ppl(ev: EvalData, position: str, loaded: "LoadedModel", kv: "KVCacheQuantizer | None", fp: str,
                record: Record, console: "Console") -> None:
    """llmc's decode_ppl of one dataset at one position (evaluate/decode_ppl.py), recorded as a ppl entry of
    type decode_ppl: seq_len 0, one "window" per decoded token (window_losses: the token losses)."""
    from accbench.evaluate.decode_ppl import decode_perplexity

    assert ev.samples is not None
    with timed(record, f"decode_ppl_{position}"):
        res = decode_perplexity(loaded.model, ev.samples, loaded.device, kv.new_cache if kv is not None else None,
                                ev.cfg.num_eval_tokens, desc=f"decode_ppl {position} {ev.name}")
    record(PplEntry(position=position, dataset=ev.name, ppl=res.ppl, seq_len=0, windows=res.tokens,
                    tokens=res.tokens, recipe=ev.recipe, window_losses=res.token_losses, fingerprint=fp,
                    type="decode_ppl", samples=res.samples))
    kv_note = f", KV cache {kv.spec.method} {kv.spec.bit}-bit" if kv is not None else ""
    log.info("decode_ppl %s %s = %.4f (%d samples, %d tokens%s)", position, ev.name, res.ppl, res.samples,
             res.tokens, kv_note)
    console.print(f"[bold]{position}[/] {ev.name}: decode_ppl = {res.ppl:.4f}  ({res.samples} samples, "
                  f"{res.tokens} tokens decoded{kv_note})")


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
