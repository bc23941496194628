"""mmidx: NeoX's MMIDIDX layout byte for byte, round trips, atomic writes, and corruption detection."""

import struct

import mmidx
import mmidx_dataset
import numpy as np
import pytest


def _write(prefix, docs, dtype=np.uint16):
    with mmidx_dataset.DatasetWriter(prefix, dtype) as w:
        for doc in docs:
            w.add_document(doc)
    return str(prefix)


def test_index_layout_matches_neox_spec():
    """Header fields at the documented offsets, then int32 sizes, int64 pointers, int64 doc_idx."""
    sizes, doc_idx = [3, 0, 2], [0, 2, 3]
    raw = mmidx.encode_index(sizes, doc_idx, np.uint16)
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", raw, 9) == (1,)
    assert raw[17] == 8  # uint16's code
    assert struct.unpack_from("<QQ", raw, 18) == (3, 3)
    assert struct.unpack_from("<3i", raw, 34) == (3, 0, 2)
    assert struct.unpack_from("<3q", raw, 46) == (0, 6, 6)  # byte offsets: 2-byte tokens
    assert struct.unpack_from("<3q", raw, 70) == (0, 2, 3)
    assert len(raw) == 94


def test_int32_pointers_use_itemsize():
    raw = mmidx.encode_index([2, 5], [0, 1, 2], np.int32)
    assert raw[17] == 4
    assert struct.unpack_from("<2q", raw, 34 + 8) == (0, 8)


@pytest.mark.parametrize(("vocab", "dtype"), [(50277, np.uint16), (65499, np.uint16), (65500, np.int32)])
def test_best_fitting_dtype(vocab, dtype):
    assert mmidx.best_fitting_dtype(vocab) == np.dtype(dtype)


def test_round_trip(tmp_path):
    docs = [[1, 2, 3], [65535], [], list(range(1000))]
    prefix = _write(tmp_path / "d", docs)
    r = mmidx_dataset.DatasetReader(prefix)
    assert len(r) == 4 and r.num_docs == 4 and r.num_tokens == 1004
    assert [r[i].tolist() for i in range(4)] == docs
    assert r[-1].tolist() == docs[-1]
    assert r.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert (tmp_path / "d.bin").stat().st_size == 1004 * 2
    with pytest.raises(IndexError):
        r[4]


def test_add_documents_equals_one_by_one(tmp_path):
    docs = [[5, 6], [7], [8, 9, 10]]
    a = _write(tmp_path / "a", docs)
    with mmidx_dataset.DatasetWriter(tmp_path / "b", np.uint16) as w:
        w.add_documents(np.array([5, 6, 7, 8, 9, 10]), np.array([2, 1, 3]))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes(), a


def test_multi_item_documents(tmp_path):
    with mmidx_dataset.DatasetWriter(tmp_path / "m", np.int32) as w:
        w.add_item([1, 2])
        w.add_item([3])
        w.end_document()
        w.add_item([4])
        w.end_document()
    r = mmidx_dataset.DatasetReader(tmp_path / "m")
    assert r.doc_idx.tolist() == [0, 2, 3] and r.num_docs == 2 and len(r) == 3
    assert r[2].tolist() == [4] and r.dtype == np.int32


def test_writer_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with mmidx_dataset.DatasetWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([1, 2])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_existing_output_atomically(tmp_path):
    _write(tmp_path / "x", [[1]])
    _write(tmp_path / "x", [[2, 3]])
    assert mmidx_dataset.DatasetReader(tmp_path / "x")[0].tolist() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin", "x.idx"]


def test_write_index_and_read_index(tmp_path):
    path = tmp_path / "i.idx"
    mmidx.write_index(path, [4, 1], [0, 2], np.uint16)
    ix = mmidx.read_index(path)
    assert ix.dtype == np.uint16 and ix.sizes.tolist() == [4, 1] and ix.pointers.tolist() == [0, 8]
    assert ix.num_docs == 1 and ix.num_tokens == 5


@pytest.fixture
def good(tmp_path):
    return _write(tmp_path / "g", [[1, 2, 3], [4, 5]])


def _corrupt(prefix, offset, data):
    path = f"{prefix}.idx"
    raw = bytearray(open(path, "rb").read())
    raw[offset : offset + len(data)] = data
    open(path, "wb").write(bytes(raw))


CORRUPTIONS = [
    (0, b"XX", "bad magic"),
    (9, struct.pack("<Q", 2), "unsupported version"),
    (17, b"\x09", "unknown dtype code"),
    (18, struct.pack("<Q", 3), "truncated"),
    (34, struct.pack("<i", -1), "negative size -1 at item 0"),
    (34 + 4, struct.pack("<i", -1), "negative size -1 at item 1"),
    (34 + 8 + 8, struct.pack("<q", 7), "pointer of item 1 is 7"),
    (34 + 8 + 16 + 16, struct.pack("<q", 5), "doc_idx ends at 5"),
    (34 + 8 + 16, struct.pack("<q", 1), r"doc_idx\[0\] is 1"),
]


