"""GPT-NeoX's precision rules at plan time (neox/precision.py) and in the checkpoint layout (issue 18).

NeoX ea7aefd8 ``NeoXArgs.calculate_derived`` (megatron/neox_arguments/arguments.py:966-1011): an enabled
fp16 block needs precision fp16 or none, an enabled bf16 block needs bfloat16 or none (asserts); any
precision other than fp16/bfloat16 silently becomes fp32. The cases below are NeoX's outcomes read from
that code; neoxflow must refuse exactly the ones NeoX fails on or silently changes.
"""

from __future__ import annotations

import pytest

from neoxflow.neox.checkpoints import Expectation, check_tag
from neoxflow.neox.precision import neox_precision, precision_problems
from neoxflow.neox.profile_loader import load_profile
from neoxflow.neox.run_config import build_run_config

FP16 = {"fp16": True, "enabled": True, "loss_scale": 0}  # the Pythia files' block


@pytest.fixture(scope="module")
def aws():
    return load_profile("aws")


def run_errors(aws, overrides: dict) -> list[str]:
    """The errors the plan reports for 160M (an fp16 file) with ``overrides``, as ``key: message``."""
    run = build_run_config("160M", aws, "r", overrides=overrides, check_vocab_file=False, dataset_id="t")
    return [f"{e.key}: {e.message}" for e in run.errors]


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        # NeoX asserts "DeepSpeed bf16 field was set but precision conflicts"
        ({"precision": "fp32", "fp16": None, "bf16": {"enabled": True}}, "precision/bf16"),
        ({"precision": "fp16", "fp16": None, "bf16": {"enabled": True}}, "precision/bf16"),
        # NeoX asserts "DeepSpeed fp16 field was set but precision conflicts"
        ({"precision": "bfloat16"}, "precision/fp16"),
        ({"precision": "fp32"}, "precision/fp16"),
        # the fp16 block sets precision fp16, then the bf16 assert fires
        ({"bf16": {"enabled": True}}, "fp16/bf16"),
        # not NeoX's spelling: silently fp32 alone, and a bf16 assert beside the bf16 block
        ({"precision": "bf16", "fp16": None}, "precision"),
        ({"precision": "bf16", "fp16": None, "bf16": {"enabled": True}}, "precision"),
        ({"precision": "BFloat16", "fp16": None}, "precision"),
        # NeoX adds bf16 only to an empty block: DeepSpeed's bf16 stays off under precision bfloat16
        ({"precision": "bfloat16", "fp16": None, "bf16": {"enabled": False}}, "precision/bf16"),
        # NeoX calls .get on the block (AttributeError) and tests "enabled" by truthiness
        ({"fp16": True}, "fp16"),
        ({"fp16": None, "bf16": {"enabled": "false"}}, "bf16.enabled"),
    ],
)
def test_precision_conflicts_are_refused_naming_the_fields(aws, overrides, fields):
    errors = run_errors(aws, overrides)
    assert len(errors) == 1 and errors[0].startswith(f"{fields}: "), errors


@pytest.mark.parametrize(
    ("overrides", "trains_in"),
    [
        ({}, "fp16"),  # the Pythia files: an fp16 block, no precision
        ({"precision": "fp16"}, "fp16"),
        ({"precision": "fp16", "fp16": {"enabled": False}}, "fp16"),  # NeoX forces the block on
        ({"precision": "bfloat16", "fp16": None}, "bfloat16"),  # NeoX adds bf16: {enabled: true}
        ({"precision": "bfloat16", "fp16": None, "bf16": {"enabled": True}}, "bfloat16"),
        ({"fp16": None, "bf16": {"enabled": True}}, "bfloat16"),
        ({"precision": "fp32", "fp16": None, "bf16": None}, "fp32"),  # the local profile's
        ({"fp16": {"enabled": False}}, "fp32"),
    ],
)
def test_what_neox_accepts_passes_and_trains_in_its_precision(aws, overrides, trains_in):
    assert run_errors(aws, overrides) == []
    run = build_run_config("160M", aws, "r", overrides=overrides, check_vocab_file=False, dataset_id="t")
    assert neox_precision(run.config) == trains_in


def test_neox_precision_refuses_what_validate_refuses():
    with pytest.raises(ValueError, match=r"precision/bf16: precision 'fp32' conflicts with bf16.enabled"):
        neox_precision({"precision": "fp32", "bf16": {"enabled": True}})
    assert precision_problems({"precision": "fp32", "bf16": {"enabled": True}})


# ---------------------------------------------------------------------------------- checkpoint layout
def test_the_checkpoint_layout_knows_neoxs_bfloat16_spelling():
    assert Expectation(precision="bfloat16") == Expectation(precision="bf16")
    assert Expectation(precision="bfloat16").optimizer_shards


def test_bfloat16_without_a_bf16_block_expects_the_bf16_optimizer_shards():
    """NeoX adds bf16: {enabled: true} for precision bfloat16, so DeepSpeed's BF16_Optimizer writes
    ``bf16_zero_pp_rank_*`` even at ZeRO stage 0: a tag without them is not complete."""
    config = {"precision": "bfloat16", "pipe_parallel_size": 1, "zero_optimization": {"stage": 0}}
    expect = Expectation.from_neox_config(config, world_size=2)
    assert (expect.precision, expect.optimizer_shards) == ("bf16", True)
    files = {"configs/c.yml": [10, 0.0], "mp_rank_00_model_states.pt": [10, 0.0]}
    files.update({f"layer_{i:02d}-model_00-model_states.pt": [10, 0.0] for i in (0, 2, 4)})
    missing = check_tag({"dirs": ["configs"], "files": files}, expect)
    assert missing == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    files["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"] = [10, 0.0]
    files["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"] = [10, 0.0]
    assert check_tag({"dirs": ["configs"], "files": files}, expect) == []


def test_a_conflicting_config_has_no_checkpoint_layout():
    with pytest.raises(ValueError, match="precision/fp16"):
        Expectation.from_neox_config({"precision": "fp32", "fp16": {"enabled": True}}, world_size=1)
