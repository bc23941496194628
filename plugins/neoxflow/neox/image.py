"""What the training image provides, and the attention and fusion settings the plan renders to match it.

Why this exists: Pythia's configs ask for flash attention and NeoX's fused softmax kernels. An image without
them fails at start-up (flash) or compiles kernels at every launch (fused softmax), and a silent switch at
launch would train something other than what the plan showed. So the profile states what its image has
(``cluster.image_provides``), the plan renders the config to match and says so, an override asking for a
kernel the image lacks is refused naming the field, and the job checks again at start
(``include/cluster/neox_launch.py``) that the image really has what the rendered config uses.

``bias_gelu_fusion`` needs nothing from the image (NeoX's TorchScript function), so it is left as set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: what ``cluster.image_provides`` may list
IMAGE_FEATURES = ("flash_attn", "fused_kernels")
#: NeoX options that load its compiled kernels (megatron/initialize.py: fused_kernels.load)
FUSED_KERNEL_KEYS = (
    "scaled_upper_triang_masked_softmax_fusion",
    "scaled_masked_softmax_fusion",
    "rope_fusion",
)


def _uses_flash(attention: Any) -> bool:
    try:
        return any("flash" in str(kind) for entry in attention for kind in entry[0])
    except (TypeError, IndexError):
        return False


def _without_flash(attention: Any) -> Any:
    return [
        [["global" if "flash" in str(kind) else kind for kind in entry[0]], entry[1]] for entry in attention
    ]


def fit_to_image(
    cfg: Mapping[str, Any], provides: tuple[str, ...] | None, explicit: set[str] | frozenset[str]
) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """(config fitted to the image, errors as (key, message), what was changed and why).

    ``provides`` None: the profile does not say; the config is left as it is (the job's start check still
    refuses an image that lacks what the config uses). ``explicit``: keys an override set by name; those
    are never changed, and one that asks for a missing kernel is an error."""
    out = dict(cfg)
    errors: list[tuple[str, str]] = []
    notes: list[str] = []
    if provides is None:
        return out, errors, notes
    if "flash_attn" not in provides and _uses_flash(out.get("attention_config")):
        if "attention_config" in explicit:
            errors.append(
                ("attention_config", "asks for flash attention; cluster.image_provides lacks flash_attn")
            )
        else:
            out["attention_config"] = _without_flash(out["attention_config"])
            notes.append("attention flash -> global (the image has no flash_attn)")
    if "fused_kernels" not in provides:
        for key in FUSED_KERNEL_KEYS:
            if not out.get(key):
                continue
            if key in explicit:
                errors.append((key, "needs NeoX's fused kernels; cluster.image_provides lacks fused_kernels"))
            else:
                out[key] = False
                notes.append(f"{key} off (the image has no fused_kernels)")
    return out, errors, notes
