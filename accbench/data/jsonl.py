"""JSON-lines reading shared by every loader: (line number, object) pairs, and a DataError naming the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from accbench.errors import DataError


def iter_jsonl(path: str | Path, prefix: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line of a (optionally gzipped) jsonl file.

    A line that is not a JSON object stops the read with `<prefix><path>:<line>: ...`: nothing is skipped silently.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{prefix}{p}:{n}: not valid JSON ({exc.msg})",
                                    "each line must be one JSON object") from None
                if not isinstance(row, dict):
                    raise DataError(f"{prefix}{p}:{n}: expected a JSON object, got {type(row).__name__}",
                                    "each line must be one JSON object")
                yield n, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{prefix}cannot read {p}: {exc}", "check that it is a (gzipped) UTF-8 jsonl file") from None
