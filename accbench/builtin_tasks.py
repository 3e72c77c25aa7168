"""Built-in downstream task data, made offline from the held-out (test) documents of ``builtin:pydoc``.

The built-in model can only be judged on what it was trained to do: continue Python reference text. So
its tasks are drawn from the same domain, from documents it never saw (the ``test`` split of
``accbench.builtin``; passages those documents quote verbatim from train documents are left out), and
shaped like the tasks users run on real models:

- ``pydoc-cloze`` (multiple choice, 4 choices, chance 0.25): a few lines of context ending just before a
  word, the true word against three words of the same length from other documents (length gives nothing
  away) that never follow the context's last word anywhere in the corpus (no item has two right answers).
- ``pydoc-nextword`` (generation): the same kind of context; the model must generate the next word.

Both measure what the small model does well (next-word statistics). Tried and dropped: the rest of a line
against length-matched rests of other lines (acc 0.24, chance), and completing a name that occurred
earlier in the same document (0 of 237: the model does not copy from its context).

Items are deterministic (they depend only on the corpus shipped with Python and fixed seeds) and are
read by the ``multiple_choice`` / ``generate`` tasks through ``path: builtin:NAME``, as if from a jsonl
file with the fields named below. Their ids are unique; choices carry no leading space (the task's
default ``target_delimiter`` adds one).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from typing import Any

BUILTIN_TASK_DATA: dict[str, dict[str, str]] = {
    "pydoc-cloze": {"type": "multiple_choice", "fields": "id, context, choices, label",
                    "doc": "the next word of held-out Python reference text against 3 words of the same length"},
    "pydoc-nextword": {"type": "generate", "fields": "id, prompt, target",
                       "doc": "generate the next word or name of held-out Python reference text"},
}

N_ITEMS = 400  # per task: a 95% interval of about +-0.05 on an accuracy near 0.5, and enough flips to see
_CONTEXT_CHARS = 300  # context: whole lines, about this many characters, ending just before the word
_MIN_WORD = 3
_WORD = re.compile(r"(?<=\S )[A-Za-z_]\w{%d,}(?=[\s.,;:)\"])" % (_MIN_WORD - 1))


def builtin_task_rows(name: str) -> list[dict[str, Any]]:
    """The documents of a built-in task data set, as a jsonl file would hold them."""
    if name not in BUILTIN_TASK_DATA:
        raise ValueError(f"unknown built-in task data {name!r}; valid: {', '.join(BUILTIN_TASK_DATA)}")
    return [dict(row) for row in _rows(name)]  # copies: a caller may change its own


@functools.lru_cache(maxsize=None)
def _rows(name: str) -> tuple[dict[str, Any], ...]:
    from accbench.builtin import builtin_texts

    spots = _spots(builtin_texts("pydoc-plain", "test"), "\n".join(builtin_texts("pydoc-plain", "train")))
    if name == "pydoc-nextword":
        return tuple(_nextword_items(spots))
    corpus = "\n".join(doc for split in ("train", "calib", "test") for doc in builtin_texts("pydoc-plain", split))
    words = re.findall(r"\w+", corpus.lower())
    return tuple(_cloze_items(spots, set(zip(words, words[1:]))))


def _spots(docs: list[str], train: str) -> list[tuple[int, str, str]]:
    """Every (document, context, next word) where a word of held-out text follows a space on a line.

    The help topics quote each other: about two thirds of the test documents' text also occurs verbatim in
    train documents. A spot whose last line and word occur in the train text is skipped, so the model has
    never seen the passage it is asked to continue.
    """
    out = []
    for d, doc in enumerate(docs):
        for m in _WORD.finditer(doc):
            start = doc.rfind("\n", 0, max(0, m.start() - _CONTEXT_CHARS)) + 1
            if start == 0 or not doc[start : m.start()].strip():
                continue  # the first lines of a document: too little context
            context = doc[start : m.start() - 1]
            if context[context.rfind("\n") + 1 :] + " " + m.group(0) in train:
                continue
            out.append((d, context, m.group(0)))
    return out


def _spread(spots: list, salt: str) -> list:
    """N_ITEMS spots spread over the documents, in a fixed pseudo-random order."""
    order = sorted(range(len(spots)), key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())
    return [spots[i] for i in sorted(order[:N_ITEMS])]


def _cloze_items(spots: list[tuple[int, str, str]], bigrams: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Distractors: same length, from other documents, and never seen after the context's last word anywhere in
    the corpus, so that no distractor is itself a fitting continuation (an item with two right answers)."""
    by_len: dict[int, list[tuple[int, str]]] = {}
    for d, _, word in spots:
        by_len.setdefault(len(word), []).append((d, word))
    rng = random.Random("pydoc-cloze")

    def pool(d: int, context: str, word: str) -> list[str]:
        prev = (re.findall(r"\w+", context[-40:]) or [""])[-1].lower()
        other = {w.lower(): w for dd, w in sorted(by_len[len(word)], reverse=True)
                 if dd != d and (prev, w.lower()) not in bigrams}
        other.pop(word.lower(), None)
        return sorted(other.values())  # one spelling per word: choices never differ only in case

    items = []
    for k, (d, context, word) in enumerate(_spread([s for s in spots if len(pool(*s)) >= 3], "cloze")):
        choices = rng.sample(pool(d, context, word), 3) + [word]
        rng.shuffle(choices)
        items.append({"id": f"cloze-{k}", "context": context, "choices": choices, "label": choices.index(word)})
    return items


def _nextword_items(spots: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    return [{"id": f"next-{k}", "prompt": context, "target": word}
            for k, (_, context, word) in enumerate(_spread(spots, "nextword"))]
