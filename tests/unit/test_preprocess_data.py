"""preprocess_data: token-for-token equality with HF ``Tokenizer.encode(text).ids`` (what NeoX's
HFTokenizer calls), every input format, NeoX's document rules, and clear failures on bad input."""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jsonl_blocks
import mmidx_dataset
import numpy as np
import preprocess_data as pp
import pretokenizer
import pytest
import tokenizer_engine

from tests.conftest import TOKENIZER

ADVERSARIAL = [
    " ", "  ", "   ", " " * 24, " " * 25, " " * 49, "a" + " " * 30 + "b", "\t", "\t\t  \t", "a  b",
    "a   b\tc", "x \t y", "hello\r\nworld\r\n", "x \r\n y", "\n\n\n", " \n \n\n  x", "end   ", "  lead",
    "café", "cafe\u0301", "Å vs A\u030a", "\u1112\u1161\u11ab \ud55c", "東京都は日本の首都です。",
    "👩\u200d👩\u200d👧\u200d👦 family 🏳️\u200d🌈", "\x00\x01\x07\x1b[31m\x7f\x1c\x1d\x1e\x1f",
    "\u200b\u200d\u2028\u2029\u00a0\u3000\u0085\x0b\x0c", "<|endoftext|>", "a<|endoftext|>b",
    "<|padding|>  <|endoftext|>", "<|endoftext", "it's 'll 'LL I'M don't", "12345 ١٢٣ ½ Ⅻ ²",
    "∑∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\ufeffBOM", "Z̤͔ͧ̑̓ä͖̭̈̇lgo", "a" * 5000, "مرحبا بالعالم", "नमस्ते दुनिया",
    "สวัสดีชาวโลก", "\U000e0100 \U0001fae8 \u0558 \u088f", "ﬁ ﬀ ㎏ Ⅸ", "  \u3000  \u00a0 ",
]  # fmt: skip

_POOL = list("aZ09 \t\n\r'!.-_") + [
    "  ",
    "   ",
    "'s",
    "'ll",
    "é",
    "e\u0301",
    "東",
    "🙂",
    "\u200d",
    "\u00a0",
    "\x00",
]


def _fuzz(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def hf():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER))


@pytest.fixture(scope="module")
def fast():
    return tokenizer_engine.FastExactEncoder(str(TOKENIZER))


def test_fast_encoder_equals_hf_encode_on_adversarial_text(fast, hf):
    for text in ADVERSARIAL + _fuzz(400):
        assert fast.encode(text) == hf.encode(text).ids, repr(text)


def test_encode_many_bytes_equals_encode_per_document(fast, hf):
    """The batch path (what the workers run) packs exactly HF's ids, document by document."""
    texts = ADVERSARIAL + _fuzz(300, seed=11)
    packed = tokenizer_engine.FastExactEncoder(str(TOKENIZER)).encode_many_bytes(texts)
    assert [np.frombuffer(b, dtype=np.uint16).tolist() for b in packed] == [hf.encode(t).ids for t in texts]


def test_stdlib_re_fallback_pattern_is_exact_too(monkeypatch, hf):
    """Without the 'regex' package, chunk misses use ``re`` with spelled-out Unicode classes."""
    monkeypatch.setattr(tokenizer_engine, "unicode_split_pattern", pretokenizer.stdlib_unicode_split_pattern)
    enc = tokenizer_engine.FastExactEncoder(str(TOKENIZER))
    for text in ADVERSARIAL + _fuzz(200, seed=9):
        assert enc.encode(text) == hf.encode(text).ids, repr(text)


def test_normalization_shortcut_agrees_with_the_tokenizers_normalizer(fast, hf):
    """Already-normalized text skips the tokenizer's normalizer (Python's quick check); text with
    combining marks, singletons, composition exclusions, Hangul jamo, compatibility characters or code
    points unassigned in Python's tables must still come out exactly as the tokenizer makes it."""
    pool = ["e", "\u0301", "\u0327", "\u0323", "\u0307", "A", "\u030a", "\u1100", "\u1161", "\u11a8", "가",
            "ﬁ", "\u2126", "\u212b", "\u0958", "\u0915", "\u093c", "\u0378", "\U000e01f0", "\U0003134b", " ",
            "x"]  # fmt: skip
    rng = random.Random(17)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(600)]
    assert any(not fast._already_normalized(t) for t in texts) and any(
        fast._already_normalized(t) for t in texts
    )
    for text in texts:
        assert fast.encode(text) == hf.encode(text).ids, repr(text)


