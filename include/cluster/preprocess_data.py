"""Tokenize C4-style JSON-lines shards into GPT-NeoX ``.bin``/``.idx`` files; a drop-in for NeoX's
``tools/datasets/preprocess_data.py``.

Why not NeoX's script: it reads through lm_dataformat, which tokenizes the wrong thing for allenai's
``.json.gz`` shards (whole JSON objects) and ``.jsonl.gz`` (raw lines), keeps no line numbers for errors,
writes its outputs in place (a crash leaves a half-written ``.bin`` under the final name), and spends
most of its time outside the tokenizer. This script takes the same flags and writes byte-identical
``<prefix>_<key>_document.{bin,idx}`` for the same documents, with:

* input: ``.jsonl``, ``.json`` (JSON lines), ``.jsonl.gz``/``.json.gz`` (gzip, multi-member),
  ``.jsonl.zst``/``.json.zst`` (zstd, multi-frame), streamed in bounded chunks; the ``--jsonl-keys``
  field of every line is tokenized (NeoX always reads ``text``, whatever the flag says);
* NeoX's document rules: empty strings dropped, whitespace-only documents kept, one item per
  document, EOD (the id of ``<|endoftext|>``) appended with ``--append-eod``;
* errors (truncated or corrupt compression, invalid UTF-8, invalid JSON, a missing or non-string field)
  name the file and line, exit non-zero, and leave nothing under the final names;
* speed: ``--workers`` processes parse and tokenize blocks of whole lines with an exact fast path of
  the tokenizer (:class:`FastExactEncoder`); the main process only reads (decompresses), cuts the
  stream at newlines and writes.

The fast path re-implements only the *splitting* of HF ``tokenizers`` (added tokens, and the GPT-2
pre-tokenizer pattern) and lets the tokenizer itself normalize everything; a pre-token is BPE-encoded
once and then reused from a cache. The BPE is tiktoken's where :mod:`rank_bpe` proves it equal to the
tokenizer's own for the vocabulary at hand (the 20B tokenizer's is), else the tokenizer's model. The
only place the splitting could differ is which class (letter, number, whitespace, other) a character
is in, so it verifies each character against the installed tokenizer's own pre-tokenizer before
trusting it (memoised), and sends any document containing an unverified character to plain
``Tokenizer.encode``.
Output equality with ``Tokenizer.encode(text).ids`` is tested on adversarial text
(tests/unit/test_preprocess_data.py).
"""

from __future__ import annotations

import argparse
import array
import collections
import functools
import json
import json.scanner
import os
import re
import sys
import time
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path

# Our parallelism is --workers processes; the tokenizer must not add its own threads (equal-cores
# comparisons with NeoX, and no rayon pool inherited across fork).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy is only used for arrays here; an idle OpenBLAS thread pool in every worker spins on the cores
# the workers need (measured: ~2% of each worker's instructions).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import mmidx  # noqa: E402
import mmidx_dataset  # noqa: E402
import numpy as np  # noqa: E402
import rank_bpe  # noqa: E402

READ_CHUNK = 1 << 20  # compressed bytes read at a time
INFLATE_MAX = 4 << 20  # max decompressed bytes produced per step (bounded memory)
BLOCK_BYTES = 512 << 10  # input bytes (whole lines) per worker job
PIECE_CACHE_MAX = 400_000  # pre-token -> ids entries kept per worker (bounded memory, ~50 MB)
CHUNK_CACHE_MAX = 200_000  # chunk (of non-ASCII text) -> ids entries kept per worker (~30 MB)


class InputError(Exception):
    """Bad input data; the message names the file (and line where known)."""


# ---------------------------------------------------------------------------------------------------
# Reading: decompression -> lines -> documents
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Tokenizing: an exact fast path over HF tokenizers, and the plain HF path
# ---------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what HF's ByteLevel pre-tokenizer applies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class UnsupportedTokenizer(ValueError):
    """The tokenizer's configuration is outside what the fast path reproduces exactly."""


def _check_fast_supported(cfg: dict) -> None:
    norm = cfg.get("normalizer")
    if norm is not None and norm.get("type") not in {"NFC", "NFD", "NFKC", "NFKD"}:
        raise UnsupportedTokenizer(f"normalizer {norm.get('type')}")
    pre = cfg.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        raise UnsupportedTokenizer(f"pre_tokenizer {pre}")
    model = cfg.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        raise UnsupportedTokenizer(f"model {model.get('type')} dropout={model.get('dropout')}")
    post = cfg.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":
        raise UnsupportedTokenizer(f"post_processor {post.get('type')}")
    if cfg.get("truncation") or cfg.get("padding"):
        raise UnsupportedTokenizer("truncation/padding configured")
    for tok in cfg.get("added_tokens", []):
        if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            raise UnsupportedTokenizer(f"added token {tok['content']!r} uses lstrip/rstrip/single_word")


