"""Load evaluation text the way llmc does, and build the perplexity token stream.

Sources: `builtin:NAME` (shipped with accbench, no download), llmc's names (`wikitext2`, `c4`, `ptb`) read
with `datasets.load_from_disk(path)` or from the hub with `download: true`, or a local `.txt`, `.jsonl`
or `.parquet` file (`name: custom`), or llmc's samples.json (`name: custom_ppl`). Every failure is a `DataError`
that names the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accbench.data.jsonl import iter_jsonl
from accbench.errors import DataError

BUILTIN_PREFIX = "builtin:"
# llmc's hub sources (download: true); real code, not exercised offline
HUB_SOURCES: dict[str, dict[str, Any]] = {
    "wikitext2": {"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "test"},
    "c4": {"path": "allenai/c4", "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
           "split": "validation"},
    "ptb": {"path": "ptb_text_only", "name": "penn_treebank", "split": "test"},
}
DEFAULT_SPLIT = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
DEFAULT_COLUMN = {"ptb": "sentence"}


def load_texts(name: str, path: str | None = None, download: bool = False, text_column: str = "text",
               split: str | None = None, builtin_split: str = "test") -> list[str]:
    """Return the documents of a dataset as a list of strings."""
    if name.startswith(BUILTIN_PREFIX):
        from accbench.builtin import builtin_texts

        try:
            return builtin_texts(name[len(BUILTIN_PREFIX):], split or builtin_split)
        except ValueError as exc:
            raise DataError(str(exc), "use builtin:pydoc or a dataset on disk") from None
    if name == "custom_ppl":  # llmc's custom samples.json: each question followed by its answer
        from accbench.data.chat import load_custom_samples

        return [q.question + q.answer for q in load_custom_samples(path)]
    column = DEFAULT_COLUMN.get(name, text_column) if text_column == "text" else text_column
    if download and not path:
        return _from_hub(name, column)
    if not path:
        raise DataError(f"dataset '{name}' has no path", "set path, or download: true for wikitext2/c4/ptb")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset path not found: {p}", "check the path (relative paths are from the current directory)")
    if p.is_dir():
        texts = _from_disk(p, column, split or DEFAULT_SPLIT.get(name))
    elif p.suffix == ".txt":
        texts = [read_utf8(p)]
    elif p.suffix == ".jsonl":
        texts = _from_jsonl(p, column)
    elif p.suffix == ".parquet":
        texts = _from_parquet(p, column)
    else:
        raise DataError(f"unsupported dataset format: {p.name}",
                        "use a datasets.save_to_disk folder, or a .txt, .jsonl or .parquet file")
    if not texts or not any(t.strip() for t in texts):
        raise DataError(f"dataset {p} is empty", "point path at a file with text in it")
    return texts


class NotUTF8(DataError):
    """A file that is not UTF-8 text; `line` is where the first bad byte is."""

    def __init__(self, path: Path, line: int, byte: int):
        super().__init__(f"{path} is not UTF-8 text (byte 0x{byte:02x} at line {line}): a binary file, or text in "
                         "another encoding", "save it as UTF-8 (iconv -f latin1 -t utf-8 FILE > FIXED)")
        self.line = line


def read_utf8(p: Path) -> str:
    """The file's text; NotUTF8 (a DataError) naming the line of the first byte that is not UTF-8."""
    raw = Path(p).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUTF8(Path(p), raw[: exc.start].count(b"\n") + 1, raw[exc.start]) from None


def _from_hub(name: str, column: str) -> list[str]:
    if name not in HUB_SOURCES:
        raise DataError(f"no hub source known for dataset '{name}'",
                        f"download: true works for {', '.join(HUB_SOURCES)}; otherwise give a path")
    from datasets import load_dataset

    src = dict(HUB_SOURCES[name])
    ds = load_dataset(src.pop("path"), **src)
    return _column(ds, column, name)


def _from_disk(p: Path, column: str, split: str | None) -> list[str]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{p} is not a dataset saved with datasets.save_to_disk: {exc}",
                        "save it with Dataset.save_to_disk, or use a .txt/.jsonl/.parquet file") from None
    if isinstance(ds, DatasetDict):
        if split and split in ds:
            ds = ds[split]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{p} has splits {list(ds)}; which one to use is ambiguous", "set split: in the section")
    return _column(ds, column, str(p))


def _column(ds: Any, column: str, where: str) -> list[str]:
    if column not in ds.column_names:
        raise DataError(f"{where} has no column '{column}' (columns: {ds.column_names})",
                        "set text_column to the column that holds the text")
    return list(ds[column])


def _from_jsonl(p: Path, column: str) -> list[str]:
    texts = []
    for i, row in iter_jsonl(p):
        if column not in row:
            raise DataError(f"{p}:{i}: no field '{column}'", "set text_column to the field holding the text")
        texts.append(str(row[column]))
    return texts


def _from_parquet(p: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{p} is not a readable parquet file: {exc}", "check the file") from None
    if column not in table.column_names:
        raise DataError(f"{p} has no column '{column}' (columns: {table.column_names})",
                        "set text_column to the column that holds the text")
    return [str(x) for x in table.column(column).to_pylist()]


def join_texts(name: str, texts: list[str]) -> str:
    """llmc's join: ptb and c4 sentences with ' ', custom_ppl samples with '\n', everything else with blank
    lines; c4 keeps 1100 docs."""
    if name == "custom_ppl":
        return "\n".join(texts)
    if name == "c4":
        return " ".join(texts[:1100])
    if name == "ptb":
        return " ".join(texts)
    return "\n\n".join(texts)


def ppl_token_stream(name: str, texts: list[str], tokenizer: Any, seq_len: int, where: str | None = None) -> Any:
    """Tokenize the joined text once (with the tokenizer's special tokens, as llmc); c4 is cut to 256 windows."""
    ids = tokenizer(join_texts(name, texts), return_tensors="pt").input_ids[0]
    if name == "c4":
        ids = ids[: 256 * seq_len]
    if ids.numel() < seq_len:
        raise DataError(f"dataset {where or repr(name)} has {ids.numel()} tokens, fewer than one window of "
                        f"seq_len={seq_len}",
                        "use more text, or a smaller seq_len in that eval block")
    return ids


def recipe_description(name: str) -> str:
    join = {"c4": "first 1100 docs joined with ' ', cut to 256*seq_len tokens", "ptb": "joined with ' '",
            "custom_ppl": "samples.json's question+answer joined with newlines"}
    return (f"llmc: {join.get(name, 'joined with blank lines')}; tokenized once; non-overlapping windows "
            "of seq_len, tail dropped; ppl = exp(mean window loss)")
