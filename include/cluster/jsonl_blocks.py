"""Read JSON-lines shards for preprocess_data: decompression -> blocks of whole lines -> documents.

Why not lm_dataformat (what NeoX's ``tools/datasets/preprocess_data.py`` reads through): it tokenizes the
wrong thing for allenai's ``.json.gz`` shards (whole JSON objects) and ``.jsonl.gz`` (raw lines), and keeps
no line numbers for errors. Here:

* input: ``.jsonl``, ``.json`` (JSON lines), ``.jsonl.gz``/``.json.gz`` (gzip, multi-member),
  ``.jsonl.zst``/``.json.zst`` (zstd, multi-frame), streamed in bounded chunks (:func:`read_chunks`);
  the ``--jsonl-keys`` fields of every line are read (NeoX always reads ``text``, whatever the flag says);
* the main process only reads (decompresses) and cuts the stream at newlines (:func:`read_blocks`); the
  workers parse the blocks (:func:`parse_block`);
* errors (truncated or corrupt compression, invalid UTF-8, invalid JSON, a missing or non-string field)
  raise :class:`InputError` naming the file and line.
"""

from __future__ import annotations

import json
import json.scanner
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 1 << 20  # compressed bytes read at a time
INFLATE_MAX = 4 << 20  # max decompressed bytes produced per step (bounded memory)
BLOCK_BYTES = 512 << 10  # input bytes (whole lines) per worker job


class InputError(Exception):
    """Bad input data; the message names the file (and line where known)."""


_COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".zst": "zstd"}
_DATA_SUFFIXES = {".jsonl", ".json"}


def input_format(path: str | os.PathLike) -> str:
    """``"plain"``, ``"gzip"`` or ``"zstd"`` from the file name; raises InputError for other names."""
    name = Path(path).name
    suffixes = Path(name).suffixes
    comp = "plain"
    if suffixes and suffixes[-1] in _COMPRESSION_BY_SUFFIX:
        comp = _COMPRESSION_BY_SUFFIX[suffixes[-1]]
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _DATA_SUFFIXES:
        raise InputError(
            f"{path}: unsupported input name; expected .jsonl, .json, .jsonl.gz, .json.gz, .jsonl.zst "
            "or .json.zst (JSON lines)"
        )
    return comp


def _inflate(path, f, new_decompressor, kind: str) -> Iterator[bytes]:
    """Decompress a (multi-member/multi-frame) stream in bounded steps; raise if it ends mid-stream."""
    d = None
    fed = False
    while True:
        data = f.read(READ_CHUNK)
        if not data:
            break
        fed = True
        while data:
            if d is None:
                d = new_decompressor()
            try:
                out = d.decompress(data, INFLATE_MAX) if kind == "gzip" else d.decompress(data)
            except Exception as exc:  # zlib.error, zstandard.ZstdError
                raise InputError(f"{path}: corrupt {kind} data ({exc})") from None
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                d = None
            else:
                data = getattr(d, "unconsumed_tail", b"")
    if not fed:
        raise InputError(f"{path}: empty file, not a valid {kind} stream")
    if d is not None and not d.eof:
        raise InputError(f"{path}: truncated {kind} stream (ends before its end-of-stream marker)")


