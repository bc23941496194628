"""merge_datasets keeps every shard's documents (doc_idx shifted), validate_dataset rejects damage."""

import json
import struct

import merge_datasets
import mmidx
import mmidx_dataset
import numpy as np
import pytest
import validate_dataset


def _shard(path, docs, dtype=np.uint16):
    """docs: list of documents, each a list of items (token lists)."""
    with mmidx_dataset.DatasetWriter(path, dtype) as w:
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
    r = mmidx_dataset.DatasetReader(tmp_path / "out" / "merged")
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


def _expected_merge_of_a_and_b() -> tuple[bytes, bytes]:
    """The merge of the ``shards`` fixture, written out by hand from the MMIDIDX layout."""
    sizes, pointers, doc_idx = [2, 1, 2, 1, 3, 1, 1], [0, 4, 6, 10, 12, 18, 20], [0, 1, 3, 4, 5, 7]
    idx = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<QBQQ", 1, 8, 7, 6)  # version 1, uint16 (code 8), N=7 items, D=6 doc_idx entries
        + struct.pack("<7i", *sizes)
        + struct.pack("<7q", *pointers)  # byte offsets of 2-byte tokens
        + struct.pack("<6q", *doc_idx)
    )
    return struct.pack("<11H", *range(1, 12)), idx


@pytest.mark.parametrize("chunk_items", [None, 1, 2, 3])
def test_merge_bytes_are_exact(tmp_path, shards, chunk_items):
    """The streamed merge writes exactly these bytes, whatever the chunk size (chunks of 1 and 2 entries
    cut every input's arrays at every place)."""
    merge_datasets.merge(list(shards), str(tmp_path / "m"), chunk_items=chunk_items)
    data, idx = _expected_merge_of_a_and_b()
    assert (tmp_path / "m.bin").read_bytes() == data
    assert (tmp_path / "m.idx").read_bytes() == idx
    assert sorted(p.name for p in tmp_path.glob("m*")) == ["m.bin", "m.idx"]


def test_merge_equals_one_writer_given_every_item(tmp_path):
    """Many shards (some empty, some with empty or multi-item documents) merge to the bytes one NeoX index
    writer produces for all their items in order."""
    rng = np.random.default_rng(7)
    shards, all_docs = [], []
    for k in range(9):
        docs = [
            [rng.integers(0, 50000, rng.integers(0, 6)).tolist() for _ in range(rng.integers(1, 4))]
            for _ in range(int(rng.integers(0, 6)))
        ]
        shards.append(_shard(tmp_path / f"s{k}", docs))
        all_docs += docs
    reference = _shard(tmp_path / "reference", all_docs)
    merge_datasets.merge(shards, str(tmp_path / "m"), chunk_items=2)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"m{ext}").read_bytes() == open(reference + ext, "rb").read()


