"""GPT-NeoX's MMIDIDX ``.bin``/``.idx`` token dataset format, with numpy only.

Why this exists: the cluster-side tools (tokenizer, merge, validate) and the stand-in trainer must
read and write exactly the files NeoX's ``megatron/data/indexed_dataset.py`` reads, without importing
NeoX (it drags torch and megatron in). Layout, little-endian (see docs/reference/neox.md):

``.bin``  the token arrays of all items concatenated, no header.
``.idx``  magic ``b"MMIDIDX\\x00\\x00"`` | uint64 version=1 | uint8 dtype code | uint64 N items |
          uint64 D = len(doc_idx) | int32[N] sizes | int64[N] pointers (byte offsets) | int64[D] doc_idx.

Writes never leave a file under its final name unless it is complete: data goes to a ``*.tmp.<unique>``
file (:func:`temporary_name`) that is renamed into place when it is whole (:func:`write_index`). Whole
datasets are written and read by :mod:`mmidx_dataset` (``DatasetWriter``, ``DatasetReader``).

Memory: every check walks the index arrays in chunks of :data:`CHUNK_ITEMS` items, so validating a
dataset of any size needs a bounded amount of memory; :func:`scan_index` reads the file with ``pread``
(nothing stays mapped, RSS stays flat) and returns only counts, which is what a merge of many shards
keeps per input. :func:`read_index` maps the arrays for random access (training).
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8  # 34 bytes
#: Items per step of the chunked index checks (and of merge_datasets' copies): about 40 B of temporaries
#: per item, so ~10 MB at most, whatever the number of items (reads of 1 and 2 MB).
CHUNK_ITEMS = 1 << 18
#: The suffix NeoX's preprocess_data appends to ``--output-prefix`` for the ``text`` key.
TEXT_DOCUMENT_SUFFIX = "_text_document"

#: NeoX's dtype codes (indexed_dataset.dtypes). Code 6 is float32 in NeoX (np.float was removed).
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}


class CorruptDatasetError(ValueError):
    """A ``.idx``/``.bin`` pair is corrupt, truncated or inconsistent (the message names the file)."""


class ManifestError(ValueError):
    """A tokenize manifest line is not ``name<TAB>input<TAB>output_prefix`` (the message names the line)."""


def best_fitting_dtype(vocab_size: int | None) -> np.dtype:
    """NeoX's rule (indexed_dataset.best_fitting_dtype): uint16 when vocab < 65500, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def dtype_code(dtype) -> int:
    """The on-disk code for ``dtype``; raises ValueError for a dtype NeoX cannot read."""
    dt = np.dtype(dtype)
    if dt not in _CODE_OF:
        raise ValueError(f"dtype {dt} has no MMIDIDX code (allowed: {sorted(map(str, _CODE_OF))})")
    return _CODE_OF[dt]


def pointers_for(sizes: np.ndarray, dtype) -> np.ndarray:
    """Byte offsets of each item in ``.bin``: exclusive cumulative sum of sizes times itemsize."""
    sizes = np.asarray(sizes, dtype=np.int64)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1] * np.dtype(dtype).itemsize, out=pointers[1:])
    return pointers