def test_whitespace_runs_fuzz(fast, hf):
    """Runs of spaces next to newlines, tabs and Unicode spaces: where added tokens and the GPT-2
    pattern's whitespace look-ahead meet."""
    rng = random.Random(23)
    pool = [" ", " ", " ", "\n", "\t", "\r\n", "x", "yz", "\u3000", "\u00a0", "!", "9", " " * 30]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for text in texts:
        assert fast.encode(text) == hf.encode(text).ids, repr(text)


def test_split_path_for_other_added_tokens_is_exact_too(hf):
    """Tokenizers whose normalized added tokens are not runs of spaces split them out first, then
    pre-tokenize each part (the 20B tokenizer's runs of 2..24 spaces are folded into one pattern)."""
    enc = tokenizer_engine.FastExactEncoder(str(TOKENIZER))
    assert enc._split_fast_runs is not None and enc._chunks_runs is not None
    enc._split_fast_runs = enc._chunks_runs = None
    for text in ADVERSARIAL + _fuzz(300, seed=21):
        assert enc.encode(text) == hf.encode(text).ids, repr(text)


def test_fast_pattern_takes_text_it_classifies_right_and_chunks_take_the_rest(hf):
    """The fast pattern spells out the letters and numbers of the BMP and calls everything else
    "other": right for Latin, Cyrillic, CJK, punctuation and emoji, so such text is split by it (no
    chunks) and comes out exactly as the tokenizer makes it. A letter outside the BMP (mathematical
    fraktur) would be "other" to it: text holding one takes the chunk path, still exact."""
    enc = tokenizer_engine.FastExactEncoder(str(TOKENIZER))
    rng = random.Random(29)
    pool = ["it", "’s", "’", " ", " ", "“", "—", "€", "½", "5", "🙂", "\u200d", "!", "'s", "  ", "\n", "café",
            "Привет", "東京", "…", "x"]  # fmt: skip
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(1500)]
    assert [enc.encode(t) for t in texts] == [hf.encode(t).ids for t in texts]
    assert {"’", "—", "€", "½", "é", "П", "東", "🙂", "\u200d"} <= enc._fast_chars
    assert len(enc._chunk_cache) == len(enc._added)  # the chunk path was never taken
    astral = [t + " 𝔘𝔫𝔦 x" for t in texts[:50]]
    assert [enc.encode(t) for t in astral] == [hf.encode(t).ids for t in astral]
    assert len(enc._chunk_cache) > len(enc._added) and enc._not_fast & {"𝔘", "𝔫", "𝔦"}


def test_unverified_character_falls_back_to_the_tokenizer(monkeypatch, hf):
    """If our patterns disagreed with the tokenizer on a character's class (here: the check is made
    to fail for U+3000), documents holding it go to plain ``encode`` (still exact); others keep the
    fast path."""
    real = tokenizer_engine.FastExactEncoder._verify_char
    monkeypatch.setattr(
        tokenizer_engine.FastExactEncoder,
        "_verify_char",
        lambda self, c, pieces=None: c != "\u3000" and real(self, c, pieces),
    )
    enc = tokenizer_engine.FastExactEncoder(str(TOKENIZER))
    texts = ["plain words", "ideographic\u3000space", "more plain words", "x \u3000 y", "café"]
    assert [enc.encode(t) for t in texts] == [hf.encode(t).ids for t in texts]
    assert enc.fallback_docs == 2


