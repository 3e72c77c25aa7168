"""Fidelity to the baseline: per-token KL(baseline ‖ model), top-1 agreement and Δp of the correct token.

The baseline's output distributions are recorded during its own perplexity pass (`DistributionRecorder`,
a `perplexity(..., on_logits=...)` hook): per predicted token the top-k log-probabilities (float16), their
vocabulary indices, the log of the remaining (tail) mass, the log-probability of the correct token, the
argmax and the label, as .npy files in one directory. Another model's pass is then scored against it
(`FidelityComparer`) with the model's full distribution: KL exactly on the baseline's top-k tokens plus
the tail as one bucket, which is a lower bound of the true KL (docs/fidelity.md gives the gap).
`compare_recordings` scores two recordings against each other (two runs, no model needed).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accbench.errors import AccbenchError
from accbench.results import FidelityEntry

FORMAT = "accbench-fidelity/1"
# below this tail mass, 1 - sum(top-k) loses too many digits; the tail is summed directly instead
_EXACT_TAIL_BELOW = 1e-3
_NUMPY_TOPK_BELOW = 8192  # vocabulary size up to which top-k on CPU goes through numpy (faster there)
HIST_EDGES = [0.0] + [float(x) for x in np.logspace(-6, 2, 33)]  # nats; 4 bins per decade
_ARRAYS = ("top_logp", "top_idx", "tail_logp", "target_logp", "argmax", "labels")


def recording_dir(run_dir: str | Path, dataset: str, seq_len: int) -> Path:
    """Where a run keeps the baseline's distributions for one dataset and window length."""
    return Path(run_dir) / "fidelity" / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', dataset)}_{seq_len}"


