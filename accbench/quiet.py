"""Keep library chatter that does not concern an accbench user off the console.

- transformers' "Token indices sequence length is longer than the specified maximum sequence length ...
  will result in indexing errors": misleading here, perplexity tokenizes the whole text once and scores it in
  windows of seq_len (and tasks truncate on their own, reported as `truncated`).
- progress bars (tqdm, Hugging Face hub/datasets) only on a terminal: redirected to a log they are a stream
  of carriage returns.
lm-eval's "fatal: not a git repository" is handled where lm-eval runs (evaluate/tasks/lmeval.py).
"""

from __future__ import annotations

import logging
import os
import sys

_TOKEN_LENGTH = "Token indices sequence length is longer than"


class _DropTokenLengthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_TOKEN_LENGTH)


def install(stream: object = None) -> None:
    """Called once by the CLI before any library is imported."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, _DropTokenLengthWarning) for f in logger.filters):
        logger.addFilter(_DropTokenLengthWarning())
    out = stream if stream is not None else sys.stderr
    if not (hasattr(out, "isatty") and out.isatty()):
        for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")
