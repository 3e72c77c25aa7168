"""Disk faults as clear exits: a full disk or a read-only output is bad input (exit 2) naming the path, not a crash.

`as_disk_error(exc, fallback)` turns an OSError (or a library's error that wraps one: safetensors and torch
report "No space left on device (os error 28)" in their own exception types) into an AccbenchError saying
"no space left on <path>" or "cannot write <path>", or returns None when the exception is something else.
`atomic_write_text` is how small outputs are written: to a temporary file renamed into place, removed (and
its space freed) when the write fails, so a fault never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from accbench.errors import AccbenchError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES}
_WRAPPED = re.compile(r"(No space left on device|Disk quota exceeded|Read-only file system|os error (28|30|122))")


def as_disk_error(exc: BaseException, fallback: str | Path) -> AccbenchError | None:
    """The user-facing error for a disk fault, or None when `exc` is not one."""
    code = exc.errno if isinstance(exc, OSError) else None
    path = getattr(exc, "filename", None) or fallback
    if code is None:
        m = _WRAPPED.search(str(exc))
        if not m:
            return None
        code = errno.EROFS if ("Read-only" in m.group(1) or m.group(2) == "30") else errno.ENOSPC
    if code in _FULL:
        return AccbenchError(f"no space left on {path} (writing the run's outputs)",
                             "free space on that disk (or pass -o a directory on a larger one), then continue "
                             "with --resume: everything finished before the fault is kept")
    if code in _READ_ONLY:
        return AccbenchError(f"cannot write {path}: {os.strerror(code)}",
                             "pass -o (or save.save_path) a directory you can write to")
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename; on failure nothing half-written remains."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
