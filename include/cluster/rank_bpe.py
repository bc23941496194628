"""tiktoken's BPE for a Hugging Face byte-level BPE model, used only where it is proven exact.

Why: every pre-token that :mod:`tokenizer_engine` meets for the first time is encoded by the model's BPE.
Through ``tokenizers`` that costs ~6 us a call (a ``Token`` object per id), most of it outside the BPE
itself; tiktoken's ``encode_single_piece`` returns plain ids in ~1.6 us. But the two engines run
different algorithms:

* **merge BPE** (HF): repeatedly merge the adjacent pair ``(x, y)`` that is a *rule* of the merges list
  with the lowest rank, leftmost first, until no adjacent pair is a rule;
* **rank BPE** (tiktoken): repeatedly merge the adjacent pair whose *concatenation* is a token with the
  lowest rank, leftmost first, until no concatenation is a token.

With ``rank(token) = rank of the rule producing it`` they agree on every input exactly when rank BPE
never merges a pair that is not a rule. :func:`load` proves that for the vocabulary at hand, in
~0.2 s, or raises :class:`NotProven` (the caller keeps HF's BPE).

The proof. Call ``R(t)``: "rank BPE on the bytes of ``t`` alone ends in ``[t]`` merging only rules".

1. *Locality.* In any run of rank BPE, the merges inside the span of a token ``u`` present at some
   moment are exactly the run of rank BPE on ``u``'s bytes alone: each step merges the globally
   lowest pair, which is then also the lowest inside the span, and no pair crossing the span's
   edges was merged (else ``u`` would not be a token of the state).
2. *Induction on length.* Assume ``R(u)`` for every token shorter than ``t``. In the run on ``t``'s
   bytes every merge but a last one producing ``t`` produces a shorter token ``u``, and by (1) it is
   the last merge of the run on ``u`` alone, which ``R(u)`` says is a rule. While only rules are
   merged, the lowest concatenation is the lowest rule, so rank BPE follows merge BPE's states
   exactly, down to the state with two tokens. If merge BPE on ``t``'s bytes gives ``[t]`` (checked
   below, for the whole vocabulary in ~0.12 s) that state is ``t``'s rule and ``R(t)`` holds.
   Single bytes hold trivially.
3. *Any input.* By (1) and ``R``, every merge of a run on any piece is a rule; so both engines take
   the same steps, and stop together (a rule pair is a token pair).

What is checked, besides merge BPE reproducing every merged token: the model is a plain byte-level
BPE (no dropout, suffixes, byte fallback, ``ignore_merges``), each rule produces a distinct token in
the vocabulary, and token ids grow with rule rank, so the ids themselves serve as tiktoken's ranks and
its output needs no mapping. Vocabulary tokens no rule produces (added tokens such as
``<|endoftext|>``) are left out: merge BPE never produces them either. tiktoken's one short cut (a
piece that is itself a token is returned as that token) is covered because merge BPE gives ``[t]``
for every token ``t``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate

#: Bytes that never occur in UTF-8, so in no piece of a Python ``str``: a byte-level vocabulary may
#: lack them (the 20B tokenizer does).
NOT_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])


class NotProven(ValueError):
    """Rank BPE is not shown to equal this model's merge BPE (the reason is the message)."""


def _rules(merges: list) -> tuple[list[str], list[str]]:
    """Left and right sides of the rules; the tokenizer JSON spells a rule ``"a b"`` (older) or
    ``["a", "b"]``. Byte-level tokens hold no space, so one split parses all of them."""
    if all(isinstance(m, str) for m in merges):
        flat = " ".join(merges).split(" ")
        if len(flat) != 2 * len(merges):
            raise NotProven("a merge rule is not two space-separated tokens")
        return flat[0::2], flat[1::2]
    if any(len(m) != 2 for m in merges):
        raise NotProven("a merge rule is not a pair")
    return [m[0] for m in merges], [m[1] for m in merges]


def _raw_bytes(tokens: list[str], byte_of: dict[int, int]) -> list[bytes]:
    """Byte-level strings -> the bytes they stand for (one character is one byte): one translate for
    all of them, then slices."""
    raw = "".join(tokens).translate(byte_of).encode("latin-1")
    ends = list(accumulate(map(len, tokens)))
    return list(map(raw.__getitem__, map(slice, [0, *ends[:-1]], ends)))


