"""What each profile ships to its cluster (issue 16, item 4): the code folder is content-addressed and its
hash is part of a run's identity, so code that never runs on a production cluster must not be in a
production profile's file set. The CPU stand-in trainer is shipped (flat beside include/cluster, where the
local template's launcher path points) only by profiles with the local template; the C4 fixture and the
HTTP source are never shipped."""

from __future__ import annotations

import re

from neoxflow.neox.launch import LAUNCHERS, LOCAL_TEMPLATE, PRODUCTION_TEMPLATE
from neoxflow.neox.profile_loader import load_profile
from neoxflow.paths import CLUSTER_CODE, REPO_ROOT, STANDIN_CODE
from neoxflow.pipeline.plan import cluster_code_files, code_hash

#: file names of code that runs only for the local cluster (stand-in trainer, C4 fixture, HTTP source)
LOCAL_ONLY = re.compile(r"(standin_\w+|c4_fixture|http_source)\.py")
LOCAL_FIXTURES = REPO_ROOT / "scripts" / "localcluster"


def test_the_aws_profile_ships_no_standin_fixture_or_http_source():
    aws = load_profile("aws", env={})
    assert aws.cluster.template == PRODUCTION_TEMPLATE
    names = set(cluster_code_files(aws))
    assert LAUNCHERS[PRODUCTION_TEMPLATE] in names
    assert sorted(n for n in names if LOCAL_ONLY.fullmatch(n)) == []


def test_the_local_profile_ships_the_standin_flat_beside_the_cluster_code():
    local = load_profile("local", env={})
    assert local.cluster.template == LOCAL_TEMPLATE
    files = cluster_code_files(local)
    standin = {p.name for p in STANDIN_CODE.glob("*.py")}
    assert "standin_train.py" in standin and LAUNCHERS[LOCAL_TEMPLATE] in files
    assert standin <= set(files)
    assert {name: files[name] for name in standin} == {
        p.name: p.read_bytes() for p in STANDIN_CODE.glob("*.py")
    }
    assert "mmidx_dataset.py" in files  # standin_data imports it from the same folder on the cluster
    assert not {"c4_fixture.py", "http_source.py"} & set(files)


def test_the_standin_is_all_that_the_local_profile_ships_in_addition():
    local = cluster_code_files(load_profile("local", env={}))
    aws = cluster_code_files(load_profile("aws", env={}))
    standin = {p.name for p in STANDIN_CODE.glob("*.py")}
    assert not standin & {p.name for p in CLUSTER_CODE.glob("*.py")}, "a name would shadow another when flat"
    assert set(local) == set(aws) | standin
    assert code_hash(aws) == code_hash({n: d for n, d in local.items() if n not in standin})
    assert code_hash(aws) != code_hash(local)


def test_local_only_code_lives_outside_the_shipped_folder():
    assert sorted(p.name for p in CLUSTER_CODE.glob("*.py") if LOCAL_ONLY.fullmatch(p.name)) == []
    assert {p.name for p in LOCAL_FIXTURES.glob("*.py")} >= {"c4_fixture.py", "http_source.py"}
