"""include/cluster/rank_bpe.py: tiktoken's BPE is used only where it is proven equal to the model's.

Real parts: the GPT-NeoX-20B tokenizer (include/tokenizers), HF ``tokenizers`` BPE models, tiktoken."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "include" / "cluster"))

import pretokenizer  # noqa: E402
import rank_bpe  # noqa: E402
import tokenizer_engine  # noqa: E402

tiktoken = pytest.importorskip("tiktoken")
from tokenizers import Tokenizer, models  # noqa: E402

from tests.conftest import TOKENIZER  # noqa: E402

B2U = pretokenizer.bytes_to_unicode()
BYTE_LEVEL = {b: ord(c) for b, c in B2U.items()}


def _model_ids(model, piece: str) -> list[int]:
    """The model's own BPE of one pre-token (what the fast path used before tiktoken)."""
    raw = piece.encode("utf-8").decode("latin-1").translate(BYTE_LEVEL)
    return [t.id for t in model.tokenize(raw)]


@pytest.fixture(scope="module")
def neox20b():
    cfg = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(TOKENIZER))
    return cfg, tok


def test_20b_is_proven_and_tiktoken_matches_the_model(neox20b):
    cfg, tok = neox20b
    encode = rank_bpe.load(cfg["model"], tok.model, B2U, [t["content"] for t in cfg["added_tokens"]])
    rng = random.Random(5)
    alphabet = "etaoinshrdlu ETAOIN0123456789.,'!?-_()[]éüßçñ東京語😀👩\u200d🔥\t\n"
    pieces = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(4000)]
    pieces += [w for w in (REPO / "README.md").read_text(encoding="utf-8").split()]
    pieces += ["a" * 5000, "ab" * 3000, "😀" * 700, " " + "x" * 20000]  # long pieces (tiktoken's heap path)
    for piece in pieces:
        assert encode(piece.encode("utf-8")) == _model_ids(tok.model, piece), piece


def _byte_level_model(extra: list[str], merges: list[tuple[str, str]]):
    """A byte-level BPE model: every byte a token (ids 0..255, in byte order), then ``extra``."""
    vocab = {B2U[b]: b for b in range(256)}
    vocab.update({t: 256 + i for i, t in enumerate(extra)})
    cfg = {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}
    return cfg, models.BPE(vocab=vocab, merges=merges)


def test_a_vocabulary_where_the_engines_differ_is_rejected():
    # Rules: b+c, a+b, ab+c. On "abc" merge BPE makes "bc" first and stops at [a, bc] ((a, bc) is no
    # rule); rank BPE sees that "a"+"bc" spells token "abc" and merges it. Exactly what the proof catches.
    cfg, model = _byte_level_model(["bc", "ab", "abc"], [("b", "c"), ("a", "b"), ("ab", "c")])
    assert _model_ids(model, "abc") == [cfg["vocab"]["a"], cfg["vocab"]["bc"]]
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"bc": 256, b"ab": 257, b"abc": 258})
    unchecked = tiktoken.Encoding("x", pat_str=r"[\s\S]+", mergeable_ranks=ranks, special_tokens={})
    assert unchecked.encode_ordinary("abc") == [258]  # what using tiktoken blindly would write
    with pytest.raises(rank_bpe.NotProven, match="does not reproduce token 'abc'"):
        rank_bpe.load(cfg, model, B2U)


def test_a_consistent_small_vocabulary_is_proven():
    cfg, model = _byte_level_model(["ab", "abc", "cd"], [("a", "b"), ("ab", "c"), ("c", "d")])
    encode = rank_bpe.load(cfg, model, B2U)
    for text in ("abc", "abcd", "cdab", "abab", "aabcc", "x"):
        assert encode(text.encode()) == _model_ids(model, text), text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda cfg: cfg.update(dropout=0.1), "dropout"),
        (lambda cfg: cfg.update(type="WordPiece"), "model type"),
        (lambda cfg: cfg["merges"].append("z q"), "not in the vocabulary"),
        (lambda cfg: cfg["merges"].reverse(), "do not grow with rule rank"),
        (lambda cfg: cfg["vocab"].pop(B2U[ord("q")]), "bytes without a token"),
        (lambda cfg: cfg["vocab"].update(xyz=999), "neither one byte nor made by a rule"),
    ],
)
def test_structural_conditions(change, message):
    cfg, model = _byte_level_model(["ab", "abc"], [("a", "b"), ("ab", "c")])
    change(cfg)
    with pytest.raises(rank_bpe.NotProven, match=message):
        rank_bpe.proven_ranks(cfg, rank_bpe.hf_merge_bpe(model), B2U)


def test_the_check_runs_in_a_child_and_its_failure_reaches_the_caller():
    def failing():
        raise rank_bpe.NotProven("the child says no")

    def crashing():
        raise RuntimeError("boom")

    with pytest.raises(rank_bpe.NotProven, match="the child says no"):
        rank_bpe._in_child(failing)()
    with pytest.raises(rank_bpe.NotProven, match="RuntimeError: boom"):
        rank_bpe._in_child(crashing)()
    rank_bpe._in_child(lambda: None)()  # passes


def test_encoder_keeps_the_models_bpe_when_not_proven(tmp_path, neox20b):
    cfg, tok = neox20b
    broken = json.loads(json.dumps(cfg))
    merges = broken["model"]["merges"]
    merges[100], merges[101] = merges[101], merges[100]  # ids no longer grow with rule rank
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    enc = tokenizer_engine.make_encoder(str(path))
    assert isinstance(enc, tokenizer_engine.FastExactEncoder) and "do not grow" in enc.rank_bpe_unproven
    assert "the tokenizer's own" in enc.describe()
    reference = Tokenizer.from_file(str(path))
    for text in ("Hello world, it's 2026!", "  spaced   out\n\ttext", "naïve café 東京"):
        assert enc.encode(text) == reference.encode(text).ids
