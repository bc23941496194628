"""The memory estimate per GPU and the activation-recompute choice the plan makes from it (issue 21).

The expected byte counts below were worked out by hand from the formulas in neox/memory.py's docstring
(the working is in each test's comment), not by calling the code. The estimate's agreement with torch's
peak allocated memory on a real H200 is tested in test_gpu_fixtures.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from neoxflow.neox.config_files import load_size_config
from neoxflow.neox.image import fit_to_image
from neoxflow.neox.memory import GIB, MEMORY_MARGIN, choose_recompute, estimate_memory, parameter_count
from neoxflow.neox.profile_loader import ProfileError, load_profile, parse_profile
from neoxflow.neox.run_config import build_run_config


def _160m(micro: int = 32, attention: str = "global") -> dict:
    cfg = load_size_config("160M")
    cfg.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1)
    cfg["attention_config"] = [[[attention], 12]]
    return cfg


def test_parameter_count_is_the_released_160m_models():
    # 12 x (12 x 768^2 + 13 x 768) + 2 x 50304 x 768 (untied) + 2 x 768; the gpu_check log printed the same
    assert parameter_count(_160m()) == 162_322_944


def test_160m_global_attention_micro_32_one_gpu():
    # fp16, ZeRO 1 at dp 1: 16 bytes x 162,322,944 = 2,597,167,104
    # buffers: 2 (overlap_comm) x 5e8 (reduce_bucket_size) x 2 bytes = 2,000,000,000
    # one layer: s b h 34 = 2048*32*768*34 = 1,711,276,032; scores 2 a s^2 b = 2*12*2048^2*32 = 3,221,225,472
    #   -> 4,932,501,504 x 12 layers = 59,190,018,048
    # logits: 8 bytes x 2048*32*50304 = 26,373,783,552
    # recompute: inputs 2 s b h x 12 = 1,207,959,552; max(logits 26,373,783,552,
    #   kept fp16 logits 6,593,445,888 + 2 x 4,932,501,504 = 16,458,448,896)
    est = estimate_memory(_160m(), data_parallel=1)
    assert est.model_states == 2_597_167_104
    assert est.buffers == 2_000_000_000
    assert est.activations_full == 59_190_018_048 + 26_373_783_552
    assert est.without_recompute == 90_160_968_704  # 83.97 GiB (torch measured 83.29 on an H200)
    assert est.activations_recompute == 1_207_959_552 + 26_373_783_552
    assert est.with_recompute == 32_178_910_208  # 29.97 GiB (measured 29.00)


def test_410m_flash_attention_micro_32_on_8_data_parallel_ranks():
    # 410M: 24 layers, h 1024, 16 heads; 12*24*1024^2 + 13*24*1024 + 2*50304*1024 + 2048 = 405,334,016
    # ZeRO 1 at dp 8: 2 + 2 + 12/8 = 5.5 bytes a parameter = 2,229,337,088
    # one layer with flash (no scores): 2048*32*1024*34 = 2,281,701,376 x 24 = 54,760,833,024
    # recompute: inputs 2*2048*32*1024 x 24 = 3,221,225,472 + logits 26,373,783,552
    cfg = load_size_config("410M")
    cfg.update(train_micro_batch_size_per_gpu=32, attention_config=[[["flash"], 24]])
    est = estimate_memory(cfg, data_parallel=8)
    assert est.parameters == 405_334_016
    assert est.model_states == 2_229_337_088
    assert est.without_recompute == 2_229_337_088 + 2_000_000_000 + 54_760_833_024 + 26_373_783_552
    assert est.with_recompute == 2_229_337_088 + 2_000_000_000 + 3_221_225_472 + 26_373_783_552


def test_bf16_shards_its_fp32_state_even_at_zero_stage_0():
    # 1B is bf16 at ZeRO 0 (DeepSpeed's BF16_Optimizer): bf16 weights 2 + grads 2 + (master 4 + Adam 8 +
    # fp32 gradient accumulation 4) / dp 8 = 6 bytes a parameter
    cfg = load_size_config("1B")
    est = estimate_memory(cfg, data_parallel=8)
    assert est.model_states == 6 * est.parameters
    assert est.buffers == 0  # no ZeRO 1/2 gradient buckets


def _boundary_gib(cfg: dict) -> float:
    """The GPU memory at which the estimate without recomputation exactly uses the usable share."""
    return estimate_memory(cfg, data_parallel=1).without_recompute / GIB / (1 - MEMORY_MARGIN)


def test_the_choice_flips_at_the_margin():
    cfg = _160m(micro=4)  # 8192 tokens: no smaller micro batch is tried (MIN_MICRO_TOKENS)
    edge = _boundary_gib(cfg)
    fits = choose_recompute(cfg, mode="auto", gpu_memory_gib=edge * 1.0001, data_parallel=1)
    short = choose_recompute(cfg, mode="auto", gpu_memory_gib=edge * 0.9999, data_parallel=1)
    assert (fits.recompute, short.recompute) == (False, True)
    assert fits.set_keys == {
        "checkpoint_activations": False,
        "partition_activations": False,
        "synchronize_each_layer": False,
    }
    assert short.set_keys is None  # the size file already recomputes: its bytes stay
    assert "fits, recomputation off" in fits.reason and "does not fit, recomputation on" in short.reason
    assert f"{edge * 0.9999 * (1 - MEMORY_MARGIN):.1f} GiB usable" in short.reason


def test_a_smaller_micro_batch_without_recompute_is_chosen_when_it_fits():
    # 160M micro 32 needs 83.97 GiB: on an 80 GB H100 (79.6 GiB, 67.7 usable) micro 16 x 2 fits
    cfg = _160m(micro=32)
    choice = choose_recompute(cfg, mode="auto", gpu_memory_gib=79.6, data_parallel=1)
    assert choice.recompute is False
    assert choice.set_keys["train_micro_batch_size_per_gpu"] == 16
    assert choice.set_keys["gradient_accumulation_steps"] == 2
    assert choice.estimate_gib["without_recompute"] == 83.97


def test_forcing_either_way_ignores_the_estimate():
    cfg = _160m()
    on = choose_recompute(
        {**cfg, "checkpoint_activations": False}, mode="on", gpu_memory_gib=1e6, data_parallel=1
    )
    off = choose_recompute(cfg, mode="off", gpu_memory_gib=1.0, data_parallel=1)
    assert (on.recompute, on.set_keys) == (True, {"checkpoint_activations": True})
    assert off.recompute is False and off.set_keys["checkpoint_activations"] is False
    assert "forced" in on.reason and on.estimate_gib is None


def test_an_override_naming_the_key_wins_over_the_choice():
    choice = choose_recompute(
        _160m(), mode="off", gpu_memory_gib=1e6, data_parallel=1, explicit={"checkpoint_activations"}
    )
    assert (choice.recompute, choice.set_keys) == (True, None)
    assert "set by an override" in choice.reason


def test_without_gpu_memory_the_size_file_stands():
    choice = choose_recompute(_160m(), mode="auto", gpu_memory_gib=None, data_parallel=1)
    assert (choice.recompute, choice.set_keys) == (True, None)
    assert "no cluster.gpu_memory_gib" in choice.reason


# ------------------------------------------------------------------ through the plan (build_run_config)
def _aws(**cluster):
    profile = load_profile("aws", env={})
    return dataclasses.replace(profile, cluster=dataclasses.replace(profile.cluster, **cluster))


def test_the_aws_plan_turns_recomputation_off_for_160m_on_an_h100_with_flash():
    run = build_run_config("160M", load_profile("aws", env={}), "r", nodes=1, gpus_per_node=1, dataset_id="d")
    assert run.ok, run.errors
    assert run.config["checkpoint_activations"] is False
    assert run.config["partition_activations"] is False and run.config["synchronize_each_layer"] is False
    assert run.config["attention_config"] == [[["flash"], 12]]  # the image has flash-attn
    assert run.recompute.reason.startswith("estimated 47.97 GiB per GPU without recomputation")


def test_forced_on_renders_the_size_file_as_shipped():
    shipped = build_run_config("160M", _aws(gpu_memory_gib=None), "r", dataset_id="d")
    forced = build_run_config("160M", dataclasses.replace(_aws(), recompute="on"), "r", dataset_id="d")
    assert forced.rendered == shipped.rendered and forced.config["checkpoint_activations"] is True


def test_an_image_without_flash_or_fused_kernels_renders_global_attention_and_no_fusion():
    run = build_run_config("160M", _aws(image_provides=()), "r", dataset_id="d")
    assert run.config["attention_config"] == [[["global"], 12]]
    assert run.config["scaled_upper_triang_masked_softmax_fusion"] is False
    assert run.config["bias_gelu_fusion"] is True  # TorchScript: nothing from the image
    assert len(run.image_changes) == 2


def test_an_override_asking_for_a_kernel_the_image_lacks_is_refused_naming_the_field():
    run = build_run_config(
        "160M",
        _aws(image_provides=("fused_kernels",)),
        "r",
        overrides={"attention_config": [[["flash"], 12]]},
        dataset_id="d",
    )
    assert [e.key for e in run.errors] == ["attention_config"]
    _, errors, _ = fit_to_image({"rope_fusion": True}, (), {"rope_fusion"})
    assert errors == [
        ("rope_fusion", "needs NeoX's fused kernels; cluster.image_provides lacks fused_kernels")
    ]


def test_an_unstated_image_leaves_the_config_alone():
    cfg = {"attention_config": [[["flash"], 2]], "scaled_upper_triang_masked_softmax_fusion": True}
    assert fit_to_image(cfg, None, set()) == (cfg, [], [])


# ------------------------------------------------------------------ profile keys
PROFILE = """\
name: t
cluster:
  nodes: 1
  gpus_per_node: 8
  time_limit: "01:00:00"
  gpu_memory_gib: 80
  image_provides: [flash_attn]
