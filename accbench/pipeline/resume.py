"""Resume by fingerprint: what each stored result must match to be reused (accbench/fingerprints.py).

The model at each position has a fingerprint (its weights, dtype, tokenizer, and what transformed it); a
perplexity, fidelity, task or training entry's fingerprint adds that stage's inputs (the token stream, its
settings). `--resume` reuses an entry only when its fingerprint equals what the current config gives;
`--resume=strict` refuses a resume whose config changed in a key that can change a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.config import RunConfig, TaskCfg, dump_config
from accbench.errors import AccbenchError
from accbench.fingerprints import fingerprint
from accbench.results import FidelityEntry, PplEntry, TaskEntry

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.pipeline.positions import EvalData


def check_config_change(cfg: RunConfig, run_dir: Path, console: "Console", strict: bool) -> None:
    """On resume: say which config keys changed since the run; with `strict`, refuse when a number could change."""
    import yaml

    from accbench.fingerprints import NOT_NUMERIC, config_changes

    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        old = {}
    changes = config_changes(old, yaml.safe_load(dump_config(cfg)), NOT_NUMERIC if strict else ())
    if changes and strict:
        raise AccbenchError("--resume=strict: the config changed since this run was made:\n    "
                            + "\n    ".join(changes), "resume with the run's own config (its config.yaml), use "
                            "--resume to recompute what the change invalidates, or -o a new directory")
    if changes:
        console.print("resume: the config changed since the run (" + "; ".join(changes) + "); results made "
                      "with the old settings are recomputed", markup=False)


def _batch_id(batch: Any) -> str:
    """A calibration batch's identity: its token ids (and, padded, its attention mask)."""
    from accbench.data.chat import PaddedBatch
    from accbench.fingerprints import tokens_id

    if isinstance(batch, PaddedBatch):
        return tokens_id(batch.input_ids) + tokens_id(batch.attention_mask)
    return tokens_id(batch)


def position_fingerprints(cfg: RunConfig, model_path: str, calib_batches: Any = None) -> dict[str, str]:
    """The fingerprint of the model at each position: its weights, dtype, tokenizer, and what transformed it
    (the quant or sparse section; for a calibrated method also the calib section and the calibration tokens)."""
    from accbench.models import model_fingerprint

    m = cfg.model
    weights = {"weights": model_fingerprint(model_path, m.torch_dtype), "dtype": m.torch_dtype,
               "tokenizer": [m.tokenizer_path and model_fingerprint(m.tokenizer_path, ""), m.tokenizer_mode],
               "attn_implementation": m.attn_implementation, "trust_remote_code": m.trust_remote_code}
    out = {"pretrain": fingerprint(weights, "pretrain")}
    calib = [cfg.calib.model_dump(mode="json"), [_batch_id(b) for b in calib_batches]] if (
        cfg.calib is not None and calib_batches is not None) else None
    if cfg.quant is not None:
        # besides quant and calib: the linears kept in float (ignored_layers) and base.seed (QuaRot's rotation)
        rest = [cfg.ignored_layers.model_dump(mode="json") if cfg.ignored_layers else None, cfg.base.seed]
        for p in ("transformed", "fake_quant", "real_quant"):
            out[p] = fingerprint(weights, p, cfg.quant.model_dump(mode="json"), calib, rest)
        if cfg.quant.kvcache is not None:  # tasks at fake_quant apply it since this tag: older answers are stale
            out["fake_quant"] = fingerprint(out["fake_quant"], "kvcache on tasks")
        # the fake-quantized model without the KV-cache quantization: what it is does not depend on kvcache
        out["fake_quant_wo_kv"] = fingerprint(weights, "fake_quant_wo_kv",
                                              cfg.quant.model_dump(mode="json", exclude={"kvcache"}), calib, rest)
    elif cfg.sparse is not None:
        out["transformed"] = fingerprint(weights, "transformed", {"sparse": cfg.sparse.model_dump(mode="json")}, calib)
    return out


def ppl_fingerprint(model_fp: str | None, ev: "EvalData") -> str:
    """What a perplexity entry must carry: the model there, the token stream, the eval block's settings."""
    settings = ev.cfg.model_dump(mode="json", exclude={"eval_pos", "fidelity", "eval_token_consist"})
    return fingerprint(model_fp, ev.tokens_id, settings)


def recording_fingerprint(baseline_fp: str | None, ev: "EvalData", top_k: int) -> str:
    """What the baseline's recorded output distributions must carry."""
    return fingerprint(baseline_fp, ev.tokens_id, ev.cfg.seq_len, ev.cfg.num_samples, top_k)


def task_fingerprint(model_fp: str | None, task: TaskCfg) -> str:
    return fingerprint(model_fp, task.model_dump(mode="json"))


def position_pending(position: str, evals: list["EvalData"], tasks: list[TaskCfg], fps: dict[str, str],
                     baseline: str, ppl: list[PplEntry], fidelity: list[FidelityEntry],
                     task_entries: list[TaskEntry]) -> bool:
    """Whether evaluating `position` would compute anything (a stored result missing or not matching)."""
    model_fp = fps.get(position)
    for ev in evals:
        want = ppl_fingerprint(model_fp, ev)
        if not any(p.position == position and p.dataset == ev.name and p.seq_len == ev.seq_len
                   and p.fingerprint == want for p in ppl):
            return True
        top_k = ev.cfg.fidelity_top_k() if ev.cfg.type != "decode_ppl" else None
        if top_k is not None and position != baseline:
            want = fingerprint(model_fp, recording_fingerprint(fps.get(baseline), ev, top_k))
            if not any(f.position == position and f.dataset == ev.name and f.fingerprint == want for f in fidelity):
                return True
    return any(not any(e.model == position and e.task == t.name and e.fingerprint == task_fingerprint(model_fp, t)
                       for e in task_entries) for t in tasks)
