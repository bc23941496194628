"""Merge per-shard NeoX datasets (``<prefix>.bin``/``.idx``) into one, with a correct ``doc_idx``.

Why not NeoX's ``tools/datasets/merge_datasets.py``: at HEAD it concatenates sizes but not doc_idx, so
the merged index claims the documents of the first shard only. Here every input is validated, its
``.bin`` is streamed (bounded memory: only the 12-byte-per-item index is held), its doc_idx is shifted
by the items before it, and the output appears under its final name only when complete.

CLI: ``merge_datasets.py --output-prefix OUT IN1 IN2 ...`` (prefixes, or ``.bin``/``.idx`` paths);
prints a JSON summary (documents and tokens per input and in total) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import mmidx


def normalize_prefix(path: str | os.PathLike) -> str:
    """Accept ``x``, ``x.bin`` or ``x.idx`` for the dataset ``x``."""
    s = os.fspath(path)
    for ext in (".bin", ".idx"):
        if s.endswith(ext):
            return s[: -len(ext)]
    return s


def merge(inputs: list[str], output_prefix: str) -> dict:
    """Concatenate ``inputs`` (in order) into ``output_prefix``; returns the summary dict.

    All inputs must share one dtype. Raises :class:`mmidx.CorruptDatasetError` (naming the file) for a
    corrupt or truncated input, leaving no output file behind."""
    if not inputs:
        raise ValueError("no input datasets given")
    prefixes = [normalize_prefix(p) for p in inputs]
    out = normalize_prefix(output_prefix)
    if out in prefixes:
        raise ValueError(f"output prefix {out} is also an input")
    # Validate everything (and learn the dtype) before writing a byte.
    indexes = []
    for prefix in prefixes:
        index = mmidx.read_index(mmidx.index_path(prefix))
        mmidx.check_data_size(prefix, index)
        indexes.append(index)
    dtypes = {str(ix.dtype) for ix in indexes}
    if len(dtypes) > 1:
        raise ValueError(f"inputs have different dtypes {sorted(dtypes)}; cannot merge")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    per_input = {}
    with mmidx.DatasetWriter(out, indexes[0].dtype) as writer:
        for prefix in prefixes:
            index = writer.append_dataset(prefix)
            per_input[prefix] = {"documents": index.num_docs, "tokens": index.num_tokens}
        documents, items = writer.num_docs, writer.num_items
    tokens = sum(v["tokens"] for v in per_input.values())
    return {"output": out, "documents": documents, "items": items, "tokens": tokens, "inputs": per_input}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="dataset prefixes (or .bin/.idx paths), merged in this order")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>.bin and <prefix>.idx")
    args = p.parse_args(argv)
    inputs = [x for arg in args.inputs for x in arg.split(",") if x]
    try:
        summary = merge(inputs, args.output_prefix)
    except (mmidx.CorruptDatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
