"""Validate NeoX ``.bin``/``.idx`` datasets and print what they hold, as JSON, for the run's summary.

Checks, per dataset: the ``.idx`` header (magic, version, dtype code), that its length matches the
header's counts exactly (catches truncation), non-negative sizes, pointers equal to the cumulative
sizes, doc_idx starting at 0, non-decreasing and ending at the item count, ``.bin`` size equal to
sum(sizes) x itemsize, and optionally (``--vocab-size``) that every token id is below the vocabulary
size (a full streaming scan of ``.bin``).

CLI: ``validate_dataset.py PREFIX [PREFIX ...] [--vocab-size N]``. Stdout is one JSON object
``{"ok": bool, "datasets": {prefix: {...}}, "documents": N, "tokens": N, "errors": [...]}``; the exit
status is 1 when any dataset is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import mmidx
import numpy as np

SCAN_CHUNK = 1 << 24  # tokens per step of the optional token-id scan


def normalize_prefix(path: str | os.PathLike) -> str:
    """Accept ``x``, ``x.bin`` or ``x.idx`` for the dataset ``x``."""
    s = os.fspath(path)
    for ext in (".bin", ".idx"):
        if s.endswith(ext):
            return s[: -len(ext)]
    return s


def validate(prefix: str | os.PathLike, vocab_size: int | None = None) -> dict:
    """Validate one dataset; returns its summary or raises CorruptDatasetError/FileNotFoundError."""
    prefix = normalize_prefix(prefix)
    index = mmidx.read_index(mmidx.index_path(prefix))
    mmidx.check_data_size(prefix, index)
    summary = {
        "documents": index.num_docs,
        "items": index.num_items,
        "tokens": index.num_tokens,
        "dtype": str(index.dtype),
        "bin_bytes": index.num_tokens * index.dtype.itemsize,
    }
    if vocab_size is not None and index.num_tokens:
        data = np.memmap(mmidx.data_path(prefix), mode="r", dtype=index.dtype)
        highest = None
        for start in range(0, len(data), SCAN_CHUNK):
            chunk = data[start : start + SCAN_CHUNK]
            bad = (chunk >= vocab_size) | (chunk < 0)
            if bad.any():
                pos = start + int(np.argmax(bad))
                raise mmidx.CorruptDatasetError(
                    f"{mmidx.data_path(prefix)}: token {int(data[pos])} at position {pos} is outside "
                    f"the vocabulary (size {vocab_size})"
                )
            top = int(chunk.max())
            highest = top if highest is None else max(highest, top)
        summary["max_token_id"] = highest
    return summary


def validate_all(prefixes: list[str], vocab_size: int | None = None) -> dict:
    """Validate every dataset, collecting errors instead of stopping at the first."""
    result: dict = {"ok": True, "datasets": {}, "documents": 0, "tokens": 0, "errors": []}
    for prefix in prefixes:
        try:
            summary = validate(prefix, vocab_size)
        except (mmidx.CorruptDatasetError, FileNotFoundError, OSError) as exc:
            result["ok"] = False
            result["errors"].append(str(exc))
            continue
        result["datasets"][normalize_prefix(prefix)] = summary
        result["documents"] += summary["documents"]
        result["tokens"] += summary["tokens"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prefixes", nargs="+", help="dataset prefixes (or .bin/.idx paths)")
    p.add_argument("--vocab-size", type=int, default=None, help="also check every token id is below this")
    args = p.parse_args(argv)
    result = validate_all(args.prefixes, args.vocab_size)
    for err in result["errors"]:
        print(f"error: {err}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
