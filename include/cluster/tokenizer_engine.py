"""The tokenizer engine of preprocess_data: ``Tokenizer.encode(text).ids`` token for token, by plain HF
(:class:`HFEncoder`) or by an exact fast path several times faster (:class:`FastExactEncoder`);
:func:`make_encoder` picks one.

The fast path re-implements only the *splitting* of HF ``tokenizers`` (added tokens, and the GPT-2
pre-tokenizer pattern: :mod:`pretokenizer`) and lets the tokenizer itself normalize everything; a
pre-token is BPE-encoded once and then reused from a cache. The BPE is tiktoken's where :mod:`rank_bpe`
proves it equal to the tokenizer's own for the vocabulary at hand (the 20B tokenizer's is), else the
tokenizer's model. The only place the splitting could differ is which class (letter, number, whitespace,
other) a character is in, so it verifies each character against the installed tokenizer's own
pre-tokenizer before trusting it (memoised), and sends any document containing an unverified character
to plain ``Tokenizer.encode``.
Output equality with ``Tokenizer.encode(text).ids`` is tested on adversarial text
(tests/unit/test_preprocess_data.py).
"""

from __future__ import annotations

import array
import json
import os
import unicodedata
from itertools import islice

# Set here too, for a caller that imports this module first (preprocess_data sets them before any import):
# the tokenizer must not add its own threads, and numpy (arrays only) must not start an idle BLAS thread pool.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import mmidx  # noqa: E402
import numpy as np  # noqa: E402
import rank_bpe  # noqa: E402
from pretokenizer import (  # noqa: E402
    IS_WHITE_SPACE,
    NON_ASCII_CHARS,
    alternation,
    bytes_to_unicode,
    chunk_pattern,
    fast_split_pattern,
    unicode_split_pattern,
)

PIECE_CACHE_MAX = 400_000  # pre-token -> ids entries kept per worker (bounded memory, ~50 MB)
CHUNK_CACHE_MAX = 200_000  # chunk (of non-ASCII text) -> ids entries kept per worker (~30 MB)


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
        b2u = bytes_to_unicode()
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
        self._raw_split, self._raw_prefix = alternation(raw), os.path.commonprefix(raw)
        self._norm_split, self._norm_prefix = alternation(norm), os.path.commonprefix(norm)
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
        ok = ok and (len(self._pretok("\n" + c)) == 1) == bool(IS_WHITE_SPACE(c))
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
        unknown = set(NON_ASCII_CHARS(seg)) - self._assigned
        if any(unicodedata.category(c) == "Cn" for c in unknown):
            return False
        self._assigned |= unknown
        return True

    def _fast_pattern_fits(self, seg: str) -> bool:
        """Does the fast pattern (:func:`fast_split_pattern`) classify every non-ASCII character of
        ``seg`` like the tokenizer? Checked once per character with the same probes as
        :meth:`_verify_char`."""
        new = set(NON_ASCII_CHARS(seg)) - self._fast_chars
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
