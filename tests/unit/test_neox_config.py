"""Pythia configs, profiles, rendering and validation (neox/config_files.py, batch.py, config_checks.py,
profile_loader.py, run_config.py). Pure, fast."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from neoxflow.neox.batch import derive_batch
from neoxflow.neox.config_checks import KNOWN_KEYS, validate_config
from neoxflow.neox.config_errors import ConfigError
from neoxflow.neox.config_files import (
    PYTHIA_SIZES,
    ConfigFileError,
    config_hash,
    load_size_config,
    merge_config,
    parse_strict_json,
    render_config,
    yaml_json_disagreement,
)
from neoxflow.neox.profile_loader import ProfileError, load_profile, parse_profile
from neoxflow.neox.run_config import build_run_config
from neoxflow.paths import CONFIG_DIR, REPO_ROOT

# Upstream EleutherAI configs/pythia/*.yml (layers, hidden, heads, lr, model parallel), as listed in
# docs/reference/neox.md and the upstream files.
UPSTREAM = {
    "14M": (6, 128, 4, 0.001, 1),
    "31M": (6, 256, 8, 0.001, 1),
    "70M": (6, 512, 8, 0.001, 1),
    "160M": (12, 768, 12, 0.0006, 1),
    "410M": (24, 1024, 16, 0.0003, 1),
    "1B": (16, 2048, 8, 0.00025, 1),
    "1.4B": (24, 2048, 16, 0.0002, 1),
    "2.8B": (32, 2560, 32, 0.00016, 1),
    "6.9B": (32, 4096, 32, 0.00012, 2),
    "12B": (36, 5120, 40, 0.00012, 4),
}


def keys_of(errors: list[ConfigError]) -> list[str]:
    return [e.key for e in errors]


@pytest.fixture
def aws():
    return load_profile("aws", env={})


@pytest.fixture
def vocab(tmp_path: Path) -> str:
    path = tmp_path / "20B_tokenizer.json"
    path.write_text('{"model": {}}')
    return str(path)


def tiny_cfg(**changes) -> dict:
    """A small valid config (2 nodes x 1 rank) for defect tests; ``changes`` with value None delete keys."""
    cfg = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "seq_length": 128,
        "max_position_embeddings": 128,
        "attention_config": [[["global"], 2]],
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "train_iters": 100,
        "checkpoint_factor": 50,
        "optimizer": {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.95], "eps": 1.0e-8}},
        "data_path": "/fsx/data/c4_text_document",
        "tokenizer_type": "HFTokenizer",
        "vocab_file": "/fsx/tokenizers/20B_tokenizer.json",
        "save": "/fsx/checkpoints/run-a",
        "load": "/fsx/checkpoints/run-a",
    }
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def check(cfg: dict, nodes: int = 2, gpus: int = 1, **kw) -> list[ConfigError]:
    return validate_config(cfg, nodes, gpus, check_vocab_file=kw.pop("check_vocab_file", False), **kw)


# --- the ten size files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", PYTHIA_SIZES)
def test_size_file_is_strict_json_with_upstream_values(size: str) -> None:
    path = CONFIG_DIR / "pythia" / f"{size}.json"
    text = path.read_text()
    cfg = parse_strict_json(text, path)
    assert cfg == json.loads(text) == yaml.safe_load(text), "JSON and NeoX's YAML reading must agree"
    layers, hidden, heads, lr, mp = UPSTREAM[size]
    assert (cfg["num_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (layers, hidden, heads)
    assert cfg["optimizer"]["params"]["lr"] == lr
    assert cfg["min_lr"] == pytest.approx(lr / 10)
    assert cfg["model_parallel_size"] == mp
    assert cfg["optimizer"]["type"] == "Adam"
    assert cfg["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert isinstance(cfg["optimizer"]["params"]["eps"], float) and cfg["optimizer"]["params"]["eps"] == 1e-8
    assert cfg["seq_length"] == cfg["max_position_embeddings"] == 2048
    assert cfg["rotary_pct"] == 0.25 and cfg["pos_emb"] == "rotary" and cfg["gpt_j_residual"] is True
    assert cfg["train_iters"] == cfg["lr_decay_iters"] == 143000
    assert cfg["checkpoint_factor"] == 1000 and cfg["log_interval"] == 10
    assert cfg["attention_config"] == [[["flash"], layers]]
    # precision as the released model was trained: bf16 for 1B, fp16 for the others (test_pythia_upstream.py)
    precision_on = cfg["bf16"] if size == "1B" else cfg["fp16"]
    assert precision_on["enabled"] is True and cfg["zero_optimization"]["stage"] in (0, 1)
    # the upstream global batch: 1024 sequences; micro x GAS divides it (the upstream GPU count does the rest)
    assert cfg["train_batch_size"] == 1024
    assert 1024 % (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"]) == 0
    # paths come from profiles, never from a size file (the seed's shared checkpoint folder)
    assert not {"save", "load", "data_path", "vocab_file", "train_data_paths"} & cfg.keys()
    assert not [k for k in cfg if k not in KNOWN_KEYS], "only keys NeoX knows"
    assert "gas" not in cfg


def test_load_size_config_rejects_unknown_size() -> None:
    with pytest.raises(ValueError, match="unknown Pythia size '13B'.*14M"):
        load_size_config("13B")


def run_name_of(size: str) -> str:
    """A run name for a size (run names are lower case, no dots: slurm/validate.RUN_NAME)."""
    return "pythia-" + size.lower().replace(".", "-")


@pytest.mark.parametrize("nodes", [1, 2, 16])
@pytest.mark.parametrize("size", PYTHIA_SIZES)
def test_every_size_validates_at_1_2_16_nodes_of_8_gpus(size: str, nodes: int, aws, vocab: str) -> None:
    run = build_run_config(
        size, aws, run_name_of(size), nodes=nodes, gpus_per_node=8, check_vocab_file=False, dataset_id="t"
    )
    assert run.errors == []
    cfg = run.config
    pipe, model = max(cfg["pipe_parallel_size"], 1), max(cfg["model_parallel_size"], 1)
    dp = nodes * 8 // (pipe * model)
    assert dp * pipe * model == nodes * 8
    micro, gas = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    assert cfg["train_batch_size"] == 1024 == micro * gas * dp  # NeoX's start-up rule
    assert micro <= load_size_config(size)["train_micro_batch_size_per_gpu"], "never above the memory cap"
    assert cfg["save"] == cfg["load"] == f"/fsx/checkpoints/{run_name_of(size)}"
    assert json.loads(run.rendered) == yaml.safe_load(run.rendered) == cfg
    # the real vocab file check passes once the file is readable
    assert validate_config({**cfg, "vocab_file": vocab}, nodes, 8, run_name=run_name_of(size)) == []


def test_all_sizes_of_one_profile_get_distinct_checkpoint_folders(aws) -> None:
    runs = {
        size: build_run_config(size, aws, run_name_of(size), check_vocab_file=False, dataset_id="t")
        for size in PYTHIA_SIZES
    }
    assert len({r.config["save"] for r in runs.values()}) == len(PYTHIA_SIZES)


# --- batch derivation -------------------------------------------------------------------------------------


def test_derive_batch_keeps_global_batch_and_lowers_micro_only_when_needed() -> None:
    cfg = {"train_batch_size": 1024, "train_micro_batch_size_per_gpu": 32, "gradient_accumulation_steps": 7}
    out, errors = derive_batch(cfg, 2, 8)  # dp 16 -> 64 per rank -> micro 32 x GAS 2
    assert errors == [] and (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (
        32,
        2,
    )
    out, errors = derive_batch(cfg, 16, 8)  # dp 128 -> 8 per rank: micro capped by the per-rank batch
    assert errors == [] and (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (
        8,
        1,
    )
    assert cfg["gradient_accumulation_steps"] == 7, "input not modified"


def test_derive_batch_refuses_a_global_batch_the_data_parallel_size_does_not_divide() -> None:
    cfg = {"train_batch_size": 1024, "train_micro_batch_size_per_gpu": 32}
    _, errors = derive_batch(cfg, 3, 8)  # dp 24
    assert keys_of(errors) == ["train_batch_size"] and "not divisible by the data-parallel size 24" in str(
        errors[0]
    )


def test_derive_batch_refuses_world_not_divisible_by_model_parallel() -> None:
    cfg = {**load_size_config("12B")}  # model parallel 4
    _, errors = derive_batch(cfg, 1, 6)
    assert keys_of(errors) == ["model_parallel_size"] and "6 ranks" in errors[0].message


# --- defect classes ---------------------------------------------------------------------------------------


def test_valid_tiny_config_has_no_errors() -> None:
    assert check(tiny_cfg()) == []


def test_gas_key_is_rejected_with_its_replacement() -> None:
    errors = check(tiny_cfg(gas=1))
    assert keys_of(errors) == ["gas"]
    assert "gradient_accumulation_steps" in errors[0].message and "1144" in errors[0].message


def test_unknown_key_is_named_with_a_suggestion() -> None:
    errors = check(tiny_cfg(train_iter=5))
    assert keys_of(errors) == ["train_iter"] and "did you mean 'train_iters'" in errors[0].message


def test_hyphenated_known_keys_are_accepted_like_neox_does() -> None:
    cfg = tiny_cfg()
    cfg["log-interval"] = 10
    assert check(cfg) == []


def test_trailing_comma_is_a_parse_error_with_its_line() -> None:
    text = '{\n  "num_layers": 6,\n  "hidden_size": 128,\n}\n'
    with pytest.raises(ConfigFileError) as info:
        parse_strict_json(text, "seed/14M.json")
    assert info.value.line == 4 and "trailing comma" in str(info.value)
    assert str(info.value).startswith("seed/14M.json:4:")


def test_comment_is_a_parse_error_with_its_line() -> None:
    text = '{\n  "num_layers": 6,\n  # a comment\n  "hidden_size": 128\n}\n'
    with pytest.raises(ConfigFileError) as info:
        parse_strict_json(text, "x.json")
    assert info.value.line == 3 and "comment" in str(info.value)


@pytest.mark.parametrize(
    "text,line,what",
    [
        ('{\n "a": 1,\n "a": 2\n}', 3, "duplicate key 'a'"),
        ('{\n "train-iters": 1,\n "train_iters": 2\n}', 3, "same NeoX key 'train_iters'"),
        ('{"lr": NaN}', None, "NaN is not valid JSON"),
        ("[1, 2]", 1, "top level must be a JSON object"),
    ],
)
def test_other_strict_json_violations(text: str, line: int | None, what: str) -> None:
    with pytest.raises(ConfigFileError, match=what) as info:
        parse_strict_json(text, "f.json")
    assert info.value.line == line


def test_bad_batch_product_names_the_numbers() -> None:
    errors = check(tiny_cfg(train_batch_size=12))
    assert keys_of(errors) == ["train_batch_size"]
    assert "12 != train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp = 4 x 1 x 2 = 8" in str(
        errors[0]
    )


def test_world_size_not_divisible_by_model_parallel_is_an_error() -> None:
    errors = check(tiny_cfg(model_parallel_size=4), nodes=1, gpus=6)
    assert "model_parallel_size" in keys_of(errors)


def test_heads_and_hidden_divisibility() -> None:
    assert keys_of(check(tiny_cfg(hidden_size=66))) == ["hidden_size"]  # 66 % 4 heads
    # 1 node x 3 or 4 ranks, all model parallel: dp 1, so a global batch of 4
    errors = check(tiny_cfg(hidden_size=96, model_parallel_size=3, train_batch_size=4), nodes=1, gpus=3)
    assert keys_of(errors) == ["num_attention_heads"]  # 4 heads over 3 model-parallel ranks
    errors = check(
        tiny_cfg(num_attention_heads=6, hidden_size=66, model_parallel_size=4, train_batch_size=4),
        nodes=1,
        gpus=4,
    )
    assert sorted(keys_of(errors)) == ["hidden_size", "num_attention_heads"]  # 66 % 4 and 6 % 4


def test_checkpoint_factor_larger_than_train_iters() -> None:
    errors = check(tiny_cfg(checkpoint_factor=500))
    assert keys_of(errors) == ["checkpoint_factor"] and "train_iters 100" in errors[0].message


def test_seq_length_sanity() -> None:
    assert keys_of(check(tiny_cfg(seq_length=256))) == ["seq_length"]  # > max_position_embeddings 128
    assert keys_of(check(tiny_cfg(seq_length=0))) == ["seq_length"]
    assert keys_of(check(tiny_cfg(seq_length=None))) == ["seq_length"]


def test_attention_config_must_cover_num_layers() -> None:
    errors = check(tiny_cfg(attention_config=[[["flash"], 6]]))
    assert (
        keys_of(errors) == ["attention_config"] and "covers 6 layers but num_layers is 2" in errors[0].message
    )


def test_number_written_as_string_is_caught() -> None:
    cfg = tiny_cfg()
    cfg["optimizer"]["params"]["eps"] = "1e-08"  # what PyYAML makes of json.dumps(1e-08)
    errors = check(cfg)
    assert keys_of(errors) == ["optimizer.params.eps", "optimizer.params.eps"]


@pytest.mark.parametrize(
    "changes,key,why",
    [
        ({"save": None}, "save", "is required"),
        ({"save": "checkpoints/run-a", "load": "checkpoints/run-a"}, "save", "absolute"),
        ({"load": "/fsx/checkpoints/other"}, "load", "differs from save"),
        ({"data_path": None}, "data_path", "is required"),
        ({"vocab_file": None}, "vocab_file", "is required"),
    ],
)
def test_path_rules(changes: dict, key: str, why: str) -> None:
    errors = check(tiny_cfg(**changes))
    assert key in keys_of(errors) and any(why in e.message for e in errors if e.key == key)


def test_save_must_be_this_runs_folder() -> None:
    errors = check(tiny_cfg(), run_name="run-b")
    assert keys_of(errors) == ["save"] and "must end in /run-b" in errors[0].message


def test_run_overrides_cannot_point_save_elsewhere(aws) -> None:
    run = build_run_config(
        "70M",
        aws,
        "r1",
        overrides={"save": "/fsx/checkpoints/shared"},
        check_vocab_file=False,
        dataset_id="t",
    )
    assert keys_of(run.errors) == ["save"]
    assert run.config["save"] == "/fsx/checkpoints/r1"


def test_vocab_file_must_be_readable(tmp_path: Path, vocab: str) -> None:
    assert check(tiny_cfg(vocab_file=vocab), check_vocab_file=True) == []
    missing = check(tiny_cfg(vocab_file=str(tmp_path / "nope.json")), check_vocab_file=True)
    assert keys_of(missing) == ["vocab_file"] and "not readable" in missing[0].message
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert "is empty" in check(tiny_cfg(vocab_file=str(empty)), check_vocab_file=True)[0].message
    # not checked when the Airflow side cannot see the cluster's file system
    assert check(tiny_cfg(vocab_file=str(tmp_path / "nope.json")), check_vocab_file=False) == []


def test_shape_must_be_positive() -> None:
    assert keys_of(check(tiny_cfg(), nodes=0, gpus=8)) == ["nodes"]
    assert keys_of(check(tiny_cfg(), nodes=2, gpus=True)) == ["gpus_per_node"]


# --- merge ------------------------------------------------------------------------------------------------


def test_merge_is_deep_for_dicts_and_replaces_everything_else() -> None:
    base = {
        "optimizer": {"type": "Adam", "params": {"lr": 0.1, "eps": 1e-8}},
        "fp16": {"enabled": True},
        "a": [1],
    }
    merged = merge_config(
        base, {"optimizer": {"params": {"lr": 0.5}}, "fp16": None, "a": [2, 3], "train-iters": 5}
    )
    assert merged == {
        "optimizer": {"type": "Adam", "params": {"lr": 0.5, "eps": 1e-8}},
        "fp16": None,
        "a": [2, 3],
        "train_iters": 5,
    }
    assert base["optimizer"]["params"]["lr"] == 0.1, "base not modified"


def test_override_replaces_hyphenated_base_key_instead_of_duplicating() -> None:
    merged = merge_config({"train-iters": 10}, {"train_iters": 20})
    assert merged == {"train_iters": 20}


def test_lr_decay_iters_follows_train_iters_unless_set(aws) -> None:
    run = build_run_config(
        "160M", aws, "r", overrides={"train_iters": 5000}, check_vocab_file=False, dataset_id="t"
    )
    assert run.config["lr_decay_iters"] == 5000
    run = build_run_config(
        "160M",
        aws,
        "r",
        overrides={"train_iters": 5000, "lr_decay_iters": 9000},
        check_vocab_file=False,
        dataset_id="t",
    )
    assert run.config["lr_decay_iters"] == 9000


# --- rendering --------------------------------------------------------------------------------------------


def test_json_dumps_trap_and_the_fix() -> None:
    """The real NeoX run: json.dumps wrote 1e-08, PyYAML read a string, the fused Adam kernel failed."""
    assert yaml.safe_load(json.dumps({"eps": 1e-08}))["eps"] == "1e-08"
    rendered = render_config({"eps": 1e-08, "min_lr": 6e-05, "big": 1e16, "lr": 0.0006})
    assert '"eps": 1.0e-08' in rendered and '"min_lr": 6.0e-05' in rendered and '"big": 1.0e+16' in rendered
    assert (
        yaml.safe_load(rendered)
        == json.loads(rendered)
        == {"eps": 1e-08, "min_lr": 6e-05, "big": 1e16, "lr": 0.0006}
    )


def test_rendered_floats_read_back_identically_by_yaml_and_json() -> None:
    rng = random.Random(1234)
    values = [0.0, -0.0, 1.0, -1.5, 5e-324, 1.7976931348623157e308, 0.1, 1e-5, 1e22, 123456789.0]
    values += [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(2000)]
    cfg = {f"k{i}": v for i, v in enumerate(values)}
    cfg["nested"] = {"list": values[:50], "deep": [[values[1], [values[2]]]]}
    rendered = render_config(cfg)
    from_yaml, from_json = yaml.safe_load(rendered), json.loads(rendered)
    assert from_yaml == from_json == cfg
    assert all(type(from_yaml[k]) is float for k in cfg if k != "nested")


def test_rendered_strings_read_back_identically() -> None:
    strings = [
        'quote " and \\ backslash',
        "tab\tnewline\ncr\r",
        "\x00\x07\x1f\x7f\x85",
        "line\u2028sep\u2029",
        "caf\u00e9 \u4e2d\u6587",
        "emoji \U0001f600 zwj \U0001f468\u200d\U0001f469",
        "\ufeffbom",
        "# not a comment",
        "yes",
        "no",
        "on",
        "null",
        "1e5",
        "0x10",
        "",
        "  spaced  ",
    ]
    cfg = {
        "s": strings,
        "keys": {s: i for i, s in enumerate(strings)},
        "n": None,
        "t": True,
        "f": False,
        "i": -3,
    }
    rendered = render_config(cfg)
    assert yaml.safe_load(rendered) == json.loads(rendered) == cfg
    assert yaml_json_disagreement(rendered) is None


def test_every_rendered_run_config_passes_the_yaml_check(aws) -> None:
    local = load_profile("local", env={})
    for profile in (aws, local):
        for size in PYTHIA_SIZES:
            run = build_run_config(size, profile, "r", check_vocab_file=False, dataset_id="t")
            assert yaml_json_disagreement(run.rendered) is None
            assert json.loads(run.rendered) == yaml.safe_load(run.rendered)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_render_refuses_non_finite_numbers(bad: float) -> None:
    with pytest.raises(ValueError, match="lr"):
        render_config({"optimizer": {"params": {"lr": bad}}})


def test_render_refuses_non_json_values() -> None:
    with pytest.raises(ValueError, match="set cannot be written"):
        render_config({"x": {1, 2}})
    with pytest.raises(ValueError, match="not a string"):
        render_config({1: 2})


def test_config_hash_versions_content() -> None:
    a, b = render_config(tiny_cfg()), render_config(tiny_cfg(train_iters=101))
    assert config_hash(a) == config_hash(render_config(tiny_cfg()))
    assert config_hash(a) != config_hash(b)
    assert len(config_hash(a)) == 64 and int(config_hash(a), 16) >= 0


def test_run_config_path_is_versioned_by_hash(aws) -> None:
    run = build_run_config("70M", aws, "r1", check_vocab_file=False, dataset_id="t")
    assert run.config_path == f"/fsx/neoxflow/runs/r1/configs/neox-{run.config_hash[:16]}.json"
    other = build_run_config(
        "70M", aws, "r1", overrides={"train_iters": 10}, check_vocab_file=False, dataset_id="t"
    )
    assert other.config_path != run.config_path


# --- profiles ---------------------------------------------------------------------------------------------


def test_local_profile_paths_and_tiny_model(tmp_path: Path) -> None:
    env = {"NEOXFLOW_FSX": str(tmp_path / "fsx"), "NEOXFLOW_CLUSTER_PYTHON": "/opt/venv/bin/python"}
    local = load_profile("local", env=env)
    assert (local.cluster.nodes, local.cluster.gpus_per_node, local.cluster.template) == (
        2,
        1,
        "train_local.sbatch",
    )
    assert local.fsx_root == str(tmp_path / "fsx") and local.cluster.python == "/opt/venv/bin/python"
    assert local.data_path("d1") == f"{tmp_path}/fsx/data/c4_openwebtext/d1/c4_openwebtext_text_document"
    run = build_run_config(local.default_size, local, "demo", check_vocab_file=False, dataset_id="t")
    assert run.errors == []
    assert (run.config["num_layers"], run.config["hidden_size"], run.config["distributed_backend"]) == (
        2,
        64,
        "gloo",
    )
    micro, gas = run.config["train_micro_batch_size_per_gpu"], run.config["gradient_accumulation_steps"]
    assert run.config["train_batch_size"] == 8 == 2 * micro * gas
    assert run.config["save"] == f"{tmp_path}/fsx/checkpoints/demo"
    # defaults without the environment: repository-relative, not resolved through the venv symlink
    default = load_profile("local", env={})
    assert default.fsx_root == str(REPO_ROOT / ".state/cluster/fsx")
    assert default.cluster.python == str(REPO_ROOT / ".venv/bin/python")
    assert default.tokenizer_source == str(REPO_ROOT / "include/tokenizers/20B_tokenizer.json")


def test_aws_profile_shape() -> None:
    aws = load_profile("aws", env={"NEOXFLOW_S3_BUCKET": "bucket-1"})
    c = aws.cluster
    assert (c.nodes, c.gpus_per_node, c.partition, c.template) == (2, 8, "gpu", "train.sbatch")
    assert c.container_image == "/fsx/apps/gpt-neox.sqsh" and c.container_mounts == ("/fsx:/fsx",)
    assert aws.fsx_root == "/fsx" and aws.s3_bucket == "bucket-1" and aws.fsx_visible_to_airflow is False


PROFILE = """\
name: t
cluster:
  nodes: 2
  gpus_per_node: 8
  time_limit: "01:00:00"