@pytest.mark.parametrize(("offset", "data", "message"), CORRUPTIONS)
def test_read_index_rejects_corruption(good, offset, data, message):
    _corrupt(good, offset, data)
    with pytest.raises(mmidx.CorruptDatasetError, match=message) as err:
        mmidx.read_index(f"{good}.idx")
    assert "g.idx" in str(err.value)


@pytest.mark.parametrize("chunk_items", [1, 2, None])
@pytest.mark.parametrize(("offset", "data", "message"), CORRUPTIONS)
def test_scan_index_rejects_the_same_corruption_at_any_chunk_size(good, offset, data, message, chunk_items):
    """The streamed check (chunks of 1 or 2 entries split the arrays everywhere) says what read_index says."""
    _corrupt(good, offset, data)
    with pytest.raises(mmidx.CorruptDatasetError, match=message):
        mmidx.scan_index(f"{good}.idx", chunk_items=chunk_items)


@pytest.mark.parametrize("chunk_items", [1, 2, 3, None])
def test_scan_index_counts(tmp_path, chunk_items):
    with mmidx_dataset.DatasetWriter(tmp_path / "s", np.int32) as w:
        for doc in ([[1, 2], [3]], [], [[4, 5, 6]], [[]], [[7]]):
            for item in doc:
                w.add_item(item)
            w.end_document()
    info = mmidx.scan_index(tmp_path / "s.idx", chunk_items=chunk_items)
    full = mmidx.read_index(tmp_path / "s.idx")
    assert (info.dtype, info.num_items, info.num_docs, info.num_tokens) == (np.dtype(np.int32), 5, 5, 7)
    assert (full.num_items, full.num_docs, full.num_tokens) == (5, 5, 7)
    assert info.file_size == (tmp_path / "s.idx").stat().st_size
    mmidx.check_data_size(tmp_path / "s", info)


def test_doc_idx_decreasing_across_a_chunk_boundary(tmp_path):
    prefix = _write(tmp_path / "d", [[1], [2], [3]])  # doc_idx [0, 1, 2, 3]
    _corrupt(prefix, 34 + 12 * 3 + 16, struct.pack("<q", 0))  # doc_idx [0, 1, 0, 3]
    for chunk_items in (1, 2, 3):
        with pytest.raises(mmidx.CorruptDatasetError, match="doc_idx decreases at entry 2"):
            mmidx.scan_index(f"{prefix}.idx", chunk_items=chunk_items)


def test_pointer_error_in_a_later_chunk_names_the_item(tmp_path):
    prefix = _write(tmp_path / "p", [[1, 2], [3], [4, 5, 6], [7]])  # pointers 0, 4, 6, 12
    _corrupt(prefix, 34 + 16 + 8 * 3, struct.pack("<q", 13))
    with pytest.raises(mmidx.CorruptDatasetError, match="pointer of item 3 is 13"):
        mmidx.scan_index(f"{prefix}.idx", chunk_items=2)


def test_encode_header_is_the_index_header():
    assert mmidx.encode_header(np.uint16, 3, 3) == mmidx.encode_index([3, 0, 2], [0, 2, 3], np.uint16)[:34]


def test_pread_exact_names_the_file_at_eof(good):
    with open(f"{good}.bin", "rb") as f:
        assert mmidx.pread_exact(f.fileno(), 4, 2, f"{good}.bin") == struct.pack("<2H", 2, 3)
        with pytest.raises(mmidx.CorruptDatasetError, match="g.bin: truncated"):
            mmidx.pread_exact(f.fileno(), 12, 0, f"{good}.bin")


def test_read_index_rejects_every_truncation(good):
    raw = open(f"{good}.idx", "rb").read()
    for cut in range(len(raw)):
        open(f"{good}.idx", "wb").write(raw[:cut])
        with pytest.raises(mmidx.CorruptDatasetError):
            mmidx.read_index(f"{good}.idx")
        with pytest.raises(mmidx.CorruptDatasetError):
            mmidx.scan_index(f"{good}.idx")


def test_trailing_bytes_rejected(good):
    with open(f"{good}.idx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(mmidx.CorruptDatasetError, match="trailing bytes"):
        mmidx.read_index(f"{good}.idx")


def test_reader_rejects_short_bin(good):
    raw = open(f"{good}.bin", "rb").read()
    open(f"{good}.bin", "wb").write(raw[:-1])
    with pytest.raises(mmidx.CorruptDatasetError, match="truncated"):
        mmidx_dataset.DatasetReader(good)


def test_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        mmidx_dataset.DatasetReader(tmp_path / "nope")


def test_two_writers_of_one_dataset_never_share_a_temporary_file(tmp_path):
    """Two jobs building the same dataset at once (two runs with one selection) each write their own
    temporary files; the last rename wins and the result is whole."""
    docs = [[1, 2, 3], [4, 5]]
    a = mmidx_dataset.DatasetWriter(tmp_path / "d", np.uint16)
    b = mmidx_dataset.DatasetWriter(tmp_path / "d", np.uint16)
    assert a._bin_tmp != b._bin_tmp and a._idx_tmp != b._idx_tmp
    for writer in (a, b):
        for doc in docs:
            writer.add_document(doc)
    a.close()
    b.close()
    reader = mmidx_dataset.DatasetReader(tmp_path / "d")
    assert [list(reader[i]) for i in range(2)] == docs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]