def test_piece_cache_is_bounded_and_stays_exact(monkeypatch, hf):
    """Peak memory must not grow with the shard: the cache keeps its oldest (most frequent) half."""
    monkeypatch.setattr(tokenizer_engine, "PIECE_CACHE_MAX", 200)
    enc = tokenizer_engine.FastExactEncoder(str(TOKENIZER))
    texts = _fuzz(300, seed=13) + [" ".join(f"w{i}x{j}" for j in range(50)) for i in range(20)]
    assert [enc.encode(t) for t in texts] == [hf.encode(t).ids for t in texts]
    assert len(enc._cache) <= 200


def test_added_whitespace_tokens_are_used(fast, hf):
    """The 20B tokenizer's runs-of-spaces tokens (ids 50254..50276) appear, split leftmost-longest."""
    ids = fast.encode("a" + " " * 30 + "b")
    assert ids == hf.encode("a" + " " * 30 + "b").ids
    assert hf.token_to_id(" " * 24) in ids and hf.token_to_id(" " * 6) in ids


def test_encode_batch_equals_encode(hf):
    """NeoX calls encode() per document; the HF batch API gives the same ids (the bench relies on it)."""
    texts = ADVERSARIAL + _fuzz(100, seed=3)
    assert [e.ids for e in hf.encode_batch(texts)] == [hf.encode(t).ids for t in texts]


def test_multi_megabyte_document(fast, hf):
    rng = random.Random(5)
    words = ADVERSARIAL[:20] + ["the", "quick", "brown", "fox", "jumps", "café", "東京", "1999", "it's", "\n"]
    text = " ".join(rng.choice(words) for _ in range(250_000))
    assert len(text.encode()) > 2_000_000
    assert fast.encode(text) == hf.encode(text).ids


def _write_inputs(tmp_path: Path, docs: list[str], name: str) -> Path:
    lines = "".join(
        json.dumps({"text": d, "url": f"u{i}", "timestamp": "t"}) + "\n" for i, d in enumerate(docs)
    )
    data = lines.encode("utf-8")
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :]))
    elif name.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


DOCS = [
    "Hello world.",
    "",
    "   ",
    "second  doc\twith\r\ntabs",
    "",
    "café 東京 👩\u200d👩\u200d👧",
    "<|endoftext|>x",
]


@pytest.mark.parametrize("name", ["c4.jsonl", "c4.json", "c4.json.gz", "c4.jsonl.gz", "c4.jsonl.zst"])
def test_every_format_gives_the_text_field_tokens(tmp_path, hf, name):
    path = _write_inputs(tmp_path, DOCS, name)
    stats = pp.run([str(path)], str(tmp_path / "out"), str(TOKENIZER), append_eod=True, log_interval=0)
    r = mmidx_dataset.DatasetReader(tmp_path / "out_text_document")
    kept = [d for d in DOCS if d]  # empty dropped, whitespace-only kept
    assert r.dtype == np.uint16 and len(r) == len(kept) == r.num_docs == stats.items["text"]
    assert [r[i].tolist() for i in range(len(r))] == [hf.encode(d).ids + [0] for d in kept]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("name", ["b.jsonl", "b.jsonl.gz"])
def test_blocks_are_whole_lines_with_their_numbers(tmp_path, monkeypatch, size, name):
    monkeypatch.setattr(jsonl_blocks, "READ_CHUNK", 5)  # chunk edges everywhere, also inside lines
    lines = [b"short", b"", b"x" * 100, b"tail without newline"]
    payload = b"\n".join(lines)
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    blocks = list(jsonl_blocks.read_blocks([str(path)], size=size))
    assert b"".join(b.data for b in blocks) == payload
    assert all(b.data.endswith(b"\n") for b in blocks[:-1])  # cut after a newline only
    numbered = [
        (b.first_line + i, line) for b in blocks for i, line in enumerate(b.data.split(b"\n")) if line
    ]
    assert numbered == [(1, b"short"), (3, b"x" * 100), (4, b"tail without newline")]
    if size >= len(payload):
        assert len(blocks) == 1