fsx:
  root: /fsx
s3:
  bucket: b
data:
  dataset: d/x_text_document
tokenizer:
  source: s3://b/tok.json
"""


def test_profile_minimal_parses() -> None:
    p = parse_profile(PROFILE, "t.yaml")
    assert (p.name, p.cluster.stop_before_limit_s, p.checkpoints_dir, p.tokenizer_source) == (
        "t",
        300,
        "/fsx/checkpoints",
        "s3://b/tok.json",
    )


def test_profile_yaml_syntax_error_names_file_and_line() -> None:
    text = PROFILE.replace("  gpus_per_node: 8", "  gpus_per_node: [8")
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "profiles/bad.yaml")
    assert str(info.value).startswith("profiles/bad.yaml:") and "YAML syntax" in str(info.value)
    assert info.value.problems[0][0] is not None


def test_profile_type_error_names_line_and_key() -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(PROFILE.replace("nodes: 2", 'nodes: "two"'), "p.yaml")
    assert str(info.value) == "p.yaml:3: cluster.nodes: must be int, got 'two'"


def test_profile_duplicate_key_and_missing_section_and_env() -> None:
    text = PROFILE.replace("  nodes: 2\n", "  nodes: 2\n  nodes: 3\n").replace("s3:\n  bucket: b\n", "")
    text = text.replace("root: /fsx", "root: ${UNSET_FSX_ROOT_FOR_TEST}")
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "p.yaml", env={})
    message = str(info.value)
    assert "p.yaml:4: cluster.nodes: duplicate key" in message
    assert "s3.bucket: is required" in message
    assert "UNSET_FSX_ROOT_FOR_TEST is not set" in message


def test_profile_may_not_set_save_or_escape_fsx_root() -> None:
    text = PROFILE + "neox:\n  overrides:\n    save: /fsx/shared\n"
    text = text.replace("  root: /fsx\n", "  root: /fsx\n  checkpoints_dir: ../elsewhere\n")
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "p.yaml")
    assert "neox.overrides.save: is set per run" in str(info.value)
    assert "fsx.checkpoints_dir: must be a relative path below fsx.root" in str(info.value)


def test_run_name_must_be_a_safe_folder_name(aws) -> None:
    for bad in ("../other", "demo\n", "a b", ""):
        with pytest.raises(ValueError, match="run name"):
            aws.run_paths(bad)


@pytest.mark.parametrize(
    ("total", "cap", "nodes", "gpus", "micro", "gas"),
    [
        (96, 64, 1, 1, 48, 2),  # min(cap, per_rank) would give 64 x 1 = 64 samples, not 96
        (96, 40, 1, 1, 32, 3),
        (360, 16, 3, 1, 15, 8),  # dp 3 -> 120 per rank
        (1000, 32, 5, 2, 25, 4),  # dp 10 -> 100 per rank
        (77, 8, 1, 1, 7, 11),
        (97, 16, 1, 1, 1, 97),  # a prime per-rank batch: micro 1 is the only exact split
    ],
)
def test_derive_batch_splits_shapes_that_are_not_powers_of_two(total, cap, nodes, gpus, micro, gas) -> None:
    cfg = {"train_batch_size": total, "train_micro_batch_size_per_gpu": cap}
    out, errors = derive_batch(cfg, nodes, gpus)
    assert errors == []
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (micro, gas)


def test_derive_batch_is_the_largest_exact_split_under_the_cap() -> None:
    """Against brute force, over every small shape: the global batch is kept exactly, micro never exceeds
    the cap, and no larger micro batch would also split it exactly."""
    for dp in (1, 2, 3, 5, 6):
        for per_rank in range(1, 61):
            for cap in range(1, 70, 3):
                cfg = {"train_batch_size": per_rank * dp, "train_micro_batch_size_per_gpu": cap}
                out, errors = derive_batch(cfg, dp, 1)
                micro, gas = out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]
                assert errors == [] and micro * gas * dp == per_rank * dp and micro <= cap
                assert micro == max(m for m in range(1, cap + 1) if per_rank % m == 0), (dp, per_rank, cap)


def test_profile_slices_section_is_checked_at_load_time_naming_its_line() -> None:
    text = PROFILE + "slices:\n  seconds_per_iteration: 1.5\n  slack: 1.5\n"
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "p.yaml")
    line = text.splitlines().index("slices:") + 1
    assert str(info.value) == f"p.yaml:{line}: slices.slack must be a fraction in [0, 1), got 1.5"
    good = parse_profile(text.replace("slack: 1.5", "slack: 0.25"), "p.yaml")
    assert good.raw["slices"]["slack"] == 0.25


def test_scheduling_keys_are_checked_at_load_naming_line_and_key() -> None:
    text = PROFILE.replace(
        '  time_limit: "01:00:00"\n', '  time_limit: "01:00:00"\n  account: proj-7\n  qos: high\n'
    )
    p = parse_profile(text, "p.yaml")
    assert p.cluster.scheduling() == {"account": "proj-7", "qos": "high"}
    bad = PROFILE.replace('  time_limit: "01:00:00"\n', '  time_limit: "01:00:00"\n  account: "x; reboot"\n')
    with pytest.raises(ProfileError) as info:
        parse_profile(bad, "p.yaml")
    assert str(info.value).startswith(
        "p.yaml:6: cluster.account: 'x; reboot' is not a valid sbatch --account"
    )


@pytest.mark.parametrize(
    ("section", "key_line", "message"),
    [
        ("data", "  parallelism: 0\n", "data.parallelism: must be 1..10000"),
        ("data", '  parallelism: "8"\n', "data.parallelism: must be int, got '8'"),
        ("data", "  url_template: ftp://mirror/{name}\n", "data.url_template:"),
        ("export", "  keep_last: -1\n", "export.keep_last: must be 0 (never prune) or more"),
        ("cluster", '  shrink_on_node_failure: "yes"\n', "cluster.shrink_on_node_failure: must be bool"),
        ("fsx", "  data_repository:\n    file_system_id: fs-1\n    poll_interval: 0\n", "poll_interval"),
        ("fsx", "  data_repository:\n    file_system_id: fs-1\n    polling: 5\n", "data_repository.polling"),
    ],
)
def test_every_profile_key_is_typed_at_load_naming_its_line(section, key_line, message) -> None:
    """The keys other modules once read raw (issue 18 item 2) are checked when the profile is loaded."""
    text = PROFILE if f"\n{section}:\n" in PROFILE else PROFILE + f"{section}:\n"
    text = text.replace(f"\n{section}:\n", f"\n{section}:\n{key_line}", 1)
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "p.yaml")
    assert message in str(info.value) and str(info.value).startswith("p.yaml:")
    line = int(str(info.value).split(":")[1])
    assert text.splitlines()[line - 1].strip().split(":")[0] in message, (line, str(info.value))


def test_typed_profile_keys_and_their_defaults() -> None:
    p = parse_profile(PROFILE, "p.yaml")
    assert (p.data_parallelism, p.export_keep_last, p.shard_url_template, p.data_repository) == (
        8,
        0,
        None,
        None,
    )
    assert p.cluster.shrink_on_node_failure is False
    text = PROFILE.replace("data:\n", "data:\n  parallelism: 3\n  url_template: https://mirror/c4/{name}\n")
    text += "export:\n  keep_last: 2\n"
    text = text.replace("fsx:\n", "fsx:\n  data_repository:\n    file_system_id: fs-0123456789abcdef0\n")
    p = parse_profile(text, "p.yaml")
    assert (p.data_parallelism, p.export_keep_last, p.shard_url_template) == (
        3,
        2,
        "https://mirror/c4/{name}",
    )
    assert p.data_repository == {
        "file_system_id": "fs-0123456789abcdef0",
        "aws_conn_id": "aws_default",
        "region_name": None,
        "poll_interval": 30,
    }
