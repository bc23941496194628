"""A plan stays small whatever the selection: per-shard lists live in manifests named by their hash, which
the plan points to (issue 19 item 3; the plan is an XCom every task pulls)."""

from __future__ import annotations

import hashlib
import json

import pytest

from neoxflow.data.shards import ShardSelection
from neoxflow.pipeline import record
from neoxflow.pipeline.plan import ARRAY_STEPS, manifest_texts, plan_run
from tests.unit.manifest_reader import parse_manifest

PLAN_XCOM_LIMIT = 32 * 1024


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))


def plan(shards: str) -> dict:
    return plan_run({"profile": "local", "run_name": "scale", "shards": shards})


@pytest.mark.parametrize("shards", ["subset", "0-39", "all", ",".join(str(i) for i in range(0, 1024, 2))])
def test_any_selection_keeps_the_plan_under_32_kb(shards):
    p = plan(shards)
    size = len(json.dumps(p).encode())
    assert size <= PLAN_XCOM_LIMIT, f"plan of {shards[:20]!r} is {size} bytes"
    names = ShardSelection.parse(shards).names()
    assert all(name not in json.dumps(p) for name in names[1:]), "no shard list in the plan itself"


def test_the_manifests_hold_every_shard_and_match_their_hashes():
    p = plan("all")
    texts = manifest_texts(p)
    assert set(texts) == set(p["manifests"]) and len(texts) == 2  # fetch and stage share one
    for path, text in texts.items():
        sha = hashlib.sha256(text.encode()).hexdigest()
        assert path.endswith(f"/manifests/{sha}.tsv") and p["manifests"][path] == sha
    moving = parse_manifest(texts[p["data"]["fetch"]["manifest"]["path"]])
    assert len(moving) == 1025 and moving[-1].name == "20B_tokenizer.json"  # 1024 shards, then the tokenizer
    tokenize = texts[p["data"]["tokenize"]["manifest"]["path"]].splitlines()
    assert len(tokenize) == 1024 and tokenize[1023].startswith("c4-train.01023-of-01024.json.gz\t")
    for step in ARRAY_STEPS:
        job = p["data"][step]
        assert job["manifest"]["path"] in job["script"] and job["array_lines"] in (1024, 1025)
        assert job["array"] == f"0-1000%{p['data'][step]['array_parallelism']}", "Slurm's default limit"
    merge = p["data"]["merge"]["script"]
    assert merge.count(f"--prefixes-from-manifest {p['data']['tokenize']['manifest']['path']}") == 3


def test_a_manifest_that_cannot_be_derived_again_is_refused():
    p = plan("0-3")
    path = next(iter(p["manifests"]))
    p["manifests"][path] = "0" * 64
    with pytest.raises(ValueError, match="cannot be derived again"):
        manifest_texts(p)


def test_the_record_still_names_every_shard():
    p = plan("0-2,7")
    planned = record.record_from_plan(p, {"shards": "0-2,7"})
    assert planned.request["shards"] == "0-2,7-7"
    assert planned.fixed["dataset"]["shards"] == ShardSelection.parse("0-2,7").names()
    assert planned.fixed["dataset"]["id"] == p["dataset"]["id"]
