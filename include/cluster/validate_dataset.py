"""Validate NeoX ``.bin``/``.idx`` datasets and print what they hold, as JSON, for the run's summary.

Checks, per dataset: the ``.idx`` header (magic, version, dtype code), that its length matches the
header's counts exactly (catches truncation), non-negative sizes, pointers equal to the cumulative
sizes, doc_idx starting at 0, non-decreasing and ending at the item count, ``.bin`` size equal to
sum(sizes) x itemsize, and optionally (``--vocab-size``) that every token id is below the vocabulary
size (a full streaming scan of ``.bin``).

Memory is bounded whatever the dataset's size (a merged C4 has 365M documents): the index is checked
in chunks of :data:`mmidx.CHUNK_ITEMS` entries read with ``pread`` (:func:`mmidx.scan_index`), the
token scan reads :data:`SCAN_CHUNK` tokens at a time; nothing is mapped, so RSS does not grow with the
files either. Per dataset only its summary is kept.

CLI: ``validate_dataset.py [PREFIX ...] [--prefixes-from-manifest MANIFEST] [--vocab-size N]`` (at least
one dataset; the manifest's shards, ``output_prefix + "_text_document"`` of each
``name<TAB>input<TAB>output_prefix`` line, follow the positional prefixes). Stdout is one JSON object
``{"ok": bool, "datasets": {prefix: {...}}, "documents": N, "tokens": N, "errors": [...]}``; the exit
status is 1 when any dataset is invalid (or the manifest is unreadable or garbled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import mmidx
import numpy as np

SCAN_CHUNK = 1 << 21  # tokens per step of the optional token-id scan (~5 B of temporaries per token)


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
    info = mmidx.scan_index(mmidx.index_path(prefix))
    mmidx.check_data_size(prefix, info)
    summary = {
        "documents": info.num_docs,
        "items": info.num_items,
        "tokens": info.num_tokens,
        "dtype": str(info.dtype),
        "bin_bytes": info.num_tokens * info.dtype.itemsize,
    }
    if vocab_size is not None and info.num_tokens:
        summary["max_token_id"] = _scan_tokens(prefix, info, vocab_size)
    return summary


def _scan_tokens(prefix: str, info: mmidx.IndexInfo, vocab_size: int) -> int:
    """The highest token id in ``<prefix>.bin``, read SCAN_CHUNK tokens at a time; raises at the first
    token outside ``[0, vocab_size)``."""
    bin_path = mmidx.data_path(prefix)
    itemsize = info.dtype.itemsize
    unsigned = info.dtype.kind == "u"
    highest = None
    with open(bin_path, "rb", buffering=0) as f:
        for start in range(0, info.num_tokens, SCAN_CHUNK):
            count = min(SCAN_CHUNK, info.num_tokens - start)
            raw = mmidx.pread_exact(f.fileno(), count * itemsize, start * itemsize, bin_path)
            chunk = np.frombuffer(raw, dtype=info.dtype.newbyteorder("<"))
            bad = chunk >= vocab_size
            if not unsigned:
                bad |= chunk < 0
            if bad.any():
                at = int(np.argmax(bad))
                raise mmidx.CorruptDatasetError(
                    f"{bin_path}: token {int(chunk[at])} at position {start + at} is outside "
                    f"the vocabulary (size {vocab_size})"
                )
            top = int(chunk.max())
            highest = top if highest is None else max(highest, top)
    return highest


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
    p.add_argument("prefixes", nargs="*", help="dataset prefixes (or .bin/.idx paths)")
    p.add_argument(
        "--prefixes-from-manifest",
        metavar="PATH",
        help="also validate, after the positional prefixes, the shards of this tokenize manifest (one per "
        "line: name<TAB>input<TAB>output_prefix; the dataset is output_prefix + '_text_document')",
    )
    p.add_argument("--vocab-size", type=int, default=None, help="also check every token id is below this")
    args = p.parse_args(argv)
    prefixes = list(args.prefixes)
    if args.prefixes_from_manifest is not None:
        try:
            prefixes += mmidx.prefixes_from_manifest(args.prefixes_from_manifest)
        except (mmidx.ManifestError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(
                json.dumps({"ok": False, "datasets": {}, "documents": 0, "tokens": 0, "errors": [str(exc)]})
            )
            return 1
    if not prefixes:
        p.error("no datasets: give prefixes and/or --prefixes-from-manifest PATH")
    result = validate_all(prefixes, args.vocab_size)
    for err in result["errors"]:
        print(f"error: {err}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
