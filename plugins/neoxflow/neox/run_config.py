"""One run's GPT-NeoX config: merged from its layers, fitted to the cluster, rendered, validated, hashed.

Layers, lowest precedence first:

1. ``include/configs/pythia/<size>.json``: the upstream EleutherAI Pythia values (strict JSON, no paths).
2. the profile's ``neox.overrides`` (``include/configs/profiles/<name>.yaml``; e.g. the local tiny model).
3. the run's overrides (trigger form: ``train_iters``, ``checkpoint_factor``, ...).
4. paths from the profile and the run name: ``data_path``/``vocab_file``/``log_dir`` (before 2 and 3, so
   they may be overridden) and ``save``/``load`` (always last: one folder per run, never shared).

Then the batch is fitted to the shape (``neox/batch.py``), the config to the image (``neox/image.py``),
activation recompute chosen by memory (``neox/memory.py``), and the result checked
(``neox/config_checks.py``) and rendered (``neox/config_files.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neoxflow.neox.batch import data_parallel_size, derive_batch
from neoxflow.neox.config_checks import validate_config
from neoxflow.neox.config_errors import ConfigError
from neoxflow.neox.config_files import (
    config_hash,
    load_size_config,
    merge_config,
    normalise_keys,
    render_config,
    yaml_json_disagreement,
)
from neoxflow.neox.image import fit_to_image
from neoxflow.neox.memory import RecomputeChoice, choose_recompute
from neoxflow.neox.profile import Profile, RunPaths


@dataclass(frozen=True)
class RunConfig:
    """The merged, batch-fitted, rendered config of one run, with its validation result."""

    size: str
    run_name: str
    nodes: int
    gpus_per_node: int
    config: dict[str, Any]
    rendered: str
    config_hash: str
    errors: list[ConfigError]
    paths: RunPaths
    #: the plan's activation-recompute choice and why (neox/memory.py); None when not made
    recompute: RecomputeChoice | None = None
    #: what the plan changed to fit the image (neox/image.py)
    image_changes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def config_path(self) -> str:
        """Where the rendered config goes on the cluster (versioned by content hash)."""
        return self.paths.config_file(self.config_hash)


def build_run_config(
    size: str,
    profile: Profile,
    run_name: str,
    *,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_vocab_file: bool | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    dataset_id: str,
) -> RunConfig:
    """Merge size file, profile and run overrides, fit the batch to the shape, render, validate, hash.

    ``nodes``/``gpus_per_node`` default to the profile's cluster shape; ``check_vocab_file`` defaults to
    ``profile.fsx_visible_to_airflow``. ``lr_decay_iters`` follows an overridden ``train_iters`` when it
    equalled ``train_iters`` in the size file and no override sets it (Pythia decays over the whole run).
    Never raises for config problems: they are in ``errors`` (the rendered text is still returned so a
    dry run can show it). ``dataset_id`` names the dataset's folder (``Profile.data_path``).
    """
    nodes = profile.cluster.nodes if nodes is None else nodes
    gpus_per_node = profile.cluster.gpus_per_node if gpus_per_node is None else gpus_per_node
    paths = profile.run_paths(run_name)
    errors: list[ConfigError] = []
    run_overrides = normalise_keys(overrides or {})
    for key in ("save", "load"):
        if key in run_overrides:
            errors.append(
                ConfigError(key, "is set per run from the profile and run name; it cannot be overridden")
            )
            run_overrides.pop(key)

    base = load_size_config(size, config_dir)
    cfg = merge_config(
        base,
        {
            "data_path": profile.data_path(dataset_id),
            "vocab_file": profile.tokenizer_path,
            "log_dir": paths.neox_log_dir,
            # NeoX then prints MFU and HFU itself (megatron/logging.py): one formula, NeoX's
            **(
                {"peak_theoretical_tflops": profile.cluster.gpu_peak_tflops}
                if profile.cluster.gpu_peak_tflops
                else {}
            ),
        },
    )
    cfg = merge_config(cfg, profile.neox_overrides)
    cfg = merge_config(cfg, run_overrides)
    explicit = normalise_keys(profile.neox_overrides).keys() | run_overrides.keys()
    if (
        "lr_decay_iters" not in explicit
        and "train_iters" in explicit
        and base.get("lr_decay_iters") == base.get("train_iters")
    ):
        cfg["lr_decay_iters"] = cfg.get("train_iters")
    if cfg.get("train_data_paths") and "data_path" not in explicit:
        cfg.pop("data_path", None)
    cfg = merge_config(cfg, {"save": paths.checkpoint_dir, "load": paths.checkpoint_dir})

    cfg, batch_errors = derive_batch(cfg, nodes, gpus_per_node)
    errors.extend(batch_errors)
    cfg, image_errors, image_changes = fit_to_image(cfg, profile.cluster.image_provides, explicit)
    errors.extend(ConfigError(key, message) for key, message in image_errors)
    dp, _ = data_parallel_size(cfg, nodes, gpus_per_node)
    try:
        recompute = choose_recompute(
            cfg,
            mode=profile.recompute,
            gpu_memory_gib=profile.cluster.gpu_memory_gib,
            data_parallel=dp,
            explicit=explicit,
        )
    except (KeyError, TypeError, ValueError) as exc:  # a shape the estimate cannot read: validation names it
        recompute = None
        errors.append(ConfigError("checkpoint_activations", f"memory estimate failed: {exc}"))
    if recompute is not None and recompute.set_keys:
        cfg = merge_config(cfg, recompute.set_keys)
    check = profile.fsx_visible_to_airflow if check_vocab_file is None else check_vocab_file
    errors.extend(validate_config(cfg, nodes, gpus_per_node, check_vocab_file=check, run_name=run_name))
    try:
        rendered = render_config(cfg)
    except ValueError as exc:
        errors.append(ConfigError("<render>", str(exc)))
        rendered = ""
    else:
        disagreement = yaml_json_disagreement(rendered)
        if disagreement:
            errors.append(ConfigError("<render>", f"PyYAML and JSON disagree: {disagreement}"))
    return RunConfig(
        size=size,
        run_name=run_name,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        config=cfg,
        rendered=rendered,
        config_hash=config_hash(rendered),
        errors=_dedupe(errors),
        paths=paths,
        recompute=recompute,
        image_changes=tuple(image_changes),
    )


def _dedupe(errors: list[ConfigError]) -> list[ConfigError]:
    seen: set[ConfigError] = set()
    out = []
    for error in errors:
        if error not in seen:
            seen.add(error)
            out.append(error)
    return out