fsx:
  root: /fsx
s3:
  bucket: b
data:
  dataset: d/x_text_document
tokenizer:
  source: s3://b/tok.json
neox:
  size: 160M
  recompute: auto
"""


def test_profile_keys_are_typed():
    p = parse_profile(PROFILE, "t.yaml")
    assert (p.cluster.gpu_memory_gib, p.cluster.image_provides, p.recompute) == (80, ("flash_attn",), "auto")
    # YAML reads a bare off as False: it means the word
    assert parse_profile(PROFILE.replace("recompute: auto", "recompute: off"), "t.yaml").recompute == "off"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("recompute: auto", "recompute: sometimes", "neox.recompute"),
        ("gpu_memory_gib: 80", "gpu_memory_gib: -80", "cluster.gpu_memory_gib"),
        ("gpu_memory_gib: 80", 'gpu_memory_gib: "80GB"', "cluster.gpu_memory_gib"),
        ("image_provides: [flash_attn]", "image_provides: [flash_attention]", "cluster.image_provides"),
    ],
)
def test_a_bad_profile_value_is_refused_naming_the_field(old, new, field):
    with pytest.raises(ProfileError) as info:
        parse_profile(PROFILE.replace(old, new), "t.yaml")
    assert "t.yaml:" in str(info.value) and f"{field}:" in str(info.value)


# ------------------------------------------------------------------ the plan and the dry run say it
def test_the_plan_carries_the_choice_and_its_log_line_says_why():
    from neoxflow.pipeline.plan import plan_choices_line, plan_run

    plan = plan_run(
        {
            "profile": "aws",
            "run_name": "r",
            "model_size": "160M",
            "nodes": 1,
            "gpus_per_node": 1,
            "shards": "0-1",
        }
    )
    choice = plan["config"]["recompute"]
    assert choice["recompute"] is False and choice["estimate_gib"]["without_recompute"] == 47.97
    assert '"checkpoint_activations": false' in plan["config"]["rendered"]
    line = plan_choices_line(plan["config"])
    assert line.startswith("Activation recomputation: off (neox.recompute auto): estimated 47.97 GiB")
    assert "67.7 GiB usable (79.6 GiB less 15% margin)" in line


def test_the_log_line_names_what_was_fitted_to_the_image():
    from neoxflow.pipeline.plan import plan_choices_line

    config = {
        "recompute": {"recompute": True, "mode": "on", "reason": "forced on by the profile's neox.recompute"},
        "image_changes": ["attention flash -> global (the image has no flash_attn)"],
    }
    assert plan_choices_line(config) == (
        "Activation recomputation: on (neox.recompute on): forced on by the profile's neox.recompute. "
        "Fitted to the image: attention flash -> global (the image has no flash_attn)"
    )