def recording_complete(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def recording_fingerprint(path: str | Path) -> str | None:
    """The provenance fingerprint a finished recording was made with (None: none recorded)."""
    try:
        return json.loads((Path(path) / "meta.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def read_recording(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the (memory-mapped) arrays of a finished recording."""
    p = Path(path)
    if not recording_complete(p):
        raise AccbenchError(f"no finished fidelity recording in {p}",
                            "record the baseline first: run it with eval.fidelity: true")
    meta = json.loads((p / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise AccbenchError(f"{p}: recording format {meta.get('format')!r}, expected {FORMAT!r}",
                            "re-record the baseline with this accbench version")
    return meta, {k: np.load(p / f"{k}.npy", mmap_mode="r") for k in _ARRAYS}


# ----------------------------------------------------------------------------- the math, on torch tensors


def tail_logmass(logp: Any, idx: Any, top_logp: Any) -> Any:
    """log of the probability mass outside `idx` per row: log(1 - sum exp(top_logp)), summed directly where small."""
    import torch

    n, vocab = logp.shape
    if idx.shape[1] >= vocab:
        return torch.full((n,), -math.inf, device=logp.device)
    rest = 1.0 - top_logp.double().exp().sum(-1)
    if bool((rest < -1e-3).any()):
        raise ValueError("fidelity expects log-probabilities (log_softmax of the logits), got unnormalised logits")
    tail = rest.clamp_min(0).log().float()
    rows = (rest < _EXACT_TAIL_BELOW).nonzero().squeeze(1)
    if rows.numel():
        tail[rows] = torch.logsumexp(logp[rows].scatter(1, idx[rows].long(), -math.inf), -1)
    return tail


def bucketed_kl(p_top: Any, p_tail: Any, q_top: Any, q_tail: Any) -> Any:
    """KL(P ‖ Q) per row over k+1 buckets (k log-probs, then one tail log-mass), in float64.

    Both sides are renormalised over their buckets first (the stored float16 log-probs do not sum to 1
    exactly), so every row is a true KL between two distributions: >= 0, and 0 for identical inputs.
    Buckets with -inf on the P side contribute 0; a P bucket that Q gives no mass makes the row inf.
    """
    import torch

    lp = torch.cat([p_top.double(), p_tail.double()[:, None]], 1)
    lq = torch.cat([q_top.double(), q_tail.double()[:, None]], 1)
    lp = lp - torch.logsumexp(lp, 1, keepdim=True)
    lq = lq - torch.logsumexp(lq, 1, keepdim=True)
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(1).clamp_min(0)


def first_argmax(logp: Any, top_logp: Any, top_idx: Any, own_top: bool = True) -> Any:
    """Per row, the first maximal index (torch.argmax's answer), found among the log-probs at `top_idx`.

    `own_top`: `top_idx` are the row's own top-k, which hold its maxima; only rows where all k tie need the
    full row. Else (another model's top-k) rows whose maximum lies outside them take argmax over the row;
    a maximum tied inside and outside them is answered from inside.
    """
    best = top_logp.max(-1, keepdim=True).values
    tied = top_logp == best
    out = top_idx.masked_fill(~tied, logp.shape[1]).min(-1).values
    if top_idx.shape[1] >= logp.shape[1]:
        return out
    full = tied.all(-1)
    if not own_top:  # amax is ~5x cheaper than argmax on CPU
        full |= best.squeeze(1) < logp.amax(-1)
    rows = full.nonzero().squeeze(1)
    if rows.numel() > logp.shape[0] // 8:  # many rows: one pass beats copying them out
        return logp.argmax(-1)
    if rows.numel():
        out[rows] = logp[rows].argmax(-1).to(out.dtype)
    return out


def top_k_rows(x: Any, k: int) -> tuple[Any, Any]:
    """The k largest values per row and their indices, in no particular order (nothing downstream needs one)."""
    import torch

    n, vocab = x.shape
    if x.device.type != "cpu" or vocab > _NUMPY_TOPK_BELOW or k >= vocab:
        top = torch.topk(x, k, -1, sorted=False)
        return top.values, top.indices
    # on CPU, torch.topk costs ~8x a log_softmax at small vocabularies (the built-in model's); numpy's
    # value-only partition finds each row's k-th value much faster, and the tokens at or above it follow
    a = np.ascontiguousarray(x.numpy())
    kth = np.partition(a, vocab - k, axis=1)[:, vocab - k : vocab - k + 1]
    flat = np.flatnonzero(a >= kth)
    if flat.size != n * k:  # ties at the k-th value: keep exactly k per row
        cols = np.argpartition(a, vocab - k, axis=1)[:, -k:]
        return torch.from_numpy(np.take_along_axis(a, cols, 1)), torch.from_numpy(cols)
    return torch.from_numpy(a.reshape(-1)[flat].reshape(n, k)), torch.from_numpy((flat % vocab).reshape(n, k))


def summarize_logprobs(logp: Any, labels: Any, top_k: int) -> dict[str, Any]:
    """What the recorder keeps per token, from log-probabilities [n, V] (float32) and labels [n]; the top-k
    are stored unsorted (the argmax is kept on its own)."""
    top_logp, top_idx = top_k_rows(logp, min(top_k, logp.shape[1]))
    tail = tail_logmass(logp, top_idx, top_logp)
    return {"top_logp": top_logp, "top_idx": top_idx, "tail_logp": tail,
            "target_logp": logp.gather(1, labels[:, None].long()).squeeze(1),
            "argmax": first_argmax(logp, top_logp, top_idx)}


def score_logprobs(logq: Any, labels: Any, p_top: Any, p_idx: Any, p_tail: Any) -> dict[str, Any]:
    """A model's log-probabilities [n, V] against a baseline's top-k: per-token KL, argmax, target log-prob."""
    q_top = logq.gather(1, p_idx)
    q_tail = tail_logmass(logq, p_idx, q_top)
    return {"kl": bucketed_kl(p_top, p_tail, q_top, q_tail), "argmax": first_argmax(logq, q_top, p_idx, own_top=False),
            "target_logp": logq.gather(1, labels[:, None].long()).squeeze(1)}


# ----------------------------------------------------------------------------- recording and comparing


class DistributionRecorder:
    """`on_logits` hook for the baseline's pass: writes its compact distributions to `path` (.npy files).

    Written with ordinary buffered file writes in token order (never memory-mapped: a full disk is then an
    OSError naming the file, not a SIGBUS), into `path`.tmp, renamed into place once complete; a failed
    write removes the partial recording."""

    def __init__(self, path: str | Path, n_tokens: int, top_k: int, meta: dict[str, Any]):
        self.path, self.n_tokens, self.top_k, self.written = Path(path), n_tokens, top_k, 0
        self.meta = {"format": FORMAT, **meta, "tokens": n_tokens}
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.arrays: dict[str, Any] = {}  # name -> open file
        self.dtypes: dict[str, Any] = {}

    def _allocate(self, vocab_size: int) -> None:
        self.meta.update(top_k=min(self.top_k, vocab_size), vocab_size=vocab_size)
        k, n = self.meta["top_k"], self.n_tokens
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        idx_dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
        shapes = {"top_logp": ((n, k), np.float16), "top_idx": ((n, k), idx_dtype), "tail_logp": ((n,), np.float32),
                  "target_logp": ((n,), np.float32), "argmax": ((n,), np.int32), "labels": ((n,), np.int32)}
        for name, (shape, dtype) in shapes.items():
            f = open(self.tmp / f"{name}.npy", "wb")
            self.arrays[name] = f
            self.dtypes[name] = np.dtype(dtype)
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     "fortran_order": False, "shape": shape})

    def abort(self) -> None:
        """Drop a partial recording (its files and the space they hold)."""
        for f in self.arrays.values():
            try:
                f.close()
            except OSError:
                pass
        self.arrays = {}
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __call__(self, first: int, logp: Any, labels: Any) -> None:
        try:
            self._write(first, logp, labels)
        except OSError:
            self.abort()
            raise

    def _write(self, first: int, logp: Any, labels: Any) -> None:
        if not self.arrays:
            self._allocate(logp.shape[1])
        end = first + logp.shape[0]
        if logp.shape[1] != self.meta["vocab_size"] or end > self.n_tokens or first != self.written:
            raise AccbenchError(f"fidelity recorder: tokens {first}..{end} of {logp.shape[1]} log-probs do not fit "
                                f"{self.n_tokens} tokens of {self.meta['vocab_size']}",
                                "this is a bug in how the recorder was set up; please report it")
        s = summarize_logprobs(logp, labels, self.meta["top_k"])
        s["labels"] = labels
        for name, t in s.items():
            try:
                self.arrays[name].write(np.ascontiguousarray(t.cpu().numpy(), dtype=self.dtypes[name]).tobytes())
            except OSError as exc:  # name the file: a buffered write's error does not
                raise OSError(exc.errno, exc.strerror, self.arrays[name].name) from exc
        self.written += logp.shape[0]

    def finish(self) -> Path:
        """Flush and publish the recording (meta.json written last marks it complete)."""
        if self.written != self.n_tokens:
            self.abort()
            raise AccbenchError(f"fidelity recording got {self.written} tokens, expected {self.n_tokens}",
                                "this is a bug in how the recorder was set up; please report it")
        try:
            for f in self.arrays.values():
                f.close()
            self.arrays = {}
            (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=1))
        except OSError as exc:
            self.abort()
            raise OSError(exc.errno, exc.strerror, exc.filename or str(self.tmp)) from exc
        shutil.rmtree(self.path, ignore_errors=True)
        self.tmp.rename(self.path)
        return self.path


@dataclass
class TokenScores:
    """Per-token fidelity scores of one model against a baseline, in token order."""

    kl: np.ndarray  # nats
    agree: np.ndarray  # bool: same argmax
    base_target_logp: np.ndarray
    model_target_logp: np.ndarray
    tail_mass: np.ndarray  # baseline mass not compared token by token (the tail bucket)


class FidelityComparer:
    """`on_logits` hook for another model's pass: scores its full distributions against a recording."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta, self.rec = read_recording(path)
        n = self.meta["tokens"]
        self.kl, self.tail = np.zeros(n), np.zeros(n)
        self.agree, self.model_target = np.zeros(n, bool), np.zeros(n)
        self.seen = np.zeros(n, bool)

    def __call__(self, first: int, logp: Any, labels: Any) -> None:
        import torch

        n, vocab = logp.shape
        end = first + n
        if vocab != self.meta["vocab_size"] or end > self.meta["tokens"] or not np.array_equal(
                np.asarray(self.rec["labels"][first:end]), labels.cpu().numpy()):
            raise AccbenchError(f"this pass does not match the baseline recording {self.path} (tokens "
                                f"{first}..{end}, vocabulary {vocab} vs {self.meta['vocab_size']})",
                                "fidelity needs the same tokenizer, dataset, seq_len and num_samples as the "
                                "baseline; delete that recording to re-record it")

        def get(name: str, dtype: Any = None) -> Any:
            return torch.from_numpy(np.array(self.rec[name][first:end])).to(logp.device, dtype)

        p_tail = get("tail_logp")
        sc = score_logprobs(logp, labels, get("top_logp", torch.float32), get("top_idx", torch.long), p_tail)
        self.kl[first:end] = sc["kl"].cpu().numpy()
        self.tail[first:end] = p_tail.double().exp().cpu().numpy()
        self.agree[first:end] = (sc["argmax"] == get("argmax", torch.long)).cpu().numpy()
        self.model_target[first:end] = sc["target_logp"].cpu().numpy()
        self.seen[first:end] = True

    def scores(self) -> TokenScores:
        if not self.seen.all():
            raise AccbenchError(f"the pass covered {int(self.seen.sum())} of the {self.seen.size} recorded tokens "
                                f"in {self.path}", "evaluate the same windows (num_samples) as the baseline")
        return TokenScores(self.kl, self.agree, np.asarray(self.rec["target_logp"], np.float64),
                           self.model_target, self.tail)

    def entry(self, position: str) -> FidelityEntry:
        return fidelity_entry(self.scores(), position, self.meta, method="model")


def compare_recordings(path_a: str | Path, path_b: str | Path, chunk: int = 4096) -> FidelityEntry:
    """Fidelity of recording B against baseline recording A (both on the same windows), without models.

    Exact: top-1 agreement, Δp, ppl ratio. KL is over a coarser partition than a model pass uses: the tokens
    in both top-k lists individually, everything else as one bucket; still a lower bound of the true KL.
    """
    import torch

    ma, ra = read_recording(path_a)
    mb, rb = read_recording(path_b)
    for key in ("vocab_size", "tokens", "seq_len"):
        if ma.get(key) != mb.get(key):
            raise AccbenchError(f"recordings differ in {key}: {ma.get(key)} ({path_a}) vs {mb.get(key)} ({path_b})",
                                "compare runs evaluated with the same tokenizer, dataset, seq_len and num_samples")
    if not np.array_equal(ra["labels"], rb["labels"]):
        raise AccbenchError(f"recordings {path_a} and {path_b} are not on the same token windows",
                            "compare runs evaluated on the same dataset with the same tokenizer")
    n = ma["tokens"]
    kl, tail = np.zeros(n), np.zeros(n)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        a_lp, b_lp = (torch.from_numpy(np.array(r["top_logp"][s:e], np.float32)) for r in (ra, rb))
        a_idx, b_idx = (torch.from_numpy(np.array(r["top_idx"][s:e], np.int64)) for r in (ra, rb))
        a_tail, b_tail = (torch.from_numpy(np.array(r["tail_logp"][s:e], np.float32)) for r in (ra, rb))
        # normalise each side over its own k+1 buckets before regrouping
        a_lp, a_tail = _normalised(a_lp, a_tail)
        b_lp, b_tail = _normalised(b_lp, b_tail)
        eq = a_idx[:, :, None] == b_idx[:, None, :]  # [n, ka, kb]
        in_b, in_a = eq.any(2), eq.any(1)
        q_at = b_lp.gather(1, eq.int().argmax(2))
        ninf = torch.tensor(-math.inf, dtype=torch.float64)
        p_top = torch.where(in_b, a_lp, ninf)
        q_top = torch.where(in_b, q_at, ninf)
        p_rest = torch.logsumexp(torch.cat([torch.where(in_b, ninf, a_lp), a_tail[:, None]], 1), 1)
        q_rest = torch.logsumexp(torch.cat([torch.where(in_a, ninf, b_lp), b_tail[:, None]], 1), 1)
        kl[s:e] = bucketed_kl(p_top, p_rest, q_top, q_rest).numpy()
        tail[s:e] = p_rest.exp().numpy()
    scores = TokenScores(kl, np.asarray(ra["argmax"]) == np.asarray(rb["argmax"]),
                         np.asarray(ra["target_logp"], np.float64), np.asarray(rb["target_logp"], np.float64), tail)
    entry = fidelity_entry(scores, mb.get("position", "?"), ma, method="recordings")
    entry.top_k = min(ma["top_k"], mb["top_k"])  # type: ignore[attr-defined]
    return entry


def _normalised(top: Any, tail: Any) -> tuple[Any, Any]:
    import torch

    all_ = torch.cat([top.double(), tail.double()[:, None]], 1)
    all_ = all_ - torch.logsumexp(all_, 1, keepdim=True)
    return all_[:, :-1], all_[:, -1]


# ----------------------------------------------------------------------------- aggregation


def kld_histogram(kl: np.ndarray) -> dict[str, list]:
    """Counts of per-token KL in log-spaced bins (edges in nats; first bin [0, 1e-6), last bin open above)."""
    finite = np.clip(kl[np.isfinite(kl)], 0, HIST_EDGES[-1])
    counts, _ = np.histogram(finite, bins=HIST_EDGES)
    return {"edges": HIST_EDGES, "counts": counts.tolist(), "infinite": int((~np.isfinite(kl)).sum())}


def fidelity_entry(sc: TokenScores, position: str, meta: dict[str, Any], method: str) -> FidelityEntry:
    """Aggregate per-token scores into the results.json entry."""
    n = sc.kl.size
    dp = np.exp(sc.model_target_logp) - np.exp(sc.base_target_logp)  # model minus baseline
    return FidelityEntry(
        position=position, dataset=meta["dataset"], seq_len=meta["seq_len"], baseline=meta.get("position"),
        top_k=meta["top_k"], method=method,
        kld_mean=float(sc.kl.mean()), kld_stderr=float(sc.kl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        kld_median=float(np.median(sc.kl)), kld_p99=float(np.quantile(sc.kl, 0.99)), kld_max=float(sc.kl.max()),
        top1_agreement=float(sc.agree.mean()), delta_p_mean=float(dp.mean()),
        delta_p_rms=float(np.sqrt((dp ** 2).mean())),
        ppl_ratio=float(math.exp(sc.base_target_logp.mean() - sc.model_target_logp.mean())),
        tail_mass_mean=float(sc.tail_mass.mean()), tokens=n, kld_hist=kld_histogram(sc.kl))