def _alternation(contents: list[str]):
    """Leftmost-longest matcher for literal tokens (HF uses Aho-Corasick LeftmostLongest)."""
    if not contents:
        return None
    uniq = sorted(set(contents), key=len, reverse=True)
    if all(set(c) == {" "} for c in uniq):
        lengths = sorted(len(c) for c in uniq)
        if lengths == list(range(lengths[0], lengths[-1] + 1)):  # runs of spaces: one greedy class
            return re.compile(f"( {{{lengths[0]},{lengths[-1]}}})")
    return re.compile("(" + "|".join(re.escape(c) for c in uniq) + ")")


# Unicode White_Space (stable since Unicode 6.0): ``\s`` of the tokenizer's pre-tokenizer regex. Not
# Python's ``str.isspace``/``re`` ``\s``, which also match U+001C..U+001F.
_WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

#: The ByteLevel pre-tokenizer's pattern (GPT-2's), as the tokenizer's JSON does not spell it out.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _space_runs_and_whitespace(ws: str, space_runs: tuple[int, int] | None) -> tuple[str, str]:
    """The alternative matching a run of ``lo``..``hi`` spaces (with its ``|``; empty without
    ``space_runs``) and the whitespace-run pattern to use beside it, which never takes a space followed
    by a space (see :func:`pretokenizer_pattern`)."""
    if space_runs is None:
        return "", f"[{ws}]+"
    lo, hi = space_runs
    if lo < 2:
        raise ValueError("runs of one space would split every word")
    return f" {{{lo},{hi}}}|", f"(?:[{ws.replace(' ', '')}]| (?! ))+"


def pretokenizer_pattern(
    letters: str, numbers: str, ws: str, space_runs: tuple[int, int] | None = None
) -> str:
    """:data:`GPT2_SPLIT` with its classes spelled out (``letters``, ``numbers``, ``ws``: regex
    character-class bodies) and, with ``space_runs=(lo, hi)``, the tokenizer's added tokens made of
    runs of ``lo``..``hi`` spaces folded in (the 20B tokenizer's 2..24).

    HF splits such runs out first (leftmost-longest) and pre-tokenizes the text between them on its
    own. Folded: the runs are the first alternative, and the whitespace alternatives never take a
    space followed by a space (``" (?! )"``). So no piece takes the first space of a run (the ``" ?X+"``
    alternatives take a space only before a non-space), every run is matched from its first space,
    greedily up to ``hi`` like HF; between runs there are no two adjacent spaces, so there the pattern
    is GPT-2's, and at a run its look-ahead sees a space, as GPT-2's sees the end of the text. One
    regex pass instead of a split and a pass per part."""
    other = f"[^{ws}{letters}{numbers}]"
    head, run = _space_runs_and_whitespace(ws, space_runs)
    # GPT-2's alternatives in GPT-2's order, except that letters come first: no earlier alternative can
    # match where ` ?letters` does (a letter, or one space then a letter), and words are most pieces.
    return f" ?[{letters}]+|{head}'s|'t|'re|'ve|'m|'ll|'d| ?[{numbers}]+| ?{other}+|{run}(?![^{ws}])|{run}"


_LETTERS = {"Lu", "Ll", "Lt", "Lm", "Lo"}


def _class_ranges(categories: set[str], last: int = sys.maxunicode) -> str:
    """A regex character-class body of every code point up to ``last`` whose category (Python's
    Unicode data) is in ``categories``; per-character verification against the tokenizer covers
    version differences. Filtered in C where Python has an exact test (``str.isalpha`` is true for
    exactly the L* categories; ``str.isnumeric`` for every N* character and a few letters): the BMP's
    letters take ~10 ms, not 50."""
    chars = "".join(map(chr, range(last + 1)))
    parts = []
    rest = set(categories)
    if _LETTERS <= rest:
        parts.append("".join(filter(str.isalpha, chars)))
        rest -= _LETTERS
    if rest:
        pool = "".join(filter(str.isnumeric, chars)) if all(c[0] == "N" for c in rest) else chars
        parts.append("".join(c for c in pool if unicodedata.category(c) in rest))
    cps = np.sort(np.frombuffer("".join(parts).encode("utf-32-le"), dtype=np.uint32))
    if not cps.size:
        return ""
    cps = cps[np.r_[True, np.diff(cps) != 0]]  # a character in two parts once
    breaks = np.flatnonzero(np.diff(cps) != 1)  # ranges of consecutive code points
    firsts, lasts = cps[np.r_[0, breaks + 1]].tolist(), cps[np.r_[breaks, cps.size - 1]].tolist()
    esc = re.escape
    return "".join(
        esc(chr(f)) + (f"-{esc(chr(t))}" if t != f else "") for f, t in zip(firsts, lasts, strict=True)
    )