def read_chunks(path: str | os.PathLike) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in chunks (compression from the name, checked by magic)."""
    comp = input_format(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if comp != "plain" and not magic:
            raise InputError(f"{path}: empty file, not a valid {comp} stream")
        if comp == "gzip":
            if magic[:2] != b"\x1f\x8b":
                raise InputError(f"{path}: not a gzip file (magic {magic[:2]!r})")
            yield from _inflate(path, f, lambda: zlib.decompressobj(wbits=31), "gzip")
        elif comp == "zstd":
            if magic != b"\x28\xb5\x2f\xfd":
                raise InputError(f"{path}: not a zstd file (magic {magic!r})")
            import zstandard

            yield from _inflate(path, f, lambda: zstandard.ZstdDecompressor().decompressobj(), "zstd")
        else:
            while chunk := f.read(READ_CHUNK):
                yield chunk


@dataclass(frozen=True)
class Block:
    """Whole lines of one input, decompressed: one worker job. The main process only cuts the byte
    stream at newlines; parsing and tokenizing happen in the workers."""

    path: str
    first_line: int  # line number of the first line of ``data``
    data: bytes


def read_blocks(paths: Iterable[str], size: int | None = None) -> Iterator[Block]:
    """Every input as blocks of about ``size`` bytes (default ``BLOCK_BYTES``), each cut after a newline
    (after the first one past ``size`` where a long line allows no earlier cut). Each chunk read is
    searched once: no quadratic copying for long lines."""
    size = size or BLOCK_BYTES
    for path in paths:
        line = 1
        pending: list[bytes] = []
        pending_len = 0
        for chunk in read_chunks(path):
            start = 0
            while pending_len + len(chunk) - start >= size:  # enough for a block: cut at a newline
                limit = start + max(size - pending_len, 1)
                cut = chunk.rfind(b"\n", start, limit)
                if cut < 0:
                    cut = chunk.find(b"\n", limit)
                    if cut < 0:
                        break  # a long line goes on in the next chunk
                pending.append(chunk[start : cut + 1])
                data = b"".join(pending)
                yield Block(str(path), line, data)
                line += data.count(b"\n")
                pending, pending_len, start = [], 0, cut + 1
            if start < len(chunk):
                pending.append(chunk[start:] if start else chunk)
                pending_len += len(chunk) - start
        if pending:
            yield Block(str(path), line, b"".join(pending))


def document_text(obj, key: str, where) -> str:
    """The ``key`` field of one parsed JSON line, as NeoX/lm_dataformat reads it; ``where()`` names
    the line for an error.

    A list of strings is joined with blank lines (lm_dataformat's autojoin); anything that is not a
    string is an error here (NeoX would crash or silently drop it)."""
    if not isinstance(obj, dict):
        raise InputError(f"{where()}: line is a JSON {type(obj).__name__}, expected an object")
    try:
        value = obj[key]
    except KeyError:
        fields = ", ".join(sorted(obj)[:8])
        raise InputError(f"{where()}: no {key!r} field (fields: {fields})") from None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise InputError(f"{where()}: field {key!r} is a JSON {type(value).__name__}, expected a string")


#: What ``json.loads`` runs on a line, without its three Python-level wrappers (~1.5 us a line).
_scan_json = json.scanner.make_scanner(json.JSONDecoder())
_JSON_WHITE_SPACE = " \t\n\r"  # what json.loads allows around a value


def parse_block(block: Block, keys: list[str]) -> tuple[int, list[list[str]], list[list[int]]]:
    """A block's JSON lines -> (documents read, non-empty texts per key, their line numbers per key).
    Blank lines are skipped; everything else must parse. Empty texts are dropped (NeoX's rule),
    whitespace-only ones kept.

    The block is decoded once and each line scanned by ``json``'s own C scanner; the first line that
    is not a plain object with string fields (or bytes that are not UTF-8) sends the whole block
    through :func:`parse_block_by_line`, which accepts the same lines and names the bad one."""
    try:
        text = block.data.decode("utf-8")
    except UnicodeDecodeError:
        return parse_block_by_line(block, keys)
    texts: list[list[str]] = [[] for _ in keys]
    lines: list[list[int]] = [[] for _ in keys]
    documents = 0
    scan, first = _scan_json, block.first_line
    try:
        for i, line in enumerate(text.split("\n")):
            if not line or line.isspace():
                continue
            obj, end = scan(line, 0)
            if end != len(line) and line[end:].strip(_JSON_WHITE_SPACE):
                return parse_block_by_line(block, keys)  # more after the value: an error, named there
            documents += 1
            for k, key in enumerate(keys):
                value = obj[key]
                if value.__class__ is not str:
                    return parse_block_by_line(block, keys)
                if value:
                    texts[k].append(value)
                    lines[k].append(first + i)
    except (StopIteration, ValueError, KeyError, TypeError, IndexError, RecursionError):
        return parse_block_by_line(block, keys)  # not a JSON object with these fields
    return documents, texts, lines


def parse_block_by_line(block: Block, keys: list[str]) -> tuple[int, list[list[str]], list[list[int]]]:
    """:func:`parse_block` one line at a time with ``json.loads``: the reference, and the path that
    turns bad input into an error naming the file and line."""
    texts: list[list[str]] = [[] for _ in keys]
    lines: list[list[int]] = [[] for _ in keys]
    documents = 0
    loads = json.loads
    for i, raw in enumerate(block.data.split(b"\n")):
        if not raw:
            continue
        lineno = block.first_line + i

        def where(lineno=lineno):
            return f"{block.path}:{lineno}"

        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where()}: invalid UTF-8 at byte {exc.start} of the line") from None
        if line.isspace():  # blank (no copy of the line, unlike strip())
            continue
        try:
            obj = loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where()}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        documents += 1
        for k, key in enumerate(keys):
            text = document_text(obj, key, where)
            if text:
                texts[k].append(text)
                lines[k].append(lineno)
    return documents, texts, lines