@dataclass(frozen=True)
class _Vocabulary:
    """What the proof checks of a model."""

    vocab: dict[str, int]
    merged: list[str]  # the token each rule makes, in rule order
    ids: list[int]  # their ids


def ranked_tokens(model_cfg: dict, added: Iterable[str] = ()) -> list[str]:
    """The tokens tiktoken gets: the model's vocabulary without the tokenizer's added tokens (no rule
    makes those; the proof checks that every other token is one byte or made by a rule)."""
    added = set(added)
    return [t for t in model_cfg["vocab"] if t not in added]


def _vocabulary(model_cfg: dict, byte_to_char: dict[int, str], ranked: list[str]) -> _Vocabulary:
    """Every condition of the proof except the model's BPE reproducing each merged token; raises
    :class:`NotProven`."""
    for key in (
        "dropout",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "byte_fallback",
        "ignore_merges",
    ):
        if model_cfg.get(key):
            raise NotProven(f"model option {key}={model_cfg[key]!r}")
    if model_cfg.get("type") != "BPE":
        raise NotProven(f"model type {model_cfg.get('type')!r}")
    vocab: dict[str, int] = model_cfg["vocab"]
    merged = list(map(str.__add__, *_rules(model_cfg["merges"])))
    ids = list(map(vocab.get, merged))
    if None in ids:
        raise NotProven(f"a rule makes {merged[ids.index(None)]!r}, which is not in the vocabulary")
    if any(map(int.__ge__, ids, ids[1:])):  # also catches two rules making one token
        raise NotProven("token ids do not grow with rule rank")
    singles = [t for t in vocab if len(t) == 1]
    chars = set(byte_to_char.values())
    if not chars.issuperset(singles):
        raise NotProven("a one-character token is not a byte-level character")
    missing = {b for b, c in byte_to_char.items() if c not in vocab}
    if missing - NOT_IN_UTF8:
        raise NotProven(f"bytes without a token: {sorted(missing - NOT_IN_UTF8)}")
    if set(ranked) != set(singles).union(merged):
        extra = sorted(set(ranked) - set(singles) - set(merged))[:3]
        raise NotProven(f"tokens neither one byte nor made by a rule: {extra}")
    return _Vocabulary(vocab, merged, ids)


def _check_reproduced(v: _Vocabulary, merge_bpe: Callable[[list[str]], list[int]]) -> None:
    """The last condition: the model's BPE turns each merged token's own string into that token."""
    if merge_bpe(v.merged) != v.ids:
        bad = next(t for t in v.merged if merge_bpe([t]) != [v.vocab[t]])
        raise NotProven(f"the model's BPE does not reproduce token {bad!r}")


def _ranks(vocab: dict[str, int], ranked: list[str], byte_to_char: dict[int, str]) -> dict[bytes, int]:
    """tiktoken's ``mergeable_ranks``: raw bytes -> token id (the proof checks that ids grow with rule
    rank). Bytes without a token (never met: not UTF-8) get spare ranks, so that tiktoken has every
    byte."""
    try:
        raw = _raw_bytes(ranked, {ord(c): b for b, c in byte_to_char.items()})
    except UnicodeEncodeError:
        raise NotProven("a token is not made of byte-level characters") from None
    ranks = dict(zip(raw, map(vocab.__getitem__, ranked), strict=True))
    if len(ranks) != len(ranked):
        raise NotProven("two tokens stand for the same bytes")
    spare = max(vocab.values()) + 1
    for b in range(256):
        if bytes([b]) not in ranks:
            ranks[bytes([b])] = spare
            spare += 1
    return ranks


def proven_ranks(
    model_cfg: dict,
    merge_bpe: Callable[[list[str]], list[int]],
    byte_to_char: dict[int, str],
    added: Iterable[str] = (),
) -> dict[bytes, int]:
    """tiktoken ``mergeable_ranks`` (raw bytes -> token id) for a byte-level BPE model, after checking
    the conditions of this module's proof; raises :class:`NotProven` otherwise.

    ``model_cfg``: the tokenizer JSON's ``model``. ``merge_bpe(words)``: the model's own BPE of each
    byte-level word, all ids in one list. ``byte_to_char``: GPT-2's byte -> character
    table. ``added``: the tokenizer's added tokens."""
    ranked = ranked_tokens(model_cfg, added)
    _check_reproduced(_vocabulary(model_cfg, byte_to_char, ranked), merge_bpe)
    return _ranks(model_cfg["vocab"], ranked, byte_to_char)