def test_workers_and_batches_do_not_change_bytes(tmp_path, monkeypatch):
    docs = ADVERSARIAL + _fuzz(300, seed=11)
    path = _write_inputs(tmp_path, docs, "in.jsonl")
    pp.run([str(path)], str(tmp_path / "one"), str(TOKENIZER), append_eod=True, log_interval=0, engine="hf")
    monkeypatch.setattr(jsonl_blocks, "BLOCK_BYTES", 300)
    pp.run([str(path)], str(tmp_path / "two"), str(TOKENIZER), append_eod=True, workers=2, log_interval=0)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one_text_document{ext}").read_bytes() == (
            tmp_path / f"two_text_document{ext}"
        ).read_bytes()


def test_multiple_inputs_keys_and_no_eod(tmp_path, hf):
    a = tmp_path / "a.jsonl"
    a.write_text(
        json.dumps({"text": "one", "title": "T1"}) + "\n\n" + json.dumps({"text": "two", "title": ""}) + "\n"
    )
    b = _write_inputs(tmp_path, ["three"], "b.jsonl.gz")
    pp.run([str(a), str(b)], str(tmp_path / "o"), str(TOKENIZER), keys=("text",), log_interval=0)
    r = mmidx_dataset.DatasetReader(tmp_path / "o_text_document")
    assert [r[i].tolist() for i in range(len(r))] == [hf.encode(t).ids for t in ("one", "two", "three")]
    pp.run([str(a)], str(tmp_path / "k"), str(TOKENIZER), keys=("text", "title"), log_interval=0)
    titles = mmidx_dataset.DatasetReader(tmp_path / "k_title_document")
    assert len(titles) == 1 and titles[0].tolist() == hf.encode("T1").ids  # empty title dropped


