"""Evaluation text loaders: every supported format, and one clear error per kind of bad input."""

from __future__ import annotations

import json

import pytest

from accbench.data.text import load_texts
from accbench.errors import DataError


def test_txt_jsonl_parquet_and_disk(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    (tmp_path / "a.txt").write_text("hello world")
    assert load_texts("custom", str(tmp_path / "a.txt")) == ["hello world"]
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert load_texts("custom", str(tmp_path / "a.jsonl")) == ["x", "y"]
    pq.write_table(pa.table({"body": ["p", "q"]}), tmp_path / "a.parquet")
    assert load_texts("custom", str(tmp_path / "a.parquet"), text_column="body") == ["p", "q"]
    DatasetDict({"train": Dataset.from_dict({"text": ["t"]}), "test": Dataset.from_dict({"text": ["w1", "w2"]})}
                ).save_to_disk(str(tmp_path / "wiki"))
    assert load_texts("wikitext2", str(tmp_path / "wiki")) == ["w1", "w2"]  # llmc reads the test split
    Dataset.from_dict({"sentence": ["s1"]}).save_to_disk(str(tmp_path / "ptb"))
    assert load_texts("ptb", str(tmp_path / "ptb")) == ["s1"]  # ptb's column is 'sentence'


def test_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_texts("custom", str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_texts("custom", str(tmp_path / "bad.jsonl"))
    (tmp_path / "col.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="no field 'text'"):
        load_texts("custom", str(tmp_path / "col.jsonl"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        load_texts("custom", str(tmp_path / "empty.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported dataset format"):
        load_texts("custom", str(tmp_path / "x.csv"))
    (tmp_path / "notds").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_texts("wikitext2", str(tmp_path / "notds"))
    with pytest.raises(DataError, match="no hub source"):
        load_texts("mystery", download=True)