def hf_merge_bpe(model) -> Callable[[list[str]], list[int]]:
    """``merge_bpe`` for :func:`proven_ranks` from a ``tokenizers`` model: its ``tokenize`` on each word
    (~2.3 us a word; one ``Tokenizer.encode`` of the words joined by spaces takes twice as long, in
    its pre-tokenizer and offsets). A word's tokens spell the word, less any character without a token,
    so the flat list equals the merged tokens' ids exactly when each word gives exactly its token."""
    tokenize = model.tokenize

    def merge_bpe(words: list[str]) -> list[int]:
        return [token.id for word in words for token in tokenize(word)]

    return merge_bpe


def _in_child(check: Callable[[], None]) -> Callable[[], None]:
    """Run ``check`` in a forked child while the caller goes on; the returned function waits for it and
    raises :class:`NotProven` if it failed. Inline where there is no ``fork``."""
    if not hasattr(os, "fork"):
        check()
        return lambda: None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one line, never return into the caller's code
        status = 1
        try:
            os.close(read_end)
            try:
                check()
                message = b""
            except NotProven as exc:
                message = str(exc).encode("utf-8", "replace")
            except BaseException as exc:  # noqa: BLE001 (reported to the parent)
                message = f"the check failed: {type(exc).__name__}: {exc}".encode("utf-8", "replace")
            os.write(write_end, b"\n" + message[:4000])
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)

    def wait() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        os.waitpid(pid, 0)
        if report != b"\n":
            raise NotProven(report[1:].decode("utf-8", "replace") or "the proof's process died")

    return wait


class PendingProof:
    """A proof under way (:func:`start`); :meth:`result` gives the proven engine."""

    def __init__(self, model_cfg: dict, ranked: list[str], byte_to_char: dict[int, str], wait):
        self._vocab, self._ranked, self._byte_to_char, self._wait = (
            model_cfg["vocab"],
            ranked,
            byte_to_char,
            wait,
        )

    def result(self) -> Callable[[bytes], list[int]]:
        """tiktoken's ``encode_single_piece`` (UTF-8 bytes of one pre-token -> token ids), proven equal
        to the model's own BPE; raises :class:`NotProven`."""
        import tiktoken

        try:
            ranks = _ranks(self._vocab, self._ranked, self._byte_to_char)
            encoding = tiktoken.Encoding(
                "neoxflow-proven", pat_str=r"[\s\S]+", mergeable_ranks=ranks, special_tokens={}
            )
        finally:
            self._wait()  # the proof's verdict comes first: a failed condition explains a failure here
        encode = getattr(encoding._core_bpe, "encode_single_piece", None)  # noqa: SLF001 (the BPE alone)
        if encode is None:
            raise NotProven(f"tiktoken {tiktoken.__version__} has no encode_single_piece")
        return encode

    def abandon(self) -> None:
        """Wait for the check and drop it (the caller failed meanwhile)."""
        try:
            self._wait()
        except NotProven:
            pass


def start(model_cfg: dict, model, byte_to_char: dict[int, str], added: Iterable[str] = ()) -> PendingProof:
    """Begin proving that tiktoken's BPE equals ``model``'s (a ``tokenizers`` model whose JSON is
    ``model_cfg``; ``added``: the tokenizer's added tokens). Every check (~0.2 s, most of it the
    model's own BPE of each token) runs in a child process while the caller builds the rest; the
    caller's share is tiktoken's table. Raises ``ImportError`` without tiktoken."""
    import tiktoken  # noqa: F401 (fail before any work)

    ranked = ranked_tokens(model_cfg, added)

    def check() -> None:
        _check_reproduced(_vocabulary(model_cfg, byte_to_char, ranked), hf_merge_bpe(model))

    return PendingProof(model_cfg, ranked, byte_to_char, _in_child(check))


def load(model_cfg: dict, model, byte_to_char: dict[int, str], added: Iterable[str] = ()):
    """:func:`start` and wait: tiktoken's ``encode_single_piece``, proven equal to ``model``'s BPE."""
    return start(model_cfg, model, byte_to_char, added).result()
