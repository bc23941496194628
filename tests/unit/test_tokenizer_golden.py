"""Our tokenizer's output, byte for byte, against what GPT-NeoX's own ``tools/datasets/preprocess_data.py``
wrote for the same inputs (issue 16 item 7).

CI has no NeoX checkout, so the hashes NeoX's script produced were recorded once from a real checkout into
``tests/fixtures/tokenizer-golden/neox.json``; a change to the tokenizer that alters one byte of a ``.bin``
or ``.idx`` fails here. The inputs are generated, not stored: an adversarial and fuzzed JSON-lines file and
a C4-format shard (``c4_fixture``, the local cluster's seed); their hashes are recorded too, so a change to
the generators shows up as such rather than as a tokenizer difference.

Re-record (only after checking the difference against NeoX itself)::

    NEOX_CHECKOUT=<gpt-neox checkout> NEOX_PYTHON=<python with NeoX's deps> NEOX_COMMIT=<its commit> \\
        .venv/bin/python -m tests.unit.test_tokenizer_golden --record
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import c4_fixture
import preprocess_data as pp
import pytest

from tests.conftest import TOKENIZER
from tests.unit.test_preprocess_data import ADVERSARIAL, _fuzz, _write_inputs

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer-golden" / "neox.json"
WORKERS = ("1", "2")


def make_inputs(folder: Path) -> dict[str, Path]:
    """The inputs, by name; deterministic."""
    docs = [d for d in ADVERSARIAL if "\x00" not in d] + _fuzz(200, seed=13) + ["", "plain text"] * 30
    shard = folder / "c4-train.00000-of-01024.json.gz"
    c4_fixture.write_shard(str(shard), seed=c4_fixture._shard_seed(1234, "train", 0), docs=400)
    c4 = folder / "c4-shard.jsonl"  # NeoX's reader (lm_dataformat) takes JSON lines, not .json.gz
    c4.write_bytes(gzip.decompress(shard.read_bytes()))
    return {"adversarial.jsonl": _write_inputs(folder, docs, "adversarial.jsonl"), "c4-shard.jsonl": c4}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenize_args(path: Path, prefix: Path, workers: str) -> list[str]:
    return ["--input", str(path), "--tokenizer-type", "HFTokenizer", "--vocab-file", str(TOKENIZER),
            "--append-eod", "--output-prefix", str(prefix), "--workers", workers]  # fmt: skip


def output_hashes(prefix: Path) -> dict[str, str]:
    return {ext: sha256(Path(f"{prefix}_text_document{ext}")) for ext in (".bin", ".idx")}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("workers", WORKERS)
def test_our_output_is_byte_identical_to_what_neox_wrote(golden, tmp_path, workers):
    inputs = make_inputs(tmp_path)
    assert set(inputs) == set(golden["inputs"])
    for name, path in inputs.items():
        recorded = golden["inputs"][name]
        assert sha256(path) == recorded["sha256"], f"{name}: the input generator changed; re-record"
        prefix = tmp_path / f"ours-{name}-{workers}"
        assert pp.main(tokenize_args(path, prefix, workers)) == 0
        assert output_hashes(prefix) == recorded["neox"][workers], f"{name}, --workers {workers}"


def record(folder: Path) -> dict:
    """Run NeoX's script on every input; the fixture's content."""
    checkout, python = os.environ["NEOX_CHECKOUT"], os.environ["NEOX_PYTHON"]
    out: dict = {"neox_commit": os.environ["NEOX_COMMIT"], "script": "tools/datasets/preprocess_data.py"}
    out["tokenizer_sha256"] = sha256(TOKENIZER)
    out["inputs"] = {}
    for name, path in make_inputs(folder).items():
        entry = {"sha256": sha256(path), "neox": {}}
        for workers in WORKERS:
            prefix = folder / f"neox-{name}-{workers}"
            command = [python, "tools/datasets/preprocess_data.py", *tokenize_args(path, prefix, workers)]
            subprocess.run(command, cwd=checkout, check=True, capture_output=True)
            entry["neox"][workers] = output_hashes(prefix)
        out["inputs"][name] = entry
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(record(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