@functools.cache
def fast_split_pattern(space_runs: tuple[int, int] | None = None) -> re.Pattern:
    """The pre-tokenizer pattern for the stdlib ``re`` engine with the letters and numbers of the Basic
    Multilingual Plane spelled out (Python's Unicode data). Classes of BMP characters compile to a
    constant-time table, so it runs ~2.5x faster than ``regex`` with ``\\p{..}``; every character
    outside them counts as "other". Text is split with it when each of its non-ASCII characters is
    verified to get the tokenizer's class (Latin, Greek, Cyrillic, CJK, punctuation, emoji: nearly
    all web text)."""
    return re.compile(pretokenizer_pattern(*_bmp_classes(), _WHITE_SPACE, space_runs))


@functools.cache
def _bmp_classes() -> tuple[str, str]:
    """Class bodies of the BMP's letters and numbers (built once: ~25 ms)."""
    return _class_ranges({"Lu", "Ll", "Lt", "Lm", "Lo"}, 0xFFFF), _class_ranges({"Nd", "Nl", "No"}, 0xFFFF)


@functools.cache
def unicode_split_pattern():
    """The pre-tokenizer pattern for any text: compiled by the ``regex`` package (which has
    ``\\p{..}``) when it is installed, else by ``re`` with the Unicode classes spelled out (correct
    but ~2x slower)."""
    try:
        import regex
    except ImportError:
        return stdlib_unicode_split_pattern()
    return regex.compile(pretokenizer_pattern(r"\p{L}", r"\p{N}", _WHITE_SPACE))


@functools.cache
def stdlib_unicode_split_pattern() -> re.Pattern:
    """The pre-tokenizer pattern for the stdlib ``re`` engine, classes from Python's Unicode data."""
    letters = _class_ranges({"Lu", "Ll", "Lt", "Lm", "Lo"})
    numbers = _class_ranges({"Nd", "Nl", "No"})
    return re.compile(pretokenizer_pattern(letters, numbers, _WHITE_SPACE))


_NON_ASCII_CHARS = re.compile(r"[^\x00-\x7f]").findall
_IS_WHITE_SPACE = re.compile(f"[{_WHITE_SPACE}]").fullmatch


@functools.cache
def chunk_pattern(space_runs: tuple[int, int] | None = None) -> re.Pattern:
    r"""Chunks, for text the fast pattern cannot split: a maximal non-whitespace run behind at most one
    space, or whitespace split the way GPT-2's ``\s+(?!\S)|\s+`` splits it (with ``space_runs`` folded
    in as in :func:`pretokenizer_pattern`). The GPT-2 pattern only yields pieces that are all
    whitespace or non-whitespace behind at most one space, so every piece lies inside one chunk, and a
    chunk's pieces do not depend on its neighbours (the one look-around, ``(?!\S)``, is applied here
    too). So ``ids(text) == concat(ids(chunk))``, and chunk -> ids can be memoised: a chunk is split by
    the Unicode pattern once, when first met. Its only class is whitespace (verified per character)."""
    ws = _WHITE_SPACE
    head, run = _space_runs_and_whitespace(ws, space_runs)
    return re.compile(f" ?[^{ws}]+|{head}{run}(?![^{ws}])|{run}")


