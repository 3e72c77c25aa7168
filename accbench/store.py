"""The per-sample store: every request and its response, in SQLite in the run directory (samples.sqlite).

A response is keyed by a hash of (model fingerprint, task name, request kind, request), and stored with the
sample id of the document that asked it (the task's doc id, `<lm-eval task>/<doc_id>` for lm-eval), so a resumed
run answers finished requests from disk and recomputes only the rest, and `accbench rescore` can
recompute every metric from the stored responses without loading a model. Anything that changes a
request (data, prompt, few-shot, sampling seed) changes its key; a metric change does not.
Written in WAL mode, one transaction per answered engine call (evaluate/pool.py sizes them), so a crash
loses at most the call in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from accbench.errors import AccbenchError
from accbench.evaluate.requests import (GenerateRequest, RollingRequest, ScoreRequest, WindowLossRequest,
                                        request_fields)

if TYPE_CHECKING:
    from accbench.evaluate.pool import PooledAnswerer

STORE_FILE = "samples.sqlite"


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def model_fingerprint(path: str, position: str, dtype: str, transform: dict[str, Any] | None = None) -> str:
    """Identity of a model as evaluated at a position: its weight files, dtype, position and transform config."""
    from accbench.models import model_fingerprint as weights_fingerprint

    return weights_fingerprint(path, dtype, f"{position}|{json.dumps(transform, sort_keys=True, default=str)}")


class SampleStore:
    """Key/value rows of (request, response) with the model and task they belong to."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / STORE_FILE
        # tasks run in turn-taking threads (evaluate/pool.py): never two at once, but not always this thread
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, model TEXT, task TEXT, "
                        "kind TEXT, request TEXT, response TEXT, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS models (position TEXT PRIMARY KEY, fingerprint TEXT)")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(samples)")}
        if "sample_id" not in columns:  # stores written before sample ids were recorded
            self.db.execute("ALTER TABLE samples ADD COLUMN sample_id TEXT")
        self.db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for s in range(0, len(keys), 500):
                part = list(keys[s : s + 500])
                q = f"SELECT key, response FROM samples WHERE key IN ({','.join('?' * len(part))})"
                out.update((k, json.loads(v)) for k, v in self.db.execute(q, part))
        return out

    def put_many(self, rows: Sequence[tuple[str, str, str, str, Any, Any, str]]) -> None:
        """rows of (key, model fingerprint, task, kind, request, response, sample id), committed together."""
        now = time.time()
        with self._lock:
            self.db.executemany("INSERT OR REPLACE INTO samples (key, model, task, kind, request, response, created, "
                                "sample_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [(k, m, t, kind, json.dumps(req), json.dumps(resp), now, sid or None)
                                 for k, m, t, kind, req, resp, sid in rows])
            self.db.commit()

    def sample_rows(self, model: str, task: str) -> list[tuple[str | None, str, Any, Any]]:
        """(sample id, kind, request, response) of one model's task, in the order they were stored."""
        q = "SELECT sample_id, kind, request, response FROM samples WHERE model = ? AND task = ? ORDER BY rowid"
        with self._lock:
            return [(sid, kind, json.loads(req), json.loads(resp))
                    for sid, kind, req, resp in self.db.execute(q, (model, task))]

    def set_model(self, position: str, fingerprint: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (position, fingerprint))
            self.db.commit()

    def models(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT position, fingerprint FROM models"))

    def count(self, model: str | None = None, task: str | None = None) -> int:
        q, args = "SELECT COUNT(*) FROM samples WHERE 1=1", []
        if model:
            q, args = q + " AND model = ?", args + [model]
        if task:
            q, args = q + " AND task = ?", args + [task]
        return int(self.db.execute(q, args).fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _as_response(kind: str, value: Any) -> Any:
    return [float(value[0]), bool(value[1])] if kind == "score" else value


def _from_response(kind: str, value: Any) -> Any:
    return (float(value[0]), bool(value[1])) if kind == "score" else value


class StoredAnswerer:
    """Answers from the store first; asks `inner` (a request pool's client, evaluate/pool.PooledAnswerer) only
    for what is missing, and stores each engine call's answers as soon as they arrive. With inner=None it only
    reads (rescoring).

    Counts, for results.json: `reused` answers taken from the store, `computed` per kind, and `truncated`
    requests whose context the engine cut to fit the window (the engine reports the ones it answers; for
    reused ones the engine is asked whether it would cut them, so a resumed run counts the same)."""

    def __init__(self, store: SampleStore, model: str, task: str, inner: "PooledAnswerer | None"):
        self.store, self.model, self.task, self.inner = store, model, task, inner
        self.reused = 0
        self.truncated = 0
        self.computed: dict[str, int] = {}

    def score(self, requests: list[ScoreRequest]) -> list[tuple[float, bool]]:
        return self._answer("score", requests)

    def score_rolling(self, requests: list[RollingRequest]) -> list[float]:
        return self._answer("score_rolling", requests)

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        return self._answer("generate", requests)

    @property
    def tokenizer(self) -> Any:
        """The answering model's tokenizer; None when only reading (rescoring)."""
        return self.inner.tokenizer if self.inner is not None else None

    def window_losses(self, request: WindowLossRequest) -> list[float]:
        """A perplexity task's window losses, stored whole under one key (kind "perplexity")."""
        inner = self.inner
        return self._answer("perplexity", [request.key()],
                            None if inner is None else lambda: inner.window_losses(request))[0]

    def _answer(self, kind: str, requests: Sequence[Any], compute: Callable[[], Any] | None = None) -> list:
        reqs = [r if isinstance(r, dict) else request_fields(r) for r in requests]
        ids = [r.get("sample_id", "") if isinstance(r, dict) else r.sample_id for r in requests]
        keys = [_hash(self.model, self.task, kind, r) for r in reqs]
        found = self.store.get_many(keys)
        out: list[Any] = [_from_response(kind, found[k]) if k in found else None for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.reused += len(requests) - len(todo)
        if found and self.inner is not None and compute is None:
            self.truncated += sum(self.inner.truncates(kind, requests[i]) for i, k in enumerate(keys) if k in found)
        if todo and self.inner is None:
            raise AccbenchError(f"rescore: {len(todo)} of {len(keys)} '{kind}' responses of task '{self.task}' are "
                                "not in the store (the run did not finish them)",
                                "finish the run with `accbench run/eval ... --resume` first")

        def save(idx: list[int], answers: list, n_truncated: int = 0) -> None:  # idx: positions in todo
            rows = [todo[j] for j in idx]
            self.store.put_many([(keys[i], self.model, self.task, kind, reqs[i], _as_response(kind, a), ids[i])
                                 for i, a in zip(rows, answers)])
            for i, a in zip(rows, answers):
                out[i] = _from_response(kind, _as_response(kind, a))
            self.computed[kind] = self.computed.get(kind, 0) + len(rows)
            self.truncated += n_truncated

        if todo and compute is not None:
            save([0], [compute()])
        elif todo and self.inner is not None:  # the pool calls save as each engine call returns
            self.inner.answer(kind, [requests[i] for i in todo], save)
        return out
