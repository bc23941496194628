"""The tokenizer benchmark's input generator and a small end-to-end run of it (ours vs plain HF)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TOKENIZER

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_tokenize", REPO / "bench" / "bench_tokenize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tokenize"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_tokenize"]


def _paragraph_draws(path: Path) -> Counter:
    """How often each paragraph (``p<n>``) was drawn into the generated documents."""
    draws: Counter = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        draws.update(re.findall(r"\bp\d+\b", json.loads(line)["text"]))
    return draws


def test_distinct_input_draws_each_paragraph_once(bench, monkeypatch, tmp_path):
    pool = [f"p{i}" for i in range(100)] * 3  # the machine's docs repeat paragraphs too
    monkeypatch.setattr(bench, "_paragraphs", lambda: pool)
    bench.make_input(tmp_path / "d.jsonl", docs=15, distinct=True)  # at most 90 draws of 100
    draws = _paragraph_draws(tmp_path / "d.jsonl")
    assert draws and max(draws.values()) == 1


def test_distinct_input_reshuffles_when_the_pool_runs_out(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_paragraphs", lambda: ["p1", "p2", "p3"])
    bench.make_input(tmp_path / "d.jsonl", docs=30, distinct=True)
    draws = _paragraph_draws(tmp_path / "d.jsonl")
    assert set(draws) == {"p1", "p2", "p3"} and max(draws.values()) - min(draws.values()) <= 1


def test_default_input_draws_with_replacement(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_paragraphs", lambda: [f"p{i}" for i in range(100)])
    bench.make_input(tmp_path / "r.jsonl", docs=15)
    assert max(_paragraph_draws(tmp_path / "r.jsonl").values()) > 1


def test_bench_runs_and_outputs_are_byte_identical(bench, monkeypatch, tmp_path, capsys):
    words = "the quick brown fox jumps over lazy dogs while caf\u00e9 owners watch".split()
    monkeypatch.setattr(bench, "_paragraphs", lambda: [" ".join(words[i:] + words[:i]) for i in range(12)])
    rc = bench.main(["--docs", "40", "--workdir", str(tmp_path), "--distinct", "--tokenizer", str(TOKENIZER)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"hf_encode_batch .* byte-identical", out), out
    assert re.search(r"speed-up ours vs hf_encode_batch: \d+\.\d+x", out), out
    assert (tmp_path / "c4-bench-distinct.jsonl").is_file()
