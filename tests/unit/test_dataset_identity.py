"""Datasets are immutable: a dataset's folder is named by what it is built from (pipeline/plan.py).

NeoX caches index maps beside its data_path and reuses them whenever they exist; a dataset rebuilt under
the same name would be read through stale maps (wrong samples, no error). Real plans from the real
profiles; the merge script's guard runs in a real bash.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from neoxflow.data.shards import shard_stem
from neoxflow.neox.profile_loader import load_profile
from neoxflow.pipeline.plan import dataset_selection, manifest_texts, plan_run

ENV = {"NEOXFLOW_TOKENIZER_SOURCE": "http://127.0.0.1:18080/20B_tokenizer.json"}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", ENV["NEOXFLOW_TOKENIZER_SOURCE"])
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))


def plan(run_name: str, **form) -> dict:
    return plan_run(
        {"profile": "local", "run_name": run_name, "train_iters": 40, "checkpoint_interval": 20, **form}
    )


def test_each_selection_gets_its_own_dataset_and_runs_share_one():
    a, b, c = plan("run-a", shards="0-1"), plan("run-b", shards="0-1"), plan("run-c", shards="0-2")
    assert a["layout"]["data_path"] == b["layout"]["data_path"]  # same content, one dataset
    assert a["layout"]["data_path"] != c["layout"]["data_path"]  # other shards, another folder
    assert a["dataset"]["id"] in a["layout"]["data_path"].split("/")
    # NeoX trains on exactly that folder
    assert f'"data_path": "{a["layout"]["data_path"]}"' in a["config"]["rendered"]
    # the per-shard outputs depend on the tokenizer and options only: shared across selections
    assert a["layout"]["tokens_dir"] == c["layout"]["tokens_dir"]


def test_the_tokenizer_is_part_of_the_identity():
    from neoxflow.data.shards import ShardSelection
    from neoxflow.pipeline.plan import dataset_identity

    profile = load_profile("local")
    selection = ShardSelection.parse("0-1")
    named = dataset_identity(selection, profile)
    assert named["tokenizer"] == {"sha256": profile.tokenizer_sha256}  # by content, not by download URL
    other = dataset_identity(selection, dataclasses.replace(profile, tokenizer_sha256="0" * 64))
    assert other["id"] != named["id"] and other["tokens_id"] != named["tokens_id"]
    unnamed = dataset_identity(selection, dataclasses.replace(profile, tokenizer_sha256=None))
    assert unnamed["tokenizer"] == {"source": profile.tokenizer_source} and unnamed["id"] != named["id"]


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_the_merge_job_checks_the_tokenizer_then_builds_once(tmp_path):
    import shutil

    import mmidx_dataset
    import numpy as np

    from tests.conftest import REPO, TOKENIZER

    p = plan("run-a", shards="0-1")
    lay, merge = p["layout"], p["data"]["merge"]
    script = merge["script"]
    # the tokenizer on "FSx" is not the one the profile names: the job stops before merging anything
    tok = tmp_path / "fsx" / "tokenizers" / "20B_tokenizer.json"
    tok.parent.mkdir(parents=True)
    tok.write_text("not the tokenizer")
    result = sh(script)
    assert result.returncode == 3 and "tokenizer.sha256" in result.stderr
    assert not (tmp_path / "fsx" / "data").exists()
    # the right tokenizer, the shipped code and two tokenized shards: merged, validated, summary written
    shutil.copy(TOKENIZER, tok)
    shutil.copytree(REPO / "include" / "cluster", lay["code_dir"])
    for path, text in manifest_texts(p).items():  # what prepare.ship_code places
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    for name in dataset_selection(p["dataset"]).names():
        prefix = f"{lay['tokens_dir']}/{shard_stem(name)}_text_document"
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        with mmidx_dataset.DatasetWriter(prefix, np.uint16) as writer:
            writer.add_document([5, 6, 7, 0])
    built = sh(script)
    assert built.returncode == 0, built.stderr
    summary = Path(merge["summary_path"])
    assert built.stdout.endswith(summary.read_text()) and '"ok": true' in summary.read_text()
    data = Path(lay["data_path"] + ".bin")
    stamp = data.stat().st_mtime_ns
    # a second merge job of the same dataset (another run, or a retry) finds it built and leaves it alone
    again = sh(script)
    assert again.returncode == 0 and again.stdout == summary.read_text()  # no merge output: not merged
    assert data.stat().st_mtime_ns == stamp
    assert not list(summary.parent.glob("*.tmp*"))  # no temporary file left behind
