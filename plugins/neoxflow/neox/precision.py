"""GPT-NeoX's precision rules: which spellings it accepts, which combinations it refuses, what it trains in.

NeoX (ea7aefd8) reads three fields: ``precision`` (``Literal["fp16", "fp32", "bfloat16"]``,
megatron/neox_arguments/neox_args.py:102) and the DeepSpeed blocks ``fp16`` and ``bf16`` (dicts,
deepspeed_args.py:94 and :101). ``NeoXArgs.calculate_derived`` (megatron/neox_arguments/arguments.py:966-1011)
runs BEFORE the type check (arguments.py:150-152) and:

- an enabled ``fp16`` block with ``precision`` unset sets it to ``fp16``; with any other precision it fails
  (``assert self.precision == "fp16"``, "DeepSpeed fp16 field was set but precision conflicts");
- an enabled ``bf16`` block does the same with ``bfloat16`` (so both blocks enabled always fail: the fp16
  block sets ``fp16`` first, then the bf16 assert fires);
- ``precision: fp16`` forces ``fp16.enabled`` true; ``precision: bfloat16`` adds ``bf16: {enabled: true}``
  only when the ``bf16`` block is empty, so a written ``bf16: {enabled: false}`` keeps DeepSpeed's bf16 off;
- any other precision value, ``bf16``, ``BFloat16`` and ``FP16`` included, silently becomes ``fp32``
  (the case-insensitive type check that follows then sees ``fp32``).

So a wrong spelling does not fail, it trains in another precision: neoxflow refuses everything NeoX would
assert on or silently change, naming the field. The blocks are read with ``.get("enabled")`` truthiness:
a non-dict block crashes NeoX (AttributeError) and the string ``"false"`` counts as enabled, so both are
refused too.

Checkpoints spell it DeepSpeed's way: ``bf16_zero_pp_rank_*`` optimizer files whenever bf16 is enabled
(DeeperSpeed runtime/engine.py ``_get_zero_ckpt_prefix``). :func:`neox_precision` gives the precision NeoX
derives, in NeoX's spelling; :mod:`neoxflow.neox.checkpoints` maps it to the file layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NEOX_PRECISIONS", "neox_precision", "precision_problems"]

#: The values of NeoX's ``precision`` that it acts on (neox_args.py:102); anything else means fp32.
NEOX_PRECISIONS = ("fp16", "fp32", "bfloat16")
#: What the ``precision`` field must say when a DeepSpeed block is enabled (arguments.py:972, :979).
_BLOCK_PRECISION = {"fp16": "fp16", "bf16": "bfloat16"}


def _enabled(cfg: Mapping[str, Any], block: str) -> bool:
    """NeoX's test: ``self.<block> and self.<block>.get("enabled", False)``."""
    section = cfg.get(block)
    return isinstance(section, Mapping) and bool(section.get("enabled", False))


def precision_problems(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, why)`` for every precision setting NeoX would refuse or silently change; empty when
    NeoX trains in the precision the config says."""
    problems: list[tuple[str, str]] = []
    for block in _BLOCK_PRECISION:
        section = cfg.get(block)
        if section is None or section == {}:
            continue
        if not isinstance(section, Mapping):
            problems.append((block, f"must be a block like {{enabled: true}} or null, got {section!r}"))
        elif "enabled" in section and not isinstance(section["enabled"], bool):
            problems.append(
                (
                    f"{block}.enabled",
                    f"must be true or false, got {section['enabled']!r} (NeoX tests truthiness)",
                )
            )
    if problems:
        return problems
    precision = cfg.get("precision")
    if precision is not None and precision not in NEOX_PRECISIONS:
        hint = " (NeoX spells bf16 'bfloat16')" if str(precision).lower() in ("bf16", "bfloat16") else ""
        problems.append(
            (
                "precision",
                f"must be fp16, fp32 or bfloat16{hint}, got {precision!r}: NeoX would silently train in fp32",
            )
        )
        return problems
    fp16_on, bf16_on = _enabled(cfg, "fp16"), _enabled(cfg, "bf16")
    if fp16_on and bf16_on:
        problems.append(("fp16/bf16", "fp16.enabled and bf16.enabled are both true; choose one (NeoX fails)"))
        return problems
    for block, on in (("fp16", fp16_on), ("bf16", bf16_on)):
        wanted = _BLOCK_PRECISION[block]
        if on and precision is not None and precision != wanted:
            problems.append(
                (
                    f"precision/{block}",
                    f"precision {precision!r} conflicts with {block}.enabled true, which needs precision "
                    f"{wanted!r} or none (NeoX fails: 'DeepSpeed {block} field was set but precision "
                    "conflicts')",
                )
            )
    bf16 = cfg.get("bf16")
    if precision == "bfloat16" and isinstance(bf16, Mapping) and bf16 and not bf16_on:
        problems.append(
            (
                "precision/bf16",
                "precision 'bfloat16' with bf16.enabled false: NeoX then leaves DeepSpeed's bf16 off; "
                "enable the block or remove it",
            )
        )
    return problems


def neox_precision(cfg: Mapping[str, Any]) -> str:
    """The precision NeoX derives from ``cfg`` (``fp16``, ``bfloat16`` or ``fp32``), as calculate_derived
    does; raises ValueError naming the field(s) when NeoX would refuse the config or train otherwise."""
    problems = precision_problems(cfg)
    if problems:
        raise ValueError("; ".join(f"{field}: {why}" for field, why in problems))
    precision = cfg.get("precision")
    if precision is None:
        if _enabled(cfg, "fp16"):
            return "fp16"
        if _enabled(cfg, "bf16"):
            return "bfloat16"
    return precision if precision in ("fp16", "bfloat16") else "fp32"