class _BoundedCache(dict):
    """A memo that keeps at most ``limit`` entries: when full, the newest half is dropped. Dicts keep
    insertion order and frequent keys are met first, so the oldest entries (and the added tokens,
    inserted first) are the ones kept. Subclasses compute a missing value in ``__missing__`` (no
    further call per miss: a pre-token's first sight is the costly part of a worker's first blocks)."""

    limit = 0

    def _make_room(self) -> None:
        for old in list(islice(reversed(self), len(self) - self.limit // 2)):
            del self[old]


class _PieceCache(_BoundedCache):
    """pre-token -> its token ids packed as the output dtype's bytes; a miss is encoded by the
    tokenizer's own BPE model. Starts with the added tokens (no pre-token can equal one: it would
    have been split out before). At most ``PIECE_CACHE_MAX`` entries."""

    def __init__(self, added: dict[str, bytes], model, b2u: dict[int, str], dtype: np.dtype):
        super().__init__(added)
        self.limit = PIECE_CACHE_MAX
        self._tokenize = model.tokenize
        self._typecode = dtype.char  # array.array's code for the dtype: ids -> native bytes in one call
        self._byte_level = {b: ord(u) for b, u in b2u.items()}  # latin-1 char b -> byte-level char

    def __missing__(self, piece: str) -> bytes:
        if len(self) >= self.limit:
            self._make_room()
        raw = piece if piece.isascii() else piece.encode("utf-8").decode("latin-1")  # ASCII: chars are bytes
        tokens = self._tokenize(raw.translate(self._byte_level))
        ids = self[piece] = array.array(self._typecode, [t.id for t in tokens]).tobytes()
        return ids


class _RankPieceCache(_PieceCache):
    """:class:`_PieceCache` whose misses are encoded by tiktoken's BPE, proven equal to the model's
    (:mod:`rank_bpe`): ids come back as plain ints, ~3x cheaper than the model's ``Token`` objects."""

    def __init__(self, added, model, b2u, dtype, rank_bpe):
        super().__init__(added, model, b2u, dtype)
        self._rank_bpe = rank_bpe

    def __missing__(self, piece: str) -> bytes:
        if len(self) >= self.limit:
            self._make_room()
        ids = self[piece] = array.array(self._typecode, self._rank_bpe(piece.encode("utf-8"))).tobytes()
        return ids


class _ChunkCache(_BoundedCache):
    """chunk -> its token ids packed as bytes; ``encode_chunk`` computes a miss. At most
    ``CHUNK_CACHE_MAX`` entries."""

    def __init__(self, added: dict[str, bytes], encode_chunk):
        super().__init__(added)
        self.limit = CHUNK_CACHE_MAX
        self._encode_chunk = encode_chunk

    def __missing__(self, chunk: str) -> bytes:
        if len(self) >= self.limit:
            self._make_room()
        ids = self[chunk] = self._encode_chunk(chunk)
        return ids


class _UnverifiedChar(Exception):
    """A character whose class our patterns may not share with the tokenizer's: use plain HF."""


class HFEncoder:
    """Plain ``Tokenizer.encode(text).ids`` (what NeoX's HFTokenizer.tokenize does)."""

    name = "hf"

    def __init__(self, vocab_file: str, dtype=None, tokenizer=None):
        from tokenizers import Tokenizer

        self.hf = tokenizer if tokenizer is not None else Tokenizer.from_file(vocab_file)
        vocab = self.hf.get_vocab_size()
        self.dtype = np.dtype(dtype) if dtype is not None else mmidx.best_fitting_dtype(vocab)

    def describe(self) -> str:
        return "engine hf: Tokenizer.encode per document"

    def pack(self, ids) -> bytes:
        """Token ids as native-endian bytes of ``self.dtype`` (what the ``.bin`` file holds)."""
        return array.array(self.dtype.char, ids).tobytes()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_bytes(self, text: str) -> bytes:
        return self.encode_many_bytes([text])[0]

    def encode_many_bytes(self, texts: list[str]) -> list[bytes]:
        return [self.pack(self.hf.encode(t).ids) for t in texts]


class FastExactEncoder(HFEncoder):
    """Token-for-token ``Tokenizer.encode(text).ids`` for byte-level BPE tokenizers, several times faster.

    Per document (HF's order): split out non-normalized added tokens (e.g. ``<|endoftext|>``) on the raw
    text; normalize the rest with the tokenizer's own normalizer (not ASCII: NF* is the identity on it);
    split out normalized added tokens (the 20B tokenizer's runs of 2..24 spaces, folded into the
    pattern) and pre-tokenize with the GPT-2 pattern: :func:`fast_split_pattern` (stdlib ``re``) on
    text whose non-ASCII characters it classifies like the tokenizer (nearly all text), else
    whitespace chunks first (:func:`chunk_pattern`, memoised per chunk) and the Unicode pattern per new
    chunk. Every pre-token's ids come from a cache (:class:`_PieceCache`) filled on a miss by
    tiktoken's BPE where :mod:`rank_bpe` proves it exact for this vocabulary (the proof's check runs
    in a child process while the patterns are built), else by the tokenizer's own BPE model.
    Documents are byte joins of cached ids: no Python int per token, one lookup per pre-token.
    """

    name = "fast"

    def __init__(self, vocab_file: str, dtype=None, tokenizer=None):
        super().__init__(vocab_file, dtype, tokenizer)
        with open(vocab_file, encoding="utf-8") as f:
            cfg = json.load(f)
        _check_fast_supported(cfg)
        if self.hf.encode_special_tokens:
            raise UnsupportedTokenizer("encode_special_tokens is on")
        b2u = _bytes_to_unicode()
        self.rank_bpe_unproven = None  # why tiktoken's BPE is not used for this tokenizer, if it is not
        added = [t["content"] for t in cfg.get("added_tokens", [])]
        proof = self._start_rank_bpe_proof(cfg["model"], b2u, added)  # runs while the patterns are built
        try:
            self._build_splitting(cfg)
        except BaseException:
            if proof is not None:
                proof.abandon()
            raise
        piece_args = (self._added, self.hf.model, b2u, self.dtype)
        try:
            engine = proof.result() if proof is not None else None
        except rank_bpe.NotProven as exc:
            self.rank_bpe_unproven = str(exc)
            engine = None
        self._cache = _RankPieceCache(*piece_args, engine) if engine else _PieceCache(*piece_args)
        self._chunk_cache = _ChunkCache(self._added, self._chunk_miss)

    def _build_splitting(self, cfg: dict) -> None:
        """Added tokens, patterns and the per-character checks."""
        added = cfg.get("added_tokens", [])
        raw = [t["content"] for t in added if not t.get("normalized")]
        norm = [t["content"] for t in added if t.get("normalized")]
        self._raw_split, self._raw_prefix = _alternation(raw), os.path.commonprefix(raw)
        self._norm_split, self._norm_prefix = _alternation(norm), os.path.commonprefix(norm)
        lengths = sorted(len(c) for c in set(norm))
        space_runs = (
            all(set(c) == {" "} for c in norm) and lengths == list(range(2, lengths[-1] + 1))
            if norm
            else False
        )
        runs = (2, lengths[-1]) if space_runs else None
        # Text is split into GPT-2 pieces by the fast pattern, or into chunks (chunk_pattern) when it holds
        # a character that pattern misclassifies; the space-run tokens folded in (None: split out first).
        self._split_fast_runs = fast_split_pattern(runs).findall if runs else None
        self._chunks_runs = chunk_pattern(runs).findall if runs else None
        self._split_fast = fast_split_pattern().findall
        self._chunks = chunk_pattern().findall
        self._normalize = self.hf.normalizer.normalize_str if self.hf.normalizer is not None else None
        self._norm_form = cfg["normalizer"]["type"] if self.hf.normalizer is not None else None
        self._assigned: set[str] = set()  # non-ASCII characters known to Python's Unicode tables
        self._pretok = self.hf.pre_tokenizer.pre_tokenize_str
        self._ok_chars: set[str] = set()
        self._bad_chars: set[str] = set()
        self._fast_chars: set[str] = set()  # non-ASCII characters the fast pattern classifies right
        self._not_fast: set[str] = set()
        self.fallback_docs = 0
        # ASCII text is split by the fast pattern alone, so it is checked here; the Unicode pattern
        # (built when first needed) has each character of a chunk checked before it is trusted.
        bad_ascii = [c for c in map(chr, range(128)) if not self._verify_char(c, self._split_fast)]
        if bad_ascii:
            raise UnsupportedTokenizer(f"pre-tokenizer classes differ on ASCII {bad_ascii!r}")
        self._added = {t["content"]: self.pack([t["id"]]) for t in added}

    def describe(self) -> str:
        bpe = (
            "tiktoken's, proven equal to the tokenizer's merges"
            if self.rank_bpe_unproven is None
            else f"the tokenizer's own ({self.rank_bpe_unproven})"
        )
        return f"engine fast: exact fast path; BPE of new pre-tokens: {bpe}"

    def _start_rank_bpe_proof(self, model_cfg: dict, b2u: dict[int, str], added: list[str]):
        try:
            return rank_bpe.start(model_cfg, self.hf.model, b2u, added)
        except ImportError:
            self.rank_bpe_unproven = "tiktoken is not installed"
        except rank_bpe.NotProven as exc:
            self.rank_bpe_unproven = str(exc)
        return None

    def _verify_char(self, c: str, pieces=None) -> bool:
        """Do our patterns classify ``c`` like the tokenizer's own pre-tokenizer? (memoised)

        The probes put ``c`` after a letter, a digit, punctuation, a space and a newline, and before a
        space: the piece counts then agree exactly when both engines put ``c`` in the same class
        (letter, number, whitespace, other), which is all the GPT-2 pattern depends on. Our
        whitespace class must agree too (``"\\n" + c`` is one piece iff ``c`` is whitespace)."""
        probes = ("a" + c, "1" + c, "!" + c, " " + c + "a", c + " a", c + c, "\n" + c)
        if pieces is not None:  # an explicit engine: check, do not memoise
            return all(len(self._pretok(p)) == len(pieces(p)) for p in probes)
        if c in self._ok_chars:
            return True
        if c in self._bad_chars:
            return False
        split_unicode = unicode_split_pattern().findall
        ok = all(len(self._pretok(p)) == len(split_unicode(p)) for p in probes)
        ok = ok and (len(self._pretok("\n" + c)) == 1) == bool(_IS_WHITE_SPACE(c))
        (self._ok_chars if ok else self._bad_chars).add(c)
        return ok

    def _already_normalized(self, seg: str) -> bool:
        """Python's normalization quick check (C, ~30x cheaper than the tokenizer's normalizer, which
        tracks offsets). Sound only for characters Python's Unicode tables know: normalization is
        stable for assigned characters across Unicode versions, so a string Python calls normalized
        that holds no character unassigned in Python's tables is left unchanged by the tokenizer too.
        Anything else goes through the tokenizer's own normalizer."""
        if not unicodedata.is_normalized(self._norm_form, seg):
            return False
        unknown = set(_NON_ASCII_CHARS(seg)) - self._assigned
        if any(unicodedata.category(c) == "Cn" for c in unknown):
            return False
        self._assigned |= unknown
        return True

    def _fast_pattern_fits(self, seg: str) -> bool:
        """Does the fast pattern (:func:`fast_split_pattern`) classify every non-ASCII character of
        ``seg`` like the tokenizer? Checked once per character with the same probes as
        :meth:`_verify_char`."""
        new = set(_NON_ASCII_CHARS(seg)) - self._fast_chars
        return not new or all(map(self._fits_fast_pattern, new))

    def _fits_fast_pattern(self, c: str) -> bool:
        if c in self._not_fast:
            return False
        if self._verify_char(c, self._split_fast):
            self._fast_chars.add(c)
            return True
        self._not_fast.add(c)
        return False

    def _encode_text(self, text: str) -> bytes:
        if self._raw_split is None or self._raw_prefix not in text:
            return self._encode_segment(text)
        parts = []
        for i, seg in enumerate(self._raw_split.split(text)):
            if i % 2:
                parts.append(self._added[seg])
            elif seg:
                parts.append(self._encode_segment(seg))
        return b"".join(parts)

    def _encode_segment(self, seg: str) -> bytes:
        """Text between raw added tokens: normalized, split (around normalized added tokens), looked up."""
        if not seg.isascii():
            if self._normalize is not None and not self._already_normalized(seg):
                seg = self._normalize(seg)
            if not seg.isascii() and not self._fast_pattern_fits(seg):
                return self._join(seg, self._chunks_runs, self._chunks, self._chunk_cache.__getitem__)
        return self._join(seg, self._split_fast_runs, self._split_fast, self._cache.__getitem__)

    def _join(self, seg: str, folded, plain, lookup) -> bytes:
        if folded is not None:
            return b"".join(map(lookup, folded(seg)))
        if self._norm_split is None or self._norm_prefix not in seg:
            return b"".join(map(lookup, plain(seg)))
        parts = []
        for k, part in enumerate(self._norm_split.split(seg)):
            if k % 2:
                parts.append(self._added[part])
            elif part:
                parts.append(b"".join(map(lookup, plain(part))))
        return b"".join(parts)

    def _chunk_miss(self, chunk: str) -> bytes:
        """A chunk not seen yet: its GPT-2 pieces' ids. Raises :class:`_UnverifiedChar` for a character
        not verified: the document then falls back to plain ``Tokenizer.encode``."""
        if chunk.isascii():
            pieces = self._split_fast(chunk)
        elif all(map(self._verify_char, set(chunk))):
            pieces = unicode_split_pattern().findall(chunk)
        else:
            raise _UnverifiedChar(chunk)
        return b"".join(map(self._cache.__getitem__, pieces))

    def encode(self, text: str) -> list[int]:
        return np.frombuffer(self.encode_bytes(text), dtype=self.dtype).tolist()

    def encode_many_bytes(self, texts: list[str]) -> list[bytes]:
        out = []
        for text in texts:
            try:
                out.append(self._encode_text(text))
            except _UnverifiedChar:  # the tokenizer itself does this document
                self.fallback_docs += 1
                out.append(self.pack(self.hf.encode(text).ids))
        return out


def make_encoder(vocab_file: str, engine: str = "auto", dtype=None, tokenizer=None) -> HFEncoder:
    """``fast`` (exact fast path), ``hf`` (plain HF), or ``auto`` (fast when supported, else hf).
    ``tokenizer``: the ``Tokenizer`` already loaded from ``vocab_file`` (loading takes ~0.15 s)."""
    if engine == "hf":
        return HFEncoder(vocab_file, dtype, tokenizer)
    try:
        return FastExactEncoder(vocab_file, dtype, tokenizer)
    except UnsupportedTokenizer:
        if engine == "fast":
            raise
        return HFEncoder(vocab_file, dtype, tokenizer)


# ---------------------------------------------------------------------------------------------------
# Worker side: one job = a list of texts -> (token bytes, sizes) or an error for one document
# ---------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(
    vocab_file: str,
    engine: str,
    append_eod: bool,
    use_ftfy: bool,
    dtype: str,
    keys: list[str],
    tokenizer=None,
) -> None:
    enc = make_encoder(vocab_file, engine, dtype, tokenizer)
    eod = enc.pack([enc.hf.token_to_id("<|endoftext|>")]) if append_eod else b""
    fix = None
    if use_ftfy:
        import ftfy

        fix = ftfy.fix_text
    _WORKER.update(enc=enc, eod=eod, fix=fix, keys=keys)


def _encode_texts(texts: list[str]):
    """``("ok", tokens_bytes, sizes)`` or ``("error", index_in_texts, message)``."""
    enc, eod, fix = _WORKER["enc"], _WORKER["eod"], _WORKER["fix"]
    try:
        docs = enc.encode_many_bytes([fix(t) for t in texts] if fix is not None else texts)
    except Exception:  # e.g. a lone surrogate from a JSON escape: find the document, one at a time
        for i, text in enumerate(texts):
            try:
                enc.encode_bytes(fix(text) if fix is not None else text)
            except Exception as exc:
                return ("error", i, f"cannot tokenize: {type(exc).__name__}: {exc}")
        raise
    sizes = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) // enc.dtype.itemsize
    if eod:
        sizes += 1
        docs = chain.from_iterable(zip(docs, repeat(eod)))  # joined once below, no copy per document
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        return ("error", int(empty[0]), "document produced no tokens")
    return ("ok", b"".join(docs), sizes)