def test_progress_lines_on_stderr(tmp_path, capsys):
    path = _write_inputs(tmp_path, [f"doc {i}" for i in range(25)], "p.jsonl")
    rc = pp.main(["--input", str(path), "--tokenizer-type", "HFTokenizer", "--vocab-file", str(TOKENIZER),
                  "--output-prefix", str(tmp_path / "p"), "--log-interval", "10"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    assert "documents" in err and "tokens" in err and "MB/s" in err
    summary = json.loads(out)
    assert summary["outputs"][str(tmp_path / "p_text_document")]["documents"] == 25


def _main(tmp_path, path, *extra):
    return pp.main(["--input", str(path), "--tokenizer-type", "HFTokenizer", "--vocab-file", str(TOKENIZER),
                    "--append-eod", "--output-prefix", str(tmp_path / "bad"), *extra])  # fmt: skip


def _assert_failed_cleanly(tmp_path, capsys, rc, *fragments):
    err = capsys.readouterr().err
    assert rc == 1
    for frag in fragments:
        assert frag in err, err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("bad")]


GOOD = b'{"text": "ok"}\n'


@pytest.mark.parametrize(
    ("name", "payload", "fragments"),
    [
        ("x.jsonl", GOOD + b'{"text": "unterminated}\n', ["x.jsonl:2", "invalid JSON"]),
        ("x.jsonl", GOOD * 2 + b'{"url": "u"}\n', ["x.jsonl:3", "no 'text' field"]),
        ("x.jsonl", GOOD + b'{"text": 5}\n', ["x.jsonl:2", "expected a string"]),
        ("x.jsonl", GOOD + b'{"text": "caf\xe9"}\n', ["x.jsonl:2", "invalid UTF-8"]),
        ("x.jsonl", GOOD + b'["text"]\n', ["x.jsonl:2", "expected an object"]),
        ("x.jsonl", GOOD + b'{"text": "lone \\ud800 surrogate"}\n', ["x.jsonl:2", "cannot tokenize"]),
        ("x.json.gz", gzip.compress(GOOD * 500)[:-30], ["x.json.gz", "truncated gzip"]),
        ("x.json.gz", GOOD, ["x.json.gz", "not a gzip file"]),
        ("x.jsonl.gz", b"", ["x.jsonl.gz", "empty file"]),
        ("x.txt", GOOD, ["x.txt", "unsupported input name"]),
    ],
)
def test_bad_input_fails_with_file_and_line(tmp_path, capsys, name, payload, fragments):
    path = tmp_path / name
    path.write_bytes(payload)
    _assert_failed_cleanly(tmp_path, capsys, _main(tmp_path, path), *fragments)


PARSE_LINES = [
    b'{"text": "plain", "url": "u"}',
    b'{"text": ""}',  # empty: dropped, still a document read
    b'{"text": " \\t "}',  # whitespace-only: kept
    b"",  # blank line: skipped
    b"   ",
    b'{"text": "crlf"}\r',  # JSON white space after the value, as json.loads allows
    b'  {"text": "indented"}',  # white space before it (the line-by-line path takes these)
    b'{"text": ["para one", "para two"]}',  # lm_dataformat's autojoin
    b'{"text": "caf\xc3\xa9 \\u00e9 \xf0\x9f\x91\xa9\\n"}',
    b'{"url": "u", "text": "keys in another order", "meta": {"a": [1, 2]}}',
]


@pytest.mark.parametrize("seed", range(20))
def test_block_parse_equals_the_line_by_line_reference(seed):
    rng = random.Random(seed)
    lines = [rng.choice(PARSE_LINES) for _ in range(rng.randint(1, 40))]
    block = jsonl_blocks.Block("x.jsonl", 1 + seed, b"\n".join(lines) + rng.choice([b"", b"\n"]))
    assert jsonl_blocks.parse_block(block, ["text"]) == jsonl_blocks.parse_block_by_line(block, ["text"])


def test_plain_lines_do_not_take_the_line_by_line_path(monkeypatch):
    block = jsonl_blocks.Block("x.jsonl", 7, b"\n".join(PARSE_LINES[:6] + PARSE_LINES[8:]) + b"\n")
    expected = jsonl_blocks.parse_block_by_line(block, ["text"])
    monkeypatch.setattr(
        jsonl_blocks, "parse_block_by_line", lambda *a: pytest.fail("took the line-by-line path")
    )
    assert jsonl_blocks.parse_block(block, ["text"]) == expected
    assert expected[0] == 6 and expected[2] == [[7, 9, 12, 13, 14]]


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        # each line starts with "{" and ends with "}", and joined with commas they would make one valid
        # JSON array of three objects: parsing must still be per line
        (b'{"a": [{"b": 1}\n{"c": 2}]}\n{"text": "x"}, {"text": "y"}\n', "x.jsonl:1"),
        (b'{"text": "ok"} {"text": "two values"}\n', "x.jsonl:1"),
        (b'{"text": "ok"}\n\xef\xbb\xbf{"text": "BOM"}\n', "x.jsonl:2"),
    ],
)
def test_lines_valid_only_together_are_invalid_json(tmp_path, capsys, payload, where):
    path = tmp_path / "x.jsonl"
    path.write_bytes(payload)
    _assert_failed_cleanly(tmp_path, capsys, _main(tmp_path, path), where, "invalid JSON")


def test_truncated_zstd(tmp_path, capsys):
    import zstandard

    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(GOOD * 1000)[:-10])
    _assert_failed_cleanly(tmp_path, capsys, _main(tmp_path, path), "x.jsonl.zst", "truncated zstd")


def test_error_in_worker_process_names_line(tmp_path, capsys):
    path = tmp_path / "w.jsonl"
    path.write_bytes(GOOD * 50 + b'{"text": "\\udfff"}\n')
    _assert_failed_cleanly(tmp_path, capsys, _main(tmp_path, path, "--workers", "2"), "w.jsonl:51")


def test_missing_ftfy_is_a_clear_error(tmp_path):
    try:
        import ftfy  # noqa: F401
    except ImportError:
        path = _write_inputs(tmp_path, ["x"], "f.jsonl")
        with pytest.raises(SystemExit, match="ftfy"):
            _main(tmp_path, path, "--ftfy")
    else:
        pytest.skip("ftfy is installed here")


def test_unsupported_flags_rejected(tmp_path, capsys):
    path = _write_inputs(tmp_path, ["x"], "f.jsonl")
    assert _main(tmp_path, path, "--dataset-impl", "lazy") == 2
    assert "mmap only" in capsys.readouterr().err