def data_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def prefixes_from_manifest(path: str | os.PathLike) -> list[str]:
    """The dataset prefixes a tokenize manifest's shards get, in file order.

    The manifest is the tokenize array's: one shard per line, ``name<TAB>input<TAB>output_prefix``;
    preprocess_data writes ``output_prefix + "_text_document"`` (``.bin``/``.idx``). Every line must have
    exactly three non-empty fields; an empty or garbled line, or a manifest with no line, raises
    :class:`ManifestError` naming the file and the line number (1-based)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: manifest not found") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise ManifestError(f"manifest {path} has no lines (expected name<TAB>input<TAB>output_prefix)")
    prefixes = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            what = (
                "is empty"
                if not line.strip()
                else f"has {len(fields)} tab-separated field(s): {line[:200]!r}"
            )
            raise ManifestError(
                f"manifest {path} line {line_no} {what}; expected name<TAB>input<TAB>output_prefix, "
                "three non-empty fields"
            )
        prefixes.append(fields[2] + TEXT_DOCUMENT_SUFFIX)
    return prefixes


@dataclass(frozen=True)
class IndexHeader:
    """An ``.idx`` file's header, checked against the file's length: where its three arrays lie."""

    path: Path
    dtype: np.dtype
    num_items: int  # N
    doc_idx_len: int  # D

    @property
    def num_docs(self) -> int:
        return max(self.doc_idx_len - 1, 0)

    @property
    def sizes_offset(self) -> int:
        return HEADER_SIZE

    @property
    def pointers_offset(self) -> int:
        return HEADER_SIZE + 4 * self.num_items

    @property
    def doc_idx_offset(self) -> int:
        return HEADER_SIZE + 12 * self.num_items

    @property
    def file_size(self) -> int:
        return index_file_size(self.num_items, self.doc_idx_len)


@dataclass(frozen=True)
class IndexInfo(IndexHeader):
    """A fully validated ``.idx`` without its arrays: a few integers (see :func:`scan_index`)."""

    num_tokens: int


@dataclass(frozen=True)
class Index:
    """The parsed content of one ``.idx`` file (arrays are read-only memmaps or arrays)."""

    dtype: np.dtype
    sizes: np.ndarray  # int32[N]
    pointers: np.ndarray  # int64[N]
    doc_idx: np.ndarray  # int64[D]
    total_tokens: int | None = field(default=None, repr=False, compare=False)  # known once checked

    @property
    def num_items(self) -> int:
        return len(self.sizes)

    @property
    def num_docs(self) -> int:
        """Documents = len(doc_idx) - 1 (doc_idx starts with 0 and ends with N)."""
        return max(len(self.doc_idx) - 1, 0)

    @property
    def num_tokens(self) -> int:
        if self.total_tokens is not None:
            return self.total_tokens
        return sum(
            int(np.asarray(self.sizes[i : i + CHUNK_ITEMS], dtype=np.int64).sum())
            for i in range(0, len(self.sizes), CHUNK_ITEMS)
        )


def index_file_size(num_items: int, doc_idx_len: int) -> int:
    """Bytes of an ``.idx`` holding N items and D doc_idx entries."""
    return HEADER_SIZE + 12 * num_items + 8 * doc_idx_len


def encode_header(dtype, num_items: int, doc_idx_len: int) -> bytes:
    """The 34-byte ``.idx`` header."""
    return MAGIC + struct.pack("<QBQQ", VERSION, dtype_code(dtype), num_items, doc_idx_len)


def encode_index(sizes, doc_idx, dtype) -> bytes:
    """The exact bytes NeoX's ``MMapIndexedDataset.Index.writer`` produces (pure, for small indexes)."""
    sizes = np.asarray(sizes)
    return b"".join(index_chunks(sizes, np.asarray(doc_idx), dtype))


def index_chunks(sizes: np.ndarray, doc_idx: np.ndarray, dtype):
    header = encode_header(dtype, len(sizes), len(doc_idx))
    if sizes.size and (sizes.min() < 0 or sizes.max() > np.iinfo(np.int32).max):
        raise ValueError("sizes must fit in int32 and be >= 0")
    yield header
    yield np.asarray(sizes, dtype="<i4").tobytes(order="C")
    yield pointers_for(sizes, dtype).astype("<i8").tobytes(order="C")
    yield np.asarray(doc_idx, dtype="<i8").tobytes(order="C")


def temporary_name(final: Path) -> Path:
    """A name beside ``final`` that no other writer uses: two jobs writing the same dataset at once (on one
    node or two: the pid alone is not unique across nodes) never write into each other's file."""
    return final.with_name(f"{final.name}.tmp.{uuid.uuid4().hex[:12]}")


