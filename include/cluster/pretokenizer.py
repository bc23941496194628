"""The pre-tokenizer patterns of :mod:`tokenizer_engine`'s fast path: GPT-2's split (what HF's ByteLevel
pre-tokenizer applies), spelled out for the stdlib ``re`` engine or the ``regex`` package, with a
tokenizer's added tokens made of runs of spaces folded in; the matcher of literal added tokens; and the
byte -> character table of byte-level BPE.

Why spell the pattern out: the tokenizer's JSON does not (a ByteLevel pre-tokenizer names no regex), and
with the letters and numbers of the Basic Multilingual Plane written as character classes the stdlib
``re`` engine splits ~2.5x faster than ``regex`` with ``\\p{..}`` (:func:`fast_split_pattern`). The classes
come from Python's Unicode data, which may differ from the tokenizer's: the engine verifies each
character against the tokenizer's own pre-tokenizer before trusting a pattern with it.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

import numpy as np


def bytes_to_unicode() -> dict[int, str]:
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


def alternation(contents: list[str]):
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


NON_ASCII_CHARS = re.compile(r"[^\x00-\x7f]").findall
IS_WHITE_SPACE = re.compile(f"[{_WHITE_SPACE}]").fullmatch


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
