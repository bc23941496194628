"""GPT-NeoX's MMIDIDX datasets, whole: :class:`DatasetWriter` builds one (NeoX's
``MMapIndexedDatasetBuilder``), :class:`DatasetReader` reads its items (NeoX's ``MMapIndexedDataset``).
The format itself (header, index arrays, their checks) is :mod:`mmidx`.

Writers never leave a file under its final name unless it is complete: data goes to ``*.tmp.<unique>`` files
that are renamed into place (``.bin`` first, ``.idx`` last, so a present ``.idx`` implies a complete
pair) only when :meth:`DatasetWriter.close` succeeds.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from mmidx import (
    Index,
    check_data_size,
    data_path,
    dtype_code,
    index_chunks,
    index_path,
    read_index,
    temporary_name,
)


class DatasetWriter:
    """Streaming builder: append documents, then :meth:`close` renames ``.bin`` and ``.idx`` into place.

    Mirrors NeoX's ``MMapIndexedDatasetBuilder`` (``add_item`` + ``end_document``) so the output is
    byte-identical to NeoX's for the same items. Sizes and doc_idx are kept in growable arrays (12 B per
    one-item document, what one shard needs), tokens go straight to disk, so memory does not grow with the
    token count; merging many shards is merge_datasets' job, which streams the index arrays instead (no
    growth per item). Use as a context manager: on an exception the temporary files are removed and
    nothing appears under the final names.
    """

    def __init__(self, prefix: str | os.PathLike, dtype) -> None:
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # validate early
        self.bin_path = data_path(self.prefix)
        self.idx_path = index_path(self.prefix)
        self._bin_tmp = temporary_name(self.bin_path)
        self._idx_tmp = temporary_name(self.idx_path)
        self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._sizes = np.empty(1024, dtype=np.int32)
        self._n = 0
        self._doc_idx = np.zeros(1024, dtype=np.int64)  # doc_idx[0] = 0
        self._d = 1
        self._done = False

    # --- NeoX builder API -------------------------------------------------------------------------
    def add_item(self, tokens) -> None:
        """Append one item (a token array) without ending the document."""
        arr = np.asarray(tokens)
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        self._file.write(arr.tobytes(order="C"))
        self._push_size(arr.size)

    def end_document(self) -> None:
        """Close the current document: doc_idx gets the current item count."""
        if self._d == len(self._doc_idx):
            self._doc_idx = np.resize(self._doc_idx, 2 * len(self._doc_idx))
        self._doc_idx[self._d] = self._n
        self._d += 1

    # --- conveniences ------------------------------------------------------------------------------
    def add_document(self, tokens) -> None:
        """One item that is one document (what NeoX's preprocess_data does per JSON line)."""
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, flat_tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append many one-item documents at once: ``flat_tokens`` is their concatenation."""
        flat = np.asarray(flat_tokens)
        if flat.dtype != self.dtype:
            flat = flat.astype(self.dtype)
        sizes = np.asarray(sizes, dtype=np.int64)
        if int(sizes.sum()) != flat.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but {flat.size} tokens were given")
        self._file.write(flat.tobytes(order="C"))
        if sizes.size and (sizes.min() < 0 or sizes.max() > np.iinfo(np.int32).max):
            raise ValueError("sizes must fit in int32 and be >= 0")
        start, end = self._n, self._n + len(sizes)
        if end > len(self._sizes):
            self._sizes = np.resize(self._sizes, max(end, 2 * len(self._sizes)))
        self._sizes[start:end] = sizes
        self._n = end
        d_end = self._d + len(sizes)
        if d_end > len(self._doc_idx):
            self._doc_idx = np.resize(self._doc_idx, max(d_end, 2 * len(self._doc_idx)))
        self._doc_idx[self._d : d_end] = np.arange(start + 1, end + 1, dtype=np.int64)
        self._d = d_end

    def append_dataset(self, prefix: str | os.PathLike) -> Index:
        """Append a whole written dataset (streamed copy of its ``.bin``), keeping its document
        boundaries: its doc_idx is shifted by the number of items already written. Validates it
        first (header, pointers, doc_idx, ``.bin`` size) and requires the same dtype."""
        index = read_index(index_path(prefix))
        check_data_size(prefix, index)
        if index.dtype != self.dtype:
            raise ValueError(f"{prefix}: dtype {index.dtype} differs from the output's {self.dtype}")
        with open(data_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self._file, 16 << 20)
        start, end = self._n, self._n + index.num_items
        if end > len(self._sizes):
            self._sizes = np.resize(self._sizes, max(end, 2 * len(self._sizes)))
        self._sizes[start:end] = index.sizes
        self._n = end
        d_end = self._d + index.num_docs
        if d_end > len(self._doc_idx):
            self._doc_idx = np.resize(self._doc_idx, max(d_end, 2 * len(self._doc_idx)))
        self._doc_idx[self._d : d_end] = np.asarray(index.doc_idx[1:], dtype=np.int64) + start
        self._d = d_end
        return index

    def _push_size(self, size: int) -> None:
        if self._n == len(self._sizes):
            self._sizes = np.resize(self._sizes, 2 * len(self._sizes))
        self._sizes[self._n] = size
        self._n += 1

    @property
    def num_items(self) -> int:
        return self._n

    @property
    def num_docs(self) -> int:
        return self._d - 1

    def close(self) -> None:
        """Flush, fsync, write the index, then rename ``.bin`` and finally ``.idx`` into place."""
        if self._done:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            sizes = self._sizes[: self._n]
            with open(self._idx_tmp, "wb") as f:
                for chunk in index_chunks(sizes, self._doc_idx[: self._d], self.dtype):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._bin_tmp, self.bin_path)
            os.replace(self._idx_tmp, self.idx_path)
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written so far; final names are left untouched."""
        if not self._file.closed:
            self._file.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DatasetReader:
    """Random access to a written dataset: ``len(r)`` items, ``r[i]`` -> numpy array (memmap-backed)."""

    def __init__(self, prefix: str | os.PathLike, *, check_size: bool = True) -> None:
        self.prefix = os.fspath(prefix)
        self.index = read_index(index_path(self.prefix))
        if check_size:
            check_data_size(self.prefix, self.index)
        if self.index.num_tokens:
            self._data = np.memmap(data_path(self.prefix), mode="r", dtype=self.index.dtype)
        else:
            self._data = np.empty(0, dtype=self.index.dtype)

    @property
    def dtype(self) -> np.dtype:
        return self.index.dtype

    @property
    def sizes(self) -> np.ndarray:
        return self.index.sizes

    @property
    def doc_idx(self) -> np.ndarray:
        return self.index.doc_idx

    @property
    def num_tokens(self) -> int:
        return self.index.num_tokens

    @property
    def num_docs(self) -> int:
        return self.index.num_docs

    def __len__(self) -> int:
        return self.index.num_items

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} out of range for {n} items in {self.prefix}")
        start = int(self.index.pointers[i]) // self.dtype.itemsize
        return self._data[start : start + int(self.index.sizes[i])]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