def write_index(idx_path: str | os.PathLike, sizes, doc_idx, dtype) -> None:
    """Write an ``.idx`` atomically (a unique temporary name, then rename); pointers come from sizes."""
    idx_path = Path(idx_path)
    tmp = temporary_name(idx_path)
    try:
        with open(tmp, "wb") as f:
            for chunk in index_chunks(np.asarray(sizes), np.asarray(doc_idx), dtype):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, idx_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_header(idx_path: str | os.PathLike) -> IndexHeader:
    """Parse an ``.idx`` header: magic, version, dtype code, and that the file length equals header +
    arrays exactly (catches truncation). Raises :class:`CorruptDatasetError` naming the file."""
    idx_path = Path(idx_path)
    try:
        file_size = idx_path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{idx_path}: index file not found") from None
    with open(idx_path, "rb") as f:
        header = f.read(HEADER_SIZE)
    if len(header) < len(MAGIC) or header[: len(MAGIC)] != MAGIC:
        raise CorruptDatasetError(f"{idx_path}: bad magic {header[:9]!r}, not an MMIDIDX index")
    if len(header) < HEADER_SIZE:
        raise CorruptDatasetError(f"{idx_path}: truncated header ({len(header)} of {HEADER_SIZE} bytes)")
    (version,) = struct.unpack_from("<Q", header, 9)
    if version != VERSION:
        raise CorruptDatasetError(f"{idx_path}: unsupported version {version} (expected {VERSION})")
    (code,) = struct.unpack_from("<B", header, 17)
    if code not in DTYPE_CODES:
        raise CorruptDatasetError(f"{idx_path}: unknown dtype code {code}")
    n, d = struct.unpack_from("<QQ", header, 18)
    expected = index_file_size(n, d)
    if file_size != expected:
        what = "truncated" if file_size < expected else "has trailing bytes"
        raise CorruptDatasetError(
            f"{idx_path}: {what}: {file_size} bytes, header says N={n} items and D={d} doc_idx entries "
            f"({expected} bytes)"
        )
    return IndexHeader(path=idx_path, dtype=DTYPE_CODES[code], num_items=n, doc_idx_len=d)


def read_index(idx_path: str | os.PathLike, *, mmap: bool = True) -> Index:
    """Parse and structurally validate an ``.idx`` file, returning its arrays (memmaps by default).

    Checks the header (:func:`read_header`), that sizes are non-negative, that pointers equal the
    cumulative sizes, and that doc_idx starts at 0, is non-decreasing and ends at N, in chunks of
    :data:`CHUNK_ITEMS`. Raises :class:`CorruptDatasetError` naming the file otherwise.
    """
    h = read_header(idx_path)
    n, d = h.num_items, h.doc_idx_len
    if mmap and n + d > 0:
        buf = np.memmap(h.path, mode="r", dtype=np.uint8)
        sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=h.sizes_offset)
        pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=h.pointers_offset)
        doc_idx = np.frombuffer(buf, dtype="<i8", count=d, offset=h.doc_idx_offset)
    else:
        with open(h.path, "rb") as f:
            f.seek(HEADER_SIZE)
            sizes = np.fromfile(f, dtype="<i4", count=n)
            pointers = np.fromfile(f, dtype="<i8", count=n)
            doc_idx = np.fromfile(f, dtype="<i8", count=d)
    arrays = {"sizes": sizes, "pointers": pointers, "doc_idx": doc_idx}
    tokens = _check_chunks(h, lambda kind, start, stop: arrays[kind][start:stop], CHUNK_ITEMS)
    return Index(dtype=h.dtype, sizes=sizes, pointers=pointers, doc_idx=doc_idx, total_tokens=tokens)


def scan_index(idx_path: str | os.PathLike, *, chunk_items: int | None = None) -> IndexInfo:
    """Validate an ``.idx`` exactly as :func:`read_index` does, reading it in chunks with ``pread``
    (nothing is mapped or kept: memory is bounded by ``chunk_items``, default :data:`CHUNK_ITEMS`),
    and return its counts only."""
    h = read_header(idx_path)
    chunk = chunk_items or CHUNK_ITEMS
    with open(h.path, "rb", buffering=0) as f:
        fd = f.fileno()

        def get(kind: str, start: int, stop: int) -> np.ndarray:
            return read_array_chunk(fd, h, kind, start, stop)

        tokens = _check_chunks(h, get, chunk)
    return IndexInfo(
        path=h.path, dtype=h.dtype, num_items=h.num_items, doc_idx_len=h.doc_idx_len, num_tokens=tokens
    )


_ARRAYS = {"sizes": ("<i4", "sizes_offset"), "pointers": ("<i8", "pointers_offset"),
           "doc_idx": ("<i8", "doc_idx_offset")}  # fmt: skip


