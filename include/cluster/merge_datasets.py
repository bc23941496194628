"""Merge per-shard NeoX datasets (``<prefix>.bin``/``.idx``) into one, with a correct ``doc_idx``.

Why not NeoX's ``tools/datasets/merge_datasets.py``: at HEAD it concatenates sizes but not doc_idx, so
the merged index claims the documents of the first shard only. Here every input is validated, its
``.bin`` is streamed, its doc_idx is shifted by the items before it, and the output appears under its
final name only when complete.

Memory does not grow with the number of inputs' items or documents, and only by a few hundred bytes per
input (its prefix, counts and summary entry). Pass 1 validates every input's ``.idx`` and ``.bin`` size
(chunked reads, :func:`mmidx.scan_index`) and keeps only its counts; the output's length is then known.
Pass 2 copies each ``.bin`` (a fixed 16 MB buffer) and writes each input's sizes, pointers and shifted
doc_idx at their places in the output ``.idx``, :data:`mmidx.CHUNK_ITEMS` items at a time (``pwrite``,
nothing mapped). The bytes are those of one NeoX index writer given every input's items in order.

CLI: ``merge_datasets.py --output-prefix OUT [IN1 IN2 ...] [--prefixes-from-manifest MANIFEST]``
(prefixes, or ``.bin``/``.idx`` paths; positional ones may also be comma-separated; the manifest's
shards follow the positional inputs); prints a JSON summary (documents and tokens per input and in
total) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import mmidx
import numpy as np

COPY_BYTES = 16 << 20  # the .bin copy buffer


def normalize_prefix(path: str | os.PathLike) -> str:
    """Accept ``x``, ``x.bin`` or ``x.idx`` for the dataset ``x``."""
    s = os.fspath(path)
    for ext in (".bin", ".idx"):
        if s.endswith(ext):
            return s[: -len(ext)]
    return s


def merge(inputs: list[str], output_prefix: str, *, chunk_items: int | None = None) -> dict:
    """Concatenate ``inputs`` (in order) into ``output_prefix``; returns the summary dict.

    All inputs must share one dtype. Raises :class:`mmidx.CorruptDatasetError` (naming the file) for a
    corrupt or truncated input, leaving no output file behind. ``chunk_items`` (default
    :data:`mmidx.CHUNK_ITEMS`) bounds the index entries handled at once."""
    if not inputs:
        raise ValueError("no input datasets given")
    chunk = chunk_items or mmidx.CHUNK_ITEMS
    prefixes = [normalize_prefix(p) for p in inputs]
    out = normalize_prefix(output_prefix)
    if out in prefixes:
        raise ValueError(f"output prefix {out} is also an input")
    # Pass 1: validate everything (and learn the dtype and counts) before writing a byte.
    infos: list[mmidx.IndexInfo] = []
    for prefix in prefixes:
        info = mmidx.scan_index(mmidx.index_path(prefix), chunk_items=chunk)
        mmidx.check_data_size(prefix, info)
        infos.append(info)
    dtypes = {str(info.dtype) for info in infos}
    if len(dtypes) > 1:
        raise ValueError(f"inputs have different dtypes {sorted(dtypes)}; cannot merge")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    items, documents, tokens = _write_concatenation(out, prefixes, infos, chunk)
    per_input = {
        prefix: {"documents": info.num_docs, "tokens": info.num_tokens}
        for prefix, info in zip(prefixes, infos, strict=True)
    }
    return {"output": out, "documents": documents, "items": items, "tokens": tokens, "inputs": per_input}


def _write_concatenation(
    out: str, prefixes: list[str], infos: list[mmidx.IndexInfo], chunk: int
) -> tuple[int, int, int]:
    """Pass 2: write ``out``'s ``.bin`` and ``.idx`` under temporary names, then rename them into place
    (``.bin`` first, ``.idx`` last); on any error remove them. Returns (items, documents, tokens)."""
    dtype = infos[0].dtype
    itemsize = dtype.itemsize
    n_total = sum(info.num_items for info in infos)
    d_total = 1 + sum(info.num_docs for info in infos)
    layout = mmidx.IndexHeader(
        path=mmidx.index_path(out), dtype=dtype, num_items=n_total, doc_idx_len=d_total
    )
    bin_final, idx_final = mmidx.data_path(out), mmidx.index_path(out)
    bin_tmp, idx_tmp = mmidx.temporary_name(bin_final), mmidx.temporary_name(idx_final)
    buf = memoryview(bytearray(COPY_BYTES))
    try:
        with open(bin_tmp, "wb") as bin_out, open(idx_tmp, "wb", buffering=0) as idx_out:
            fd_out = idx_out.fileno()
            mmidx.pwrite_all(fd_out, mmidx.encode_header(dtype, n_total, d_total), 0)
            mmidx.pwrite_all(fd_out, np.zeros(1, dtype="<i8"), layout.doc_idx_offset)  # doc_idx[0] = 0
            items = docs = 0  # items and documents before the current input
            byte_offset = 0  # its first item's pointer
            for prefix, info in zip(prefixes, infos, strict=True):
                _copy_bin(prefix, info, bin_out, buf)
                with open(mmidx.index_path(prefix), "rb", buffering=0) as idx_in:
                    fd_in = idx_in.fileno()
                    if mmidx.read_header(info.path) != mmidx.IndexHeader(
                        info.path, info.dtype, info.num_items, info.doc_idx_len
                    ):
                        raise mmidx.CorruptDatasetError(f"{info.path}: changed while being merged")
                    for start in range(0, info.num_items, chunk):
                        stop = min(info.num_items, start + chunk)
                        sizes = mmidx.read_array_chunk(fd_in, info, "sizes", start, stop)
                        mmidx.pwrite_all(fd_out, sizes, layout.sizes_offset + 4 * (items + start))
                        nbytes = sizes.astype(np.int64) * itemsize
                        pointers = np.empty(len(sizes), dtype="<i8")
                        pointers[0] = byte_offset
                        np.cumsum(nbytes[:-1], out=pointers[1:])
                        pointers[1:] += byte_offset
                        mmidx.pwrite_all(fd_out, pointers, layout.pointers_offset + 8 * (items + start))
                        byte_offset += int(nbytes.sum())
                    # doc_idx[1:] of this input, shifted by the items before it, after the entries so far
                    for start in range(1, info.doc_idx_len, chunk):
                        stop = min(info.doc_idx_len, start + chunk)
                        shifted = mmidx.read_array_chunk(fd_in, info, "doc_idx", start, stop) + items
                        mmidx.pwrite_all(
                            fd_out, shifted.astype("<i8"), layout.doc_idx_offset + 8 * (docs + start)
                        )
                items += info.num_items
                docs += info.num_docs
            tokens = sum(info.num_tokens for info in infos)
            if byte_offset != tokens * itemsize or bin_out.tell() != byte_offset:
                raise mmidx.CorruptDatasetError(
                    f"{out}: inputs changed while being merged ({bin_out.tell()} bytes copied, sizes sum to "
                    f"{byte_offset} bytes, validated {tokens * itemsize})"
                )
            if os.fstat(fd_out).st_size != layout.file_size:
                raise RuntimeError(
                    f"{idx_tmp}: {os.fstat(fd_out).st_size} bytes, expected {layout.file_size}"
                )
            bin_out.flush()
            os.fsync(bin_out.fileno())
            os.fsync(fd_out)
        os.replace(bin_tmp, bin_final)
        os.replace(idx_tmp, idx_final)
    except BaseException:
        bin_tmp.unlink(missing_ok=True)
        idx_tmp.unlink(missing_ok=True)
        raise
    return items, docs, tokens


def _copy_bin(prefix: str, info: mmidx.IndexInfo, out, buf: memoryview) -> None:
    """Append ``<prefix>.bin`` to ``out`` through ``buf``; it must still have the validated length."""
    expected = info.num_tokens * info.dtype.itemsize
    copied = 0
    with open(mmidx.data_path(prefix), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            out.write(buf[:n])
            copied += n
    if copied != expected:
        raise mmidx.CorruptDatasetError(
            f"{mmidx.data_path(prefix)}: changed while being merged ({copied} bytes, validated {expected})"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "inputs",
        nargs="*",
        help="dataset prefixes (or .bin/.idx paths, or comma-separated lists of them), merged in this order",
    )
    p.add_argument("--output-prefix", required=True, help="writes <prefix>.bin and <prefix>.idx")
    p.add_argument(
        "--prefixes-from-manifest",
        metavar="PATH",
        help="also merge, after the positional inputs, the shards of this tokenize manifest (one per line: "
        "name<TAB>input<TAB>output_prefix; the dataset is output_prefix + '_text_document'), in file order",
    )
    args = p.parse_args(argv)
    inputs = [x for arg in args.inputs for x in arg.split(",") if x]
    try:
        if args.prefixes_from_manifest is not None:
            inputs += mmidx.prefixes_from_manifest(args.prefixes_from_manifest)
        if not inputs:
            p.error("no input datasets: give prefixes and/or --prefixes-from-manifest PATH")
        summary = merge(inputs, args.output_prefix)
    except (mmidx.CorruptDatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
