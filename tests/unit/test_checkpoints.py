"""The checkpoint completeness rule and the resume decision, on the real NeoX save folder listing.

tests/fixtures/neox-run/ckpt_tree.txt lists the save folder of a real GPT-NeoX run (ZeRO-1, fp16,
pipe_parallel_size 1) after the fresh run and after the resumed one; the partial checkpoints are
made from it by removing what a killed save would not have written.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import ckpt_listing
import pytest

from neoxflow.neox.checkpoints import (
    Checkpoint,
    Expectation,
    check_tag,
    complete_checkpoints,
    latest_complete,
    partial_checkpoints,
    resume_latest_file_content,
    resume_plan,
    scan_local,
    tag_iteration,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "neox-run"
SAVE = "/fsx/checkpoints/tiny"


def _tree_listings() -> dict[str, dict]:
    """ckpt_tree.txt ("path size" lines, one section per run) -> ckpt_listing.py-format listings."""
    sections: dict[str, dict] = {}
    name = None
    for line in (FIXTURES / "ckpt_tree.txt").read_text().splitlines():
        if line.startswith("## after "):
            name = line.split()[2]
            sections[name] = {"entries": {}, "latest": None}
        elif line.startswith("## cat "):
            continue
        elif name and " " not in line.strip():
            sections[name]["latest"] = line.strip()
        elif name:
            path, size = line.rsplit(" ", 1)
            sections[name]["entries"][path] = int(size)
    listings = {}
    for name, sec in sections.items():
        entries = sec["entries"]
        parents = {str(Path(p).parent) for p in entries}
        tags: dict[str, dict] = {}
        for path, size in entries.items():
            rel = Path(path).relative_to(SAVE)
            if not rel.parts or not re.fullmatch(r"global_step\d+", rel.parts[0]) or len(rel.parts) == 1:
                continue
            tag = tags.setdefault(rel.parts[0], {"mtime": 0.0, "dirs": [], "files": {}})
            inner = "/".join(rel.parts[1:])
            if path in parents:
                tag["dirs"].append(inner)
            else:
                tag["files"][inner] = [size, 0.0]
        listings[name] = {
            "format": 1,
            "save_dir": SAVE,
            "exists": True,
            "scanned_at": 0.0,
            "latest": sec["latest"],
            "latest_mtime": 0.0,
            "tags": tags,
        }
    return listings


@pytest.fixture(scope="module")
def listings() -> dict[str, dict]:
    return _tree_listings()


@pytest.fixture(scope="module")
def tiny() -> Expectation:
    config = json.loads((FIXTURES / "tiny-config.json").read_text())
    return Expectation.from_neox_config(config, world_size=1)


def _without(listing: dict, tag: str, *names: str) -> dict:
    out = copy.deepcopy(listing)
    for name in names:
        del out["tags"][tag]["files"][name]
    return out


# ------------------------------------------------------------------------------------------ expectation
def test_expectation_from_the_real_config(tiny):
    assert tiny == Expectation(
        model_parallel=1,
        pipe_parallel=1,
        data_parallel=1,
        zero_stage=1,
        precision="fp16",
        num_layers=2,
        no_weight_tying=True,
    )


def test_derived_layer_indices_match_the_real_checkpoint(listings, tiny):
    files = listings["run1"]["tags"]["global_step60"]["files"]
    real = sorted(int(m.group(1)) for f in files if (m := re.match(r"layer_(\d+)-model_00", f)))
    assert tiny.layer_indices() == real == [0, 2, 3, 5, 6]


def test_expectation_errors_name_the_field():
    with pytest.raises(ValueError, match="pipe_parallel_size x model_parallel_size = 4"):
        Expectation.from_neox_config({"model_parallel_size": 2, "pipe_parallel_size": 2}, world_size=6)
    with pytest.raises(ValueError, match="zero_stage 3"):
        Expectation(zero_stage=3)
    with pytest.raises(ValueError, match="precision"):
        Expectation(precision="fp8")
    with pytest.raises(ValueError, match="data_parallel"):
        Expectation(data_parallel=0)


def test_expectation_data_parallel_and_precision_from_config():
    cfg = {"model_parallel_size": 2, "pipe_parallel_size": 2, "bf16": {"enabled": True}}
    exp = Expectation.from_neox_config(cfg, world_size=16)
    assert (exp.data_parallel, exp.model_ranks, exp.precision, exp.optimizer_shards) == (4, 4, "bf16", True)
    assert Expectation.from_neox_config({}, world_size=2).optimizer_shards is False


# ----------------------------------------------------------------------------------- the real listings
def test_real_run1_and_run2_checkpoints_are_complete(listings, tiny):
    assert [c.iteration for c in complete_checkpoints(listings["run1"], tiny)] == [20, 40, 60]
    found = complete_checkpoints(listings["run2"], tiny)
    assert [c.tag for c in found] == ["global_step20", "global_step40", "global_step60", "global_step80"]
    assert found[-1] == latest_complete(listings["run2"], tiny)
    assert found[-1].path == f"{SAVE}/global_step80"
    tree = (FIXTURES / "ckpt_tree.txt").read_text()
    run2_step80 = tree.split("## after run2")[1]
    expected_bytes = sum(
        int(size)
        for path, size in re.findall(r"^(\S+/global_step80/\S+\.(?:pt|json)) (\d+)$", run2_step80, re.M)
    )
    assert found[-1].size_bytes == expected_bytes


def test_latest_is_not_what_makes_a_checkpoint(listings, tiny):
    """`latest` is written before the other ranks finish: it is reported, never trusted."""
    partial = _without(listings["run2"], "global_step80", "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert partial["latest"] == "global_step80"
    assert latest_complete(partial, tiny).tag == "global_step60"


@pytest.mark.parametrize(
    "removed, reason",
    [
        (["configs/tiny80.json"], "configs/ is empty"),
        (["mp_rank_00_model_states.pt"], "mp_rank_00_model_states.pt"),
        (["zero_pp_rank_0_mp_rank_00_optim_states.pt"], "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        (["layer_05-model_00-model_states.pt"], "layer_05-model_00-model_states.pt"),
    ],
)
def test_a_killed_save_is_never_reported(listings, tiny, removed, reason):
    partial = _without(listings["run2"], "global_step80", *removed)
    assert [c.iteration for c in complete_checkpoints(partial, tiny)] == [20, 40, 60]
    assert any(reason in why for why in partial_checkpoints(partial, tiny)["global_step80"])


def test_configs_folder_missing_or_zero_byte_file(listings, tiny):
    no_configs = _without(listings["run1"], "global_step60", "configs/tiny.json")
    no_configs["tags"]["global_step60"]["dirs"].remove("configs")
    assert check_tag(no_configs["tags"]["global_step60"], tiny) == [
        "configs/ (written last: the save did not finish)"
    ]
    empty_file = copy.deepcopy(listings["run1"])
    empty_file["tags"]["global_step60"]["files"]["mp_rank_00_model_states.pt"][0] = 0
    assert check_tag(empty_file["tags"]["global_step60"], tiny) == ["mp_rank_00_model_states.pt"]


def test_every_dp_rank_needs_its_optimizer_shard(listings, tiny):
    two_dp = Expectation(**{**tiny.__dict__, "data_parallel": 2})
    assert complete_checkpoints(listings["run1"], two_dp) == []
    entry = copy.deepcopy(listings["run1"]["tags"]["global_step60"])
    entry["files"]["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"] = [100, 0.0]  # bf16 naming counts
    assert check_tag(entry, two_dp) == []


def test_model_parallel_ranks_and_layers_per_tensor_rank():
    exp = Expectation(model_parallel=2, pipe_parallel=1, zero_stage=1, num_layers=1)
    files = {"configs/c.json": [1, 0.0]}
    for tp in (0, 1):
        files[f"mp_rank_{tp:02d}_model_states.pt"] = [1, 0.0]
        files[f"zero_pp_rank_0_mp_rank_{tp:02d}_optim_states.pt"] = [1, 0.0]
        for i in (0, 2, 4):
            files[f"layer_{i:02d}-model_{tp:02d}-model_states.pt"] = [1, 0.0]
    assert check_tag({"dirs": ["configs"], "files": files}, exp) == []
    del files["layer_02-model_01-model_states.pt"]
    assert check_tag({"dirs": ["configs"], "files": files}, exp) == ["layer_02-model_01-model_states.pt"]
    unknown_layers = Expectation(model_parallel=2, pipe_parallel=1, zero_stage=1)
    assert check_tag({"dirs": ["configs"], "files": files}, unknown_layers) == [
        "layer_02-model_01-model_states.pt"
    ]


def test_pipeline_stages_multiply_model_ranks():
    exp = Expectation(pipe_parallel=2, zero_stage=1)
    files = {"configs/c.json": [1, 0.0], "mp_rank_00_model_states.pt": [1, 0.0]}
    files["layer_00-model_00-model_states.pt"] = [1, 0.0]
    missing = check_tag({"dirs": ["configs"], "files": files}, exp)
    assert missing == [
        "mp_rank_01_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_0_mp_rank_01_optim_states.pt",
    ]


# ------------------------------------------------------------------------------------------- resuming
def test_resume_plan_on_the_real_folders(listings, tiny):
    plan = resume_plan(listings["run1"], tiny)
    assert (plan.action, plan.iteration, plan.content) == ("keep", 60, "global_step60")
    partial = _without(listings["run2"], "global_step80", "configs/tiny80.json")
    plan = resume_plan(partial, tiny)
    assert (plan.action, plan.iteration, plan.current_latest) == ("write", 60, "global_step80")
    assert plan.content == "global_step60" and "incomplete" in plan.reason


def test_resume_plan_fresh_and_remove(listings, tiny):
    empty = {**listings["run1"], "tags": {}, "latest": None}
    assert resume_plan(empty, tiny).action == "none"
    assert resume_plan(empty, tiny).iteration == 0
    dangling = _without(listings["run1"], "global_step20", "configs/tiny.json")
    dangling["tags"] = {"global_step20": dangling["tags"]["global_step20"]}
    dangling["latest"] = "global_step20"
    plan = resume_plan(dangling, tiny)
    assert (plan.action, plan.checkpoint, plan.content) == ("remove", None, None)
    missing_latest = {**listings["run2"], "latest": None}
    assert resume_plan(missing_latest, tiny).content == "global_step80"
    older = {**listings["run2"], "latest": "global_step40"}
    assert "older" in resume_plan(older, tiny).reason


def test_latest_file_content_is_the_bare_tag():
    assert resume_latest_file_content("global_step60") == "global_step60"
    assert len(resume_latest_file_content("global_step60")) == 13  # `latest` is 13 bytes in ckpt_tree.txt
    with pytest.raises(ValueError, match="'step60'"):
        resume_latest_file_content("step60")
    assert tag_iteration("global_step143000") == 143000


def test_listing_format_is_checked(listings, tiny):
    with pytest.raises(ValueError, match="format 2"):
        complete_checkpoints({**listings["run1"], "format": 2}, tiny)


# ----------------------------------------------------------------------- the stand-in trainer, on disk
def _standin_save(root: Path, iteration: int, *, configs: bool = True) -> None:
    tag = root / f"global_step{iteration}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    if configs:
        (tag / "configs").mkdir()
        (tag / "configs" / "run.json").write_text("{}")


def test_standin_folder_scanned_locally(tmp_path):
    _standin_save(tmp_path, 10)
    _standin_save(tmp_path, 20, configs=False)  # killed before configs/
    (tmp_path / "latest").write_text("global_step20")
    (tmp_path / "not_a_tag").mkdir()
    listing = scan_local(tmp_path)
    assert sorted(listing["tags"]) == ["global_step10", "global_step20"]
    assert complete_checkpoints(listing, Expectation.standin()) == [
        Checkpoint(10, "global_step10", f"{tmp_path}/global_step10", 12)
    ]
    plan = resume_plan(listing, Expectation.standin())
    assert (plan.action, plan.content) == ("write", "global_step10")
    assert scan_local(tmp_path / "missing")["exists"] is False
    assert list(scan_local(tmp_path, min_iteration=15)["tags"]) == ["global_step20"]


def test_cluster_script_and_local_scan_agree(tmp_path, capsys):
    _standin_save(tmp_path, 5)
    _standin_save(tmp_path, 15, configs=False)
    (tmp_path / "latest").write_text("global_step15\n")
    local = scan_local(tmp_path)
    remote = ckpt_listing.build_listing(str(tmp_path))
    local.pop("scanned_at"), remote.pop("scanned_at")
    assert local == remote
    assert ckpt_listing.main([str(tmp_path), "--min-iteration", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["latest"] == "global_step15" and list(printed["tags"]) == ["global_step15"]
    assert printed["format"] == 1


def test_standin_trainer_checkpoints_meet_the_rule(tmp_path):
    """Contract with include/cluster/standin/standin_checkpoint.py: what it saves is complete, and it says
    so."""
    standin_checkpoint = pytest.importorskip("standin_checkpoint")
    from neoxflow.neox.logparse import CheckpointCommitted, parse_line

    config = tmp_path / "run.json"
    config.write_text("{}")
    printed: list[str] = []
    for iteration in (10, 20):
        standin_checkpoint.save_checkpoint(
            tmp_path / "save", iteration, {"iteration": iteration}, config, printed.append
        )
    listing = scan_local(tmp_path / "save")
    assert [c.tag for c in complete_checkpoints(listing, Expectation.standin())] == [
        "global_step10",
        "global_step20",
    ]
    assert resume_plan(listing, Expectation.standin()).action == "keep"
    commits = [ev for ev in map(parse_line, printed) if isinstance(ev, CheckpointCommitted)]
    assert [c.iteration for c in commits] == [10, 20]