def _encode_block(block: Block):
    """One job: ``("ok", documents, bytes, [(tokens_bytes, sizes) per key])`` or ``("error", message)``
    naming the file and line."""
    keys = _WORKER["keys"]
    try:
        documents, texts, lines = parse_block(block, keys)
    except InputError as exc:
        return ("error", str(exc))
    outputs = []
    for k, key in enumerate(keys):
        result = _encode_texts(texts[k])
        if result[0] == "error":
            return ("error", f"{block.path}:{lines[k][result[1]]}: field {key!r}: {result[2]}")
        outputs.append(result[1:])
    return ("ok", documents, len(block.data), outputs)


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    documents: int = 0  # JSON lines read
    tokens: dict = field(default_factory=dict)  # per key
    items: dict = field(default_factory=dict)  # per key (documents written)
    text_bytes: int = 0  # bytes of the JSON lines read (decompressed)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        toks = sum(self.tokens.values())
        return (
            f"[preprocess_data] {self.documents} documents, {toks} tokens, "
            f"{self.text_bytes / elapsed / 1e6:.2f} MB/s, {toks / elapsed / 1e6:.3f} M tokens/s, "
            f"{elapsed:.1f} s"
        )


def output_prefix_for(output_prefix: str, key: str) -> str:
    """NeoX's naming: ``{output_prefix}_{key}_document`` (+ ``.bin``/``.idx``)."""
    return f"{output_prefix}_{key}_document"