def test_merge_failing_midway_leaves_nothing(tmp_path, shards, monkeypatch):
    copy = merge_datasets._copy_bin
    calls = []

    def copy_then_fail(*args):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        copy(*args)

    monkeypatch.setattr(merge_datasets, "_copy_bin", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        merge_datasets.merge(list(shards), str(tmp_path / "m"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.idx", "b.bin", "b.idx"]


def test_merge_notices_an_input_changed_after_validation(tmp_path, shards, monkeypatch):
    scan = mmidx.scan_index

    def scan_then_truncate_a(path, **kw):
        info = scan(path, **kw)
        if str(path).endswith("b.idx"):  # the last input validated: now damage the first one
            raw = open(shards[0] + ".bin", "rb").read()
            open(shards[0] + ".bin", "wb").write(raw[:-2])
        return info

    monkeypatch.setattr(mmidx, "scan_index", scan_then_truncate_a)
    with pytest.raises(mmidx.CorruptDatasetError, match="a.bin: changed while being merged"):
        merge_datasets.merge(list(shards), str(tmp_path / "m"))
    assert not list(tmp_path.glob("m*"))


# --- --prefixes-from-manifest -------------------------------------------------------------------------


def _manifest(tmp_path, lines, name="tokenize.tsv"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture
def manifest_shards(tmp_path):
    """Two shards where the tokenize job puts them (output_prefix + _text_document), and its manifest."""
    (tmp_path / "tok").mkdir()
    _shard(tmp_path / "tok" / "c4-00000_text_document", [[[1, 2]], [[3], [4, 5]]])
    _shard(tmp_path / "tok" / "c4-00001_text_document", [[[6]], [[7, 8, 9]], [[10], [11]]])
    lines = [f"c4-0000{i}.json.gz\t/fsx/raw/c4-0000{i}.json.gz\t{tmp_path}/tok/c4-0000{i}" for i in (0, 1)]
    return _manifest(tmp_path, lines)


def test_prefixes_from_manifest(tmp_path, manifest_shards):
    assert mmidx.prefixes_from_manifest(manifest_shards) == [
        f"{tmp_path}/tok/c4-00000_text_document",
        f"{tmp_path}/tok/c4-00001_text_document",
    ]


def test_merge_cli_takes_the_manifest(tmp_path, manifest_shards, capsys):
    rc = merge_datasets.main(
        ["--output-prefix", str(tmp_path / "m"), "--prefixes-from-manifest", manifest_shards]
    )
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["documents"] == 5
    data, idx = _expected_merge_of_a_and_b()
    assert (tmp_path / "m.bin").read_bytes() == data and (tmp_path / "m.idx").read_bytes() == idx


def test_merge_cli_positional_inputs_come_before_the_manifest(tmp_path, manifest_shards, capsys):
    first = _shard(tmp_path / "first", [[[42]]])
    args = ["--prefixes-from-manifest", manifest_shards, "--output-prefix", str(tmp_path / "m"), first]
    assert merge_datasets.main(args) == 0
    assert list(json.loads(capsys.readouterr().out)["inputs"]) == [
        first,
        f"{tmp_path}/tok/c4-00000_text_document",
        f"{tmp_path}/tok/c4-00001_text_document",
    ]
    r = mmidx_dataset.DatasetReader(tmp_path / "m")
    assert r[0].tolist() == [42] and r.doc_idx.tolist() == [0, 1, 2, 4, 5, 6, 8]


def test_merge_cli_needs_an_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        merge_datasets.main(["--output-prefix", str(tmp_path / "m")])
    assert exc.value.code == 2 and "no input datasets" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["a\tin\tout", "", "c\tin\tout"], "line 2 is empty"),
        (["a\tin\tout", "b\tin/b.json.gz"], "line 2 has 2 tab-separated field"),
        (["a in out"], "line 1 has 1 tab-separated field"),
        (["a\tin\tout\textra"], "line 1 has 4 tab-separated field"),
        (["a\t\tout"], "line 1 has 3 tab-separated field"),
        ([], "has no lines"),
    ],
)
def test_garbled_manifest_is_named_with_its_line(tmp_path, capsys, lines, message):
    manifest = _manifest(tmp_path, lines)
    with pytest.raises(mmidx.ManifestError, match=message):
        mmidx.prefixes_from_manifest(manifest)
    assert (
        merge_datasets.main(["--output-prefix", str(tmp_path / "m"), "--prefixes-from-manifest", manifest])
        == 1
    )
    assert f"manifest {manifest}" in capsys.readouterr().err and not list(tmp_path.glob("m.*"))
    assert validate_dataset.main(["--prefixes-from-manifest", manifest]) == 1
    captured = capsys.readouterr()
    assert message.split()[-1] in captured.err and not json.loads(captured.out)["ok"]


def test_missing_manifest(tmp_path, capsys):
    missing = str(tmp_path / "nope.tsv")
    assert (
        merge_datasets.main(["--output-prefix", str(tmp_path / "m"), "--prefixes-from-manifest", missing])
        == 1
    )
    assert "nope.tsv: manifest not found" in capsys.readouterr().err


def test_validate_cli_takes_the_manifest(tmp_path, manifest_shards, capsys):
    merged = _shard(tmp_path / "merged", [[[1]]])
    assert (
        validate_dataset.main([merged, "--prefixes-from-manifest", manifest_shards, "--vocab-size", "50"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert list(out["datasets"]) == [
        merged,
        f"{tmp_path}/tok/c4-00000_text_document",
        f"{tmp_path}/tok/c4-00001_text_document",
    ]
    assert out["documents"] == 6 and out["datasets"][merged]["max_token_id"] == 1


def test_validate_cli_needs_a_dataset(capsys):
    with pytest.raises(SystemExit) as exc:
        validate_dataset.main([])
    assert exc.value.code == 2 and "no datasets" in capsys.readouterr().err


def test_validate_scans_tokens_in_chunks(tmp_path, monkeypatch):
    p = _shard(tmp_path / "v", [[[1, 2, 3]], [[4, 5]], [[6, 60000, 7]]])
    monkeypatch.setattr(validate_dataset, "SCAN_CHUNK", 2)
    with pytest.raises(mmidx.CorruptDatasetError, match="token 60000 at position 6"):
        validate_dataset.validate(p, vocab_size=50277)
    assert validate_dataset.validate(p, vocab_size=60001)["max_token_id"] == 60000