@pytest.mark.skipif(
    not os.environ.get("NEOX_CHECKOUT"), reason="set NEOX_CHECKOUT (and NEOX_PYTHON) to compare"
)
def test_byte_identical_to_neox_script(tmp_path):
    """Runs NeoX's own tools/datasets/preprocess_data.py (its deps in NEOX_PYTHON's environment)."""
    docs = [d for d in ADVERSARIAL if "\x00" not in d] + _fuzz(200, seed=13) + ["", "plain text"] * 30
    path = _write_inputs(tmp_path, docs, "neox.jsonl")
    for workers in ("1", "2"):
        subprocess.run(
            [os.environ.get("NEOX_PYTHON", sys.executable), "tools/datasets/preprocess_data.py", "--input",
             str(path), "--tokenizer-type", "HFTokenizer", "--vocab-file", str(TOKENIZER), "--append-eod",
             "--output-prefix", str(tmp_path / f"neox{workers}"), "--workers", workers],
            cwd=os.environ["NEOX_CHECKOUT"], check=True, capture_output=True,
        )  # fmt: skip
        assert _main(tmp_path, path, "--workers", workers) == 0
        for ext in (".bin", ".idx"):
            ours = (tmp_path / f"bad_text_document{ext}").read_bytes()
            assert ours == (tmp_path / f"neox{workers}_text_document{ext}").read_bytes(), (workers, ext)


class _RecordingPool:
    """Runs jobs at ``get()`` and records how many input bytes were queued but not yet collected."""

    def __init__(self):
        self.queued, self.peak, self.queued_before_first_get = 0, 0, None

    def apply_async(self, fn, args):
        (block,) = args
        self.queued += len(block.data)
        self.peak = max(self.peak, self.queued)
        pool = self

        class _Result:
            def get(self):
                if pool.queued_before_first_get is None:
                    pool.queued_before_first_get = pool.queued
                pool.queued -= len(block.data)
                return block.first_line

        return _Result()


def _blocks(sizes):
    return [jsonl_blocks.Block("x.jsonl", i, b"x" * size) for i, size in enumerate(sizes)]


def test_read_ahead_is_ordered_and_bounded_by_bytes():
    pool = _RecordingPool()
    out = list(pp._ordered_bounded(pool, iter(_blocks([100] * 50)), max_in_flight_bytes=400))
    assert out == list(range(50))
    assert pool.peak == 600  # the oldest block, then the 400-byte budget plus the oldest's size behind it


def test_a_large_block_at_the_head_lets_the_others_run_ahead_by_its_size():
    pool = _RecordingPool()
    out = list(pp._ordered_bounded(pool, iter(_blocks([5000] + [100] * 200)), max_in_flight_bytes=400))
    assert out == list(range(201))
    # behind the slow block: the 400-byte budget plus its 5000 bytes, not just the budget
    assert pool.queued_before_first_get == 5000 + (400 + 5000)
    assert pool.peak <= 400 + 2 * 5000 + 100


# Records the thread settings in the environment when numpy is first imported (its BLAS pool starts then).
_NUMPY_IMPORT_WATCH = """
import importlib.abc, os, sys
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.update({k: os.environ.get(k) for k in sys.argv[3:]})
        return None
sys.meta_path.insert(0, Watch())
sys.path.insert(0, sys.argv[1])
__import__(sys.argv[2])
print(seen)
"""
_THREAD_SETTINGS = {
    "TOKENIZERS_PARALLELISM": "false",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.mark.parametrize("module", ["preprocess_data", "tokenizer_engine"])
def test_thread_settings_are_made_before_numpy_is_imported(module):
    """The script, and the engine imported on its own, set one thread per worker before anything imports
    numpy (an idle BLAS pool per worker costs cores), whatever sibling module imports it."""
    cluster = Path(pp.__file__).parent
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", _NUMPY_IMPORT_WATCH, str(cluster), module, *_THREAD_SETTINGS],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == repr(_THREAD_SETTINGS)