def read_array_chunk(fd: int, header: IndexHeader, kind: str, start: int, stop: int) -> np.ndarray:
    """Entries ``[start, stop)`` of one of an index's arrays (``sizes``, ``pointers``, ``doc_idx``),
    read from the open file ``fd`` with ``pread`` (a fresh array; nothing stays mapped)."""
    dt, where = _ARRAYS[kind]
    itemsize = np.dtype(dt).itemsize
    data = pread_exact(fd, (stop - start) * itemsize, getattr(header, where) + start * itemsize, header.path)
    return np.frombuffer(data, dtype=dt)


def pread_exact(fd: int, nbytes: int, offset: int, path: str | os.PathLike = "?") -> bytes:
    """``nbytes`` from ``offset`` of ``fd``; raises :class:`CorruptDatasetError` (naming ``path``) at EOF."""
    parts = []
    got = 0
    while got < nbytes:
        part = os.pread(fd, nbytes - got, offset + got)
        if not part:
            raise CorruptDatasetError(
                f"{path}: truncated: ended at byte {offset + got} while reading {nbytes} bytes at {offset}"
            )
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` (bytes-like) at ``offset`` of ``fd`` (``os.pwrite`` may write less)."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _check_chunks(h: IndexHeader, get, chunk_items: int) -> int:
    """The index checks, ``chunk_items`` entries at a time; ``get(kind, start, stop)`` returns a slice of
    an array. Returns the number of tokens (the sum of sizes)."""
    path, itemsize, n, d = h.path, h.dtype.itemsize, h.num_items, h.doc_idx_len
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be >= 1, not {chunk_items}")
    offset = 0  # byte offset of the next item = its expected pointer
    for start in range(0, n, chunk_items):
        stop = min(n, start + chunk_items)
        sizes = np.asarray(get("sizes", start, stop), dtype=np.int64)
        if int(sizes.min()) < 0:
            bad = int(np.argmax(sizes < 0))
            raise CorruptDatasetError(f"{path}: negative size {int(sizes[bad])} at item {start + bad}")
        nbytes = sizes * itemsize
        expected = np.empty(len(sizes), dtype=np.int64)
        expected[0] = offset
        np.cumsum(nbytes[:-1], out=expected[1:])
        expected[1:] += offset
        pointers = get("pointers", start, stop)
        if not np.array_equal(pointers, expected):
            bad = int(np.argmax(pointers != expected))
            raise CorruptDatasetError(
                f"{path}: pointer of item {start + bad} is {int(pointers[bad])}, not the sum of sizes"
            )
        offset += int(nbytes.sum())
    if d == 0:
        raise CorruptDatasetError(f"{path}: empty doc_idx (must start with 0)")
    last = None
    for start in range(0, d, chunk_items):
        doc_idx = np.asarray(get("doc_idx", start, min(d, start + chunk_items)))
        if start == 0 and doc_idx[0] != 0:
            raise CorruptDatasetError(f"{path}: doc_idx[0] is {int(doc_idx[0])}, expected 0")
        if last is not None and doc_idx[0] < last:
            raise CorruptDatasetError(f"{path}: doc_idx decreases at entry {start}")
        if len(doc_idx) > 1 and bool(np.any(np.diff(doc_idx) < 0)):
            bad = int(np.argmax(np.diff(doc_idx) < 0)) + 1
            raise CorruptDatasetError(f"{path}: doc_idx decreases at entry {start + bad}")
        last = int(doc_idx[-1])
    if last != n:
        raise CorruptDatasetError(f"{path}: doc_idx ends at {last}, expected N={n} items")
    return offset // itemsize


def check_data_size(prefix: str | os.PathLike, index: Index | IndexInfo) -> None:
    """Raise unless ``<prefix>.bin`` is exactly sum(sizes) * itemsize bytes."""
    bin_path = data_path(prefix)
    try:
        actual = bin_path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{bin_path}: data file not found") from None
    expected = index.num_tokens * index.dtype.itemsize
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its index"
        raise CorruptDatasetError(
            f"{bin_path}: {what}: {actual} bytes, index says {index.num_tokens} tokens x "
            f"{index.dtype.itemsize} B = {expected} bytes"
        )
