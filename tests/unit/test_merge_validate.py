"""merge_datasets keeps every shard's documents (doc_idx shifted), validate_dataset rejects damage."""

import json

import merge_datasets
import mmidx
import numpy as np
import pytest
import validate_dataset


def _shard(path, docs, dtype=np.uint16):
    """docs: list of documents, each a list of items (token lists)."""
    with mmidx.DatasetWriter(path, dtype) as w:
        for doc in docs:
            for item in doc:
                w.add_item(item)
            w.end_document()
    return str(path)


@pytest.fixture
def shards(tmp_path):
    a = _shard(tmp_path / "a", [[[1, 2]], [[3], [4, 5]]])  # 2 docs, 3 items
    b = _shard(tmp_path / "b", [[[6]], [[7, 8, 9]], [[10], [11]]])  # 3 docs, 4 items
    return a, b


def test_merge_shifts_doc_idx_by_previous_items(tmp_path, shards):
    summary = merge_datasets.merge(list(shards), str(tmp_path / "out" / "merged"))
    r = mmidx.DatasetReader(tmp_path / "out" / "merged")
    assert r.doc_idx.tolist() == [0, 1, 3, 4, 5, 7]
    assert [r[i].tolist() for i in range(len(r))] == [[1, 2], [3], [4, 5], [6], [7, 8, 9], [10], [11]]
    assert summary["documents"] == 5 == r.num_docs and summary["tokens"] == 11 == r.num_tokens
    assert summary["inputs"][shards[1]] == {"documents": 3, "tokens": 6}


def test_merge_of_one_shard_is_a_byte_copy(tmp_path, shards):
    merge_datasets.merge([shards[0] + ".bin"], str(tmp_path / "copy"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"copy{ext}").read_bytes() == (tmp_path / f"a{ext}").read_bytes()


def test_merge_rejects_mixed_dtypes_and_leaves_nothing(tmp_path, shards):
    c = _shard(tmp_path / "c", [[[1]]], dtype=np.int32)
    with pytest.raises(ValueError, match="different dtypes"):
        merge_datasets.merge([shards[0], c], str(tmp_path / "m"))
    assert not list(tmp_path.glob("m.*"))


def test_merge_cli_rejects_truncated_input(tmp_path, shards, capsys):
    raw = open(shards[1] + ".bin", "rb").read()
    open(shards[1] + ".bin", "wb").write(raw[:-2])
    rc = merge_datasets.main(["--output-prefix", str(tmp_path / "m"), *shards])
    assert rc == 1 and "b.bin: truncated" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))


def test_validate_summary(shards, capsys):
    rc = validate_dataset.main([*shards, "--vocab-size", "50277"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["documents"] == 5 and out["tokens"] == 11
    assert out["datasets"][shards[0]] == {
        "documents": 2, "items": 3, "tokens": 5, "dtype": "uint16", "bin_bytes": 10, "max_token_id": 5,
    }  # fmt: skip


@pytest.mark.parametrize("ext", [".bin", ".idx"])
def test_validate_rejects_truncation(shards, capsys, ext):
    path = shards[0] + ext
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-1])
    rc = validate_dataset.main(list(shards))
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert rc == 1 and not out["ok"] and list(out["datasets"]) == [shards[1]]
    assert "truncated" in out["errors"][0] and f"a{ext}" in captured.err


def test_validate_rejects_token_outside_vocab(tmp_path):
    p = _shard(tmp_path / "v", [[[1, 60000]]])
    with pytest.raises(mmidx.CorruptDatasetError, match="token 60000 at position 1"):
        validate_dataset.validate(p, vocab_size=50277)


def test_validate_missing_dataset(tmp_path, capsys):
    assert validate_dataset.main([str(tmp_path / "nothing")]) == 1
    assert "nothing.idx" in json.loads(capsys.readouterr().out)["errors"][0]