def run(
    inputs: list[str],
    output_prefix: str,
    vocab_file: str,
    *,
    keys: tuple[str, ...] = ("text",),
    append_eod: bool = False,
    use_ftfy: bool = False,
    workers: int = 1,
    log_interval: int = 100,
    engine: str = "auto",
    log=None,
) -> Stats:
    """Tokenize ``inputs`` into ``{output_prefix}_{key}_document.{bin,idx}``; returns the counts.

    Output files appear only when everything succeeded (atomic rename); on any error none do."""
    from tokenizers import Tokenizer

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if use_ftfy:
        try:
            import ftfy  # noqa: F401
        except ImportError:
            raise SystemExit("--ftfy needs the 'ftfy' package, which is not installed") from None
    for path in inputs:
        input_format(path)  # fail on an unsupported name before any work
        if not os.path.isfile(path):
            raise InputError(f"{path}: input file not found")
    hf = Tokenizer.from_file(vocab_file)
    if append_eod and hf.token_to_id("<|endoftext|>") is None:
        raise ValueError(f"{vocab_file}: --append-eod needs an <|endoftext|> token, the tokenizer has none")
    dtype = mmidx.best_fitting_dtype(hf.get_vocab_size())
    log(f"[preprocess_data] vocab size {hf.get_vocab_size()}, dtype {dtype}, output prefix {output_prefix}")
    keys = tuple(keys)
    stats = Stats(tokens={k: 0 for k in keys}, items={k: 0 for k in keys})
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    writers = [mmidx_dataset.DatasetWriter(output_prefix_for(output_prefix, k), dtype) for k in keys]
    init_args = (vocab_file, engine, append_eod, use_ftfy, dtype.str, list(keys), hf)
    pool = None
    next_log = log_interval
    try:
        blocks = read_blocks(inputs)
        # Built once here and inherited by the forked workers (tokenizer, patterns, tables).
        _worker_init(*init_args)
        log(f"[preprocess_data] {_WORKER['enc'].describe()}")
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("fork").Pool(workers)
            results = _ordered_bounded(pool, blocks, max_in_flight_bytes=2 * workers * BLOCK_BYTES)
        else:
            results = map(_encode_block, blocks)
        for result in results:
            if result[0] == "error":
                raise InputError(result[1])
            _, documents, nbytes, outputs = result
            stats.documents += documents
            stats.text_bytes += nbytes
            for k, (token_bytes, sizes) in enumerate(outputs):
                if sizes.size:
                    writers[k].add_documents(np.frombuffer(token_bytes, dtype=dtype), sizes)
                stats.tokens[keys[k]] += int(sizes.sum())
                stats.items[keys[k]] += len(sizes)
            if log_interval > 0 and stats.documents >= next_log:
                log(stats.line())
                next_log = (stats.documents // log_interval + 1) * log_interval
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    log(stats.line() + " (done)")
    return stats


def _ordered_bounded(pool, blocks: Iterator[Block], max_in_flight_bytes: int):
    """Like ``pool.imap`` (ordered) but with bounded read-ahead: imap's feeder thread would read the
    whole shard into memory ahead of the workers.

    Blocks are queued while the input bytes behind the oldest block stay under ``max_in_flight_bytes``
    plus that block's own size. So a block that takes long (one multi-MB document) does not idle the
    other workers while the results behind it wait: they go on with about as much input as that block
    holds (what one other worker gets through meanwhile). Memory stays bounded by the budget plus
    twice the largest block, whatever the shard's size."""
    in_flight: collections.deque = collections.deque()
    queued = 0
    for block in blocks:
        in_flight.append((pool.apply_async(_encode_block, (block,)), len(block.data)))
        queued += len(block.data)
        while queued - 2 * in_flight[0][1] >= max_in_flight_bytes:
            result, size = in_flight.popleft()
            queued -= size
            yield result.get()
    while in_flight:
        yield in_flight.popleft()[0].get()


def build_parser() -> argparse.ArgumentParser:
    """NeoX's flags (same names and defaults) plus ``--engine``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="comma-separated .jsonl/.json[.gz|.zst] files")
    g.add_argument("--jsonl-keys", nargs="+", default=["text"], help="JSON fields to tokenize (default text)")
    g.add_argument("--num-docs", type=int, default=None, help="accepted for NeoX compatibility; unused")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help="only HFTokenizer is supported")
    g.add_argument("--vocab-file", required=True, help="HF tokenizers JSON, e.g. 20B_tokenizer.json")
    g.add_argument("--merge-file", default=None, help="accepted for NeoX compatibility; unused")
    g.add_argument("--append-eod", action="store_true", help="append <|endoftext|> to every document")
    g.add_argument("--ftfy", action="store_true", help="clean text with ftfy.fix_text first")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    g.add_argument("--dataset-impl", default="mmap", choices=["lazy", "cached", "mmap"], help="only mmap")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=100, help="progress line every N documents")
    g.add_argument(
        "--engine",
        choices=["auto", "fast", "hf"],
        default="auto",
        help="auto: exact fast path when the tokenizer supports it (default); hf: plain Tokenizer.encode",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tokenizer_type != "HFTokenizer":
        print(
            f"error: --tokenizer-type {args.tokenizer_type} is not supported (HFTokenizer only)",
            file=sys.stderr,
        )
        return 2
    if args.dataset_impl != "mmap":
        print(f"error: --dataset-impl {args.dataset_impl} is not supported (mmap only)", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    inputs = [p for p in args.input.split(",") if p]
    try:
        stats = run(
            inputs,
            args.output_prefix,
            args.vocab_file,
            keys=tuple(args.jsonl_keys),
            append_eod=args.append_eod,
            use_ftfy=args.ftfy,
            workers=args.workers,
            log_interval=args.log_interval,
            engine=args.engine,
        )
    except (InputError, UnsupportedTokenizer, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "documents_read": stats.documents,
        "outputs": {
            output_prefix_for(args.output_prefix, k): {"documents": stats.items[k], "tokens": stats.tokens[k]}
            for k in args.jsonl_keys
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
