"""GPT-NeoX (Pythia) configs: load, merge, render, validate, hash. Pure functions plus file reading.

Why this exists: a NeoX job fails minutes after it starts (after hours in the queue) on config defects
that are cheap to see beforehand: an unknown key (``gas``), non-strict JSON, a batch size that does not
factor over the GPUs, several runs saving into one checkpoint folder, a vocab file that is not there, or
``1e-08`` that PyYAML (NeoX reads every config file with YAML 1.1) keeps as a *string*. The DAG renders
the merged config with :func:`build_run_config` and refuses to submit while :func:`validate_config`
returns errors; every error names the key and says why.

Layers, lowest precedence first:

1. ``include/configs/pythia/<size>.json``: the upstream EleutherAI Pythia values (strict JSON, no paths).
2. the profile's ``neox.overrides`` (``include/configs/profiles/<name>.yaml``; e.g. the local tiny model).
3. the run's overrides (trigger form: ``train_iters``, ``checkpoint_factor``, ...).
4. paths from the profile and the run name: ``data_path``/``vocab_file``/``log_dir`` (before 2 and 3, so
   they may be overridden) and ``save``/``load`` (always last: one folder per run, never shared).

Batch policy (decided here, documented for the DAG): ``train_batch_size`` is the *global* batch (Pythia:
1024 sequences) and is what defines the training; ``train_micro_batch_size_per_gpu`` in a size file is
the largest micro batch known to fit in GPU memory. For a cluster shape, :func:`derive_batch` keeps the
global batch, uses the largest micro batch <= that cap which divides the per-rank batch, and derives
``gradient_accumulation_steps``; a global batch that the data-parallel size does not divide is an error
(never silently a different batch). NeoX's rule then holds: ``train_batch_size == micro x GAS x dp`` with
``dp = nodes x gpus_per_node / (pipe_parallel_size x model_parallel_size)`` (sizes < 1 count as 1).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neoxflow.data.shards import ShardSelectionError, validate_url_template
from neoxflow.neox.image import IMAGE_FEATURES, fit_to_image
from neoxflow.neox.memory import RECOMPUTE_MODES, RecomputeChoice, choose_recompute
from neoxflow.neox.precision import precision_problems
from neoxflow.paths import CONFIG_DIR, REPO_ROOT
from neoxflow.slurm.validate import UnsafeValueError, check_run_name, check_sbatch_option

#: The ten Pythia sizes, smallest first (file names under include/configs/pythia/).
PYTHIA_SIZES: tuple[str, ...] = ("14M", "31M", "70M", "160M", "410M", "1B", "1.4B", "2.8B", "6.9B", "12B")

#: Keys NeoX used to accept and now rejects, with what to write instead.
REMOVED_KEYS: dict[str, str] = {
    "gas": "removed in GPT-NeoX PR #1144 (NeoX now fails with TypeError); use gradient_accumulation_steps",
}

MAX_SEQ_LENGTH = 1 << 20

_EXPONENT_NUMBER_STRING = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --------------------------------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class ConfigError:
    """One problem with a config: which key (dotted for nested ones) and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigFileError(ValueError):
    """A config or profile file that cannot be read: names the file and, where known, line and column."""

    def __init__(
        self, path: str | os.PathLike[str], reason: str, line: int | None = None, column: int | None = None
    ):
        self.path = str(path)
        self.reason = reason
        self.line = line
        self.column = column
        where = (
            self.path if line is None else f"{self.path}:{line}" + ("" if column is None else f":{column}")
        )
        super().__init__(f"{where}: {reason}")


class ConfigValidationError(ValueError):
    """Raised by :func:`require_valid`: carries every :class:`ConfigError`, one per line in the message."""

    def __init__(self, errors: list[ConfigError], what: str = "config"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{what} has {len(self.errors)} error(s):\n{lines}")


def require_valid(errors: list[ConfigError], what: str = "config") -> None:
    """Raise :class:`ConfigValidationError` when ``errors`` is not empty (for callers that want to stop)."""
    if errors:
        raise ConfigValidationError(errors, what)


# --------------------------------------------------------------------------------------------------
# strict JSON


def _line_of_key(text: str, key: str, occurrence: int) -> int | None:
    matches = list(re.finditer(r'"' + re.escape(key) + r'"\s*:', text))
    if len(matches) >= occurrence:
        return text.count("\n", 0, matches[occurrence - 1].start()) + 1
    return None


def parse_strict_json(text: str, source: str | os.PathLike[str] = "<string>") -> dict[str, Any]:
    """Parse ``text`` as strict JSON holding one object; raise :class:`ConfigFileError` with line/column.

    Strict means what NeoX's Slurm launcher needs: no comments, no trailing commas, no NaN/Infinity, no
    duplicate keys (also after NeoX's ``-`` to ``_`` key conversion, which would make one silently win).
    """

    def reject_constant(name: str) -> Any:
        raise ConfigFileError(source, f"{name} is not valid JSON (and NeoX cannot use it)")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ConfigFileError(source, f"duplicate key {key!r}", _line_of_key(text, key, 2))
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(source, _explain_json_error(text, exc), exc.lineno, exc.colno) from None
    if not isinstance(data, dict):
        raise ConfigFileError(source, f"top level must be a JSON object, not {type(data).__name__}", 1, 1)
    seen: dict[str, str] = {}
    for key in data:
        norm = key.replace("-", "_")
        if norm in seen:
            raise ConfigFileError(
                source,
                f"keys {seen[norm]!r} and {key!r} are the same NeoX key {norm!r} (NeoX turns '-' into '_')",
                _line_of_key(text, key, 1),
            )
        seen[norm] = key
    return data


def _explain_json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Turn json's message into one that names the usual culprit (comment, trailing comma)."""
    pos = exc.pos
    char = text[pos] if pos < len(text) else ""
    before = text[:pos].rstrip()
    if char == "#" or text.startswith("//", pos):
        return f"comment found: strict JSON has no comments ({exc.msg})"
    if char in "}]" and before.endswith(","):
        return f"trailing comma before {char!r}: strict JSON does not allow it ({exc.msg})"
    return exc.msg


def load_json_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and strictly parse a JSON config file (see :func:`parse_strict_json`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(path, f"cannot read: {exc}") from None
    return parse_strict_json(text, path)


def load_size_config(size: str, config_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The upstream Pythia config for ``size`` (one of :data:`PYTHIA_SIZES`), as a fresh dict."""
    if size not in PYTHIA_SIZES:
        raise ValueError(f"unknown Pythia size {size!r}; choose one of {', '.join(PYTHIA_SIZES)}")
    base = Path(config_dir) if config_dir is not None else CONFIG_DIR
    return load_json_file(base / "pythia" / f"{size}.json")


# --------------------------------------------------------------------------------------------------
# merge


def _normalise_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``base`` updated by ``overrides`` (neither is modified).

    Top-level keys are normalised the NeoX way (``train-iters`` -> ``train_iters``) so that an override
    replaces its base key instead of becoming a duplicate. Nested dicts (``optimizer.params``,
    ``fp16``...) merge recursively; lists, scalars and ``None`` replace (``None`` means JSON null, which
    NeoX reads as "use the default").
    """
    merged = copy.deepcopy(_normalise_keys(base))
    for key, value in _normalise_keys(overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge_nested(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_nested(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_nested(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------------------------------
# render


def render_config(cfg: Mapping[str, Any]) -> str:
    """Render ``cfg`` as strict JSON that PyYAML (YAML 1.1, how NeoX reads it) loads to the same value.

    ``json.dumps`` writes ``1e-08``, which YAML 1.1 reads as the *string* "1e-08" (NeoX then crashes in
    the optimizer); here a float in exponent form always carries a dot (``1.0e-08``). Non-ASCII
    characters of the Basic Multilingual Plane are written as ``\\uXXXX`` (both parsers agree; YAML would
    otherwise treat U+0085/U+2028 as line breaks); others are written as UTF-8 (JSON's surrogate-pair
    escapes are not understood by YAML). Dicts are one key per line, short lists inline. Raises
    ``ValueError`` for NaN/Infinity, non-string keys and unsupported types.
    """
    return _render(cfg, 0, "") + "\n"


def _render(value: Any, level: int, where: str) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        pad = "  " * (level + 1)
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where or '<top>'}: key {key!r} is not a string")
            items.append(f"{pad}{_render_string(key)}: {_render(item, level + 1, _join(where, key))}")
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        inline = _render_inline(value, where)
        if inline is not None and len(inline) <= 80:
            return inline
        pad = "  " * (level + 1)
        rendered = [f"{pad}{_render(item, level + 1, f'{where}[{i}]')}" for i, item in enumerate(value)]
        return "[\n" + ",\n".join(rendered) + "\n" + "  " * level + "]"
    return _render_scalar(value, where)


def _render_inline(value: list[Any] | tuple[Any, ...], where: str) -> str | None:
    parts = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            return None
        if isinstance(item, list | tuple):
            inner = _render_inline(item, f"{where}[{i}]")
            if inner is None:
                return None
            parts.append(inner)
        else:
            parts.append(_render_scalar(item, f"{where}[{i}]"))
    return "[" + ", ".join(parts) + "]"


def _render_scalar(value: Any, where: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _render_float(value, where)
    if isinstance(value, str):
        return _render_string(value)
    raise ValueError(f"{where or '<top>'}: {type(value).__name__} cannot be written to a NeoX config")


def _render_float(value: float, where: str) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{where or '<top>'}: {value!r} is not a finite number (JSON has no NaN/Infinity)")
    text = repr(float(value))  # shortest round-trip form, exponent always signed ('1e-08', '1e+16')
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        text = f"{mantissa}e{exponent}"
    return text


def _render_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"string {text!r} holds a lone surrogate U+{code:04X}")
        elif code < 0x20 or 0x7F <= code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def config_hash(rendered: str) -> str:
    """SHA-256 (hex) of the rendered config text: the version of a config on FSx and in S3."""
    return hashlib.sha256(rendered.encode("utf-8")).hexdigest()


def yaml_json_disagreement(rendered: str) -> str | None:
    """None when PyYAML and JSON read ``rendered`` identically, else a description of the first difference."""
    as_json = json.loads(rendered)
    as_yaml = yaml.safe_load(rendered)
    return _first_difference(as_json, as_yaml, "")


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            if key not in a or key not in b:
                return f"{_join(where, str(key))}: present in only one reading"
            diff = _first_difference(a[key], b[key], _join(where, str(key)))
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: list lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = _first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    if type(a) is not type(b) or a != b:
        return f"{where or '<top>'}: JSON reads {a!r} but YAML reads {b!r}"
    return None


# --------------------------------------------------------------------------------------------------
# batch arithmetic and validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parallel_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(pipe, model) parallel sizes as NeoX uses them for dp: values < 1 (NeoX's pipe 0) count as 1."""
    pipe = cfg.get("pipe_parallel_size", 0)
    model = cfg.get("model_parallel_size", 1)
    pipe = pipe if _is_int(pipe) and pipe >= 1 else 1
    model = model if _is_int(model) and model >= 1 else 1
    return pipe, model


def _shape_errors(nodes: Any, gpus_per_node: Any) -> list[ConfigError]:
    errors = []
    if not _is_int(nodes) or nodes < 1:
        errors.append(ConfigError("nodes", f"must be a positive integer, got {nodes!r}"))
    if not _is_int(gpus_per_node) or gpus_per_node < 1:
        errors.append(ConfigError("gpus_per_node", f"must be a positive integer, got {gpus_per_node!r}"))
    return errors


def data_parallel_size(
    cfg: Mapping[str, Any], nodes: int, gpus_per_node: int
) -> tuple[int | None, list[ConfigError]]:
    """``dp = nodes x gpus_per_node / (pipe x model parallel)``, or None plus the error when not whole."""
    errors = _shape_errors(nodes, gpus_per_node)
    if errors:
        return None, errors
    pipe, model = parallel_sizes(cfg)
    world = nodes * gpus_per_node
    if world % (pipe * model):
        return None, [
            ConfigError(
                "model_parallel_size",
                f"{nodes} nodes x {gpus_per_node} GPUs = {world} ranks is not divisible by "
                f"pipe_parallel_size x model_parallel_size = {pipe} x {model}: the data-parallel size "
                "must be a whole number",
            )
        ]
    return world // (pipe * model), []


def derive_batch(
    cfg: Mapping[str, Any], nodes: int, gpus_per_node: int
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Fit micro batch and gradient accumulation to the cluster shape, keeping the global batch.

    Returns a new config and errors. Without ``train_batch_size`` the config is returned unchanged (NeoX
    then derives the global batch from micro x GAS x dp). See the module docstring for the policy.
    """
    out = dict(cfg)
    dp, errors = data_parallel_size(cfg, nodes, gpus_per_node)
    if dp is None:
        return out, errors
    total = cfg.get("train_batch_size")
    if total is None:
        return out, []
    cap = cfg.get("train_micro_batch_size_per_gpu")
    if not _is_int(total) or total < 1:
        return out, [ConfigError("train_batch_size", f"must be a positive integer, got {total!r}")]
    if not _is_int(cap) or cap < 1:
        return out, [
            ConfigError(
                "train_micro_batch_size_per_gpu", f"must be a positive integer (the cap), got {cap!r}"
            )
        ]
    if total % dp:
        return out, [
            ConfigError(
                "train_batch_size",
                f"global batch {total} is not divisible by the data-parallel size {dp} "
                f"({nodes} nodes x {gpus_per_node} GPUs / (pipe x model parallel)); choose a node count "
                "whose data-parallel size divides it, or change train_batch_size",
            )
        ]
    per_rank = total // dp
    micro = max(m for m in range(1, min(cap, per_rank) + 1) if per_rank % m == 0)
    out["train_micro_batch_size_per_gpu"] = micro
    out["gradient_accumulation_steps"] = per_rank // micro
    return out, []


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _walk(value: Any, where: str):
    yield where, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, _join(where, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")


def validate_config(
    cfg: Mapping[str, Any],
    nodes: int,
    gpus_per_node: int,
    check_vocab_file: bool = True,
    run_name: str | None = None,
) -> list[ConfigError]:
    """Every problem NeoX would hit at start-up (or that would hurt the run), as :class:`ConfigError` s.

    Checks: unknown and removed keys (``gas``); the batch rule ``train_batch_size = micro x GAS x dp``
    with a whole, positive dp; heads and hidden size divisible by model parallel, hidden by heads;
    attention_config covering num_layers; seq_length sane; checkpoint_factor <= train_iters; numbers
    that are strings (``"1e-08"``); precision, fp16 and bf16 as NeoX derives them (neox/precision.py);
    ZeRO stage vs pipeline; save/load set, absolute, equal and (with ``run_name``) the per-run folder;
    data path set; vocab file absolute and readable
    (``check_vocab_file=False`` where the Airflow side cannot see the cluster's file system).
    """
    errors: list[ConfigError] = []
    add = errors.append

    for key in cfg:
        norm = str(key).replace("-", "_")
        if norm in REMOVED_KEYS:
            add(ConfigError(str(key), REMOVED_KEYS[norm]))
        elif norm not in KNOWN_KEYS:
            close = difflib.get_close_matches(norm, KNOWN_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            add(ConfigError(str(key), f"unknown GPT-NeoX key (NeoX fails with TypeError on it){hint}"))

    for where, value in _walk(dict(cfg), ""):
        if isinstance(value, str) and _EXPONENT_NUMBER_STRING.match(value.strip()):
            add(ConfigError(where, f"{value!r} is a string that looks like a number; write it as a number"))
        if isinstance(value, float) and not math.isfinite(value):
            add(ConfigError(where, f"{value!r} is not a finite number"))

    def positive_int(key: str, required: bool = True) -> int | None:
        value = cfg.get(key)
        if value is None:
            if required:
                add(ConfigError(key, "is required"))
            return None
        if not _is_int(value) or value < 1:
            add(ConfigError(key, f"must be a positive integer, got {value!r}"))
            return None
        return value

    layers = positive_int("num_layers")
    hidden = positive_int("hidden_size")
    heads = positive_int("num_attention_heads")
    seq = positive_int("seq_length")
    max_pos = positive_int("max_position_embeddings", required=False)
    train_iters = positive_int("train_iters")
    factor = positive_int("checkpoint_factor")
    positive_int("log_interval", required=False)
    micro = positive_int("train_micro_batch_size_per_gpu")
    gas = positive_int("gradient_accumulation_steps", required=False)
    total = positive_int("train_batch_size", required=False)

    for key in ("pipe_parallel_size", "model_parallel_size"):
        value = cfg.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            add(ConfigError(key, f"must be a non-negative integer, got {value!r}"))
    pipe, model = parallel_sizes(cfg)

    dp, shape_errors = data_parallel_size(cfg, nodes, gpus_per_node)
    errors.extend(shape_errors)
    if dp is not None and micro is not None:
        steps = gas if gas is not None else 1
        if total is not None and total != micro * steps * dp:
            add(
                ConfigError(
                    "train_batch_size",
                    f"{total} != train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp = "
                    f"{micro} x {steps} x {dp} = {micro * steps * dp} (dp = {nodes} nodes x {gpus_per_node} "
                    f"GPUs / (pipe {pipe} x model {model}))",
                )
            )

    if hidden is not None and heads is not None and hidden % heads:
        add(ConfigError("hidden_size", f"{hidden} is not divisible by num_attention_heads {heads}"))
    if heads is not None and heads % model:
        add(ConfigError("num_attention_heads", f"{heads} is not divisible by model_parallel_size {model}"))
    if hidden is not None and hidden % model:
        add(ConfigError("hidden_size", f"{hidden} is not divisible by model_parallel_size {model}"))

    attention = cfg.get("attention_config")
    if attention is not None and layers is not None:
        covered = _attention_layers(attention)
        if covered is None:
            add(ConfigError("attention_config", 'must look like [[["flash"], num_layers], ...]'))
        elif covered != layers:
            add(ConfigError("attention_config", f"covers {covered} layers but num_layers is {layers}"))

    if seq is not None:
        if seq > MAX_SEQ_LENGTH:
            add(ConfigError("seq_length", f"{seq} is larger than {MAX_SEQ_LENGTH}"))
        if max_pos is not None and seq > max_pos:
            add(ConfigError("seq_length", f"{seq} is larger than max_position_embeddings {max_pos}"))
    rotary_pct = cfg.get("rotary_pct")
    if rotary_pct is not None and (not _is_number(rotary_pct) or not 0 < rotary_pct <= 1):
        add(ConfigError("rotary_pct", f"must be a number in (0, 1], got {rotary_pct!r}"))

    if factor is not None and train_iters is not None and factor > train_iters:
        add(
            ConfigError(
                "checkpoint_factor",
                f"{factor} is larger than train_iters {train_iters}: no checkpoint before the end",
            )
        )

    lr = _get(cfg, "optimizer.params.lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        add(ConfigError("optimizer.params.lr", f"must be a positive number, got {lr!r}"))
    eps = _get(cfg, "optimizer.params.eps")
    if eps is not None and (not _is_number(eps) or eps <= 0):
        add(ConfigError("optimizer.params.eps", f"must be a positive number, got {eps!r}"))

    errors.extend(ConfigError(key, why) for key, why in precision_problems(cfg))  # neox/precision.py

    stage = _get(cfg, "zero_optimization.stage")
    if stage is not None:
        if not _is_int(stage) or not 0 <= stage <= 3:
            add(ConfigError("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}"))
        elif stage >= 2 and pipe > 1:
            add(
                ConfigError(
                    "zero_optimization.stage", f"ZeRO stage {stage} does not work with pipeline parallelism"
                )
            )

    errors.extend(_path_errors(cfg, check_vocab_file, run_name))
    return errors


def _attention_layers(attention: Any) -> int | None:
    if not isinstance(attention, list):
        return None
    total = 0
    for entry in attention:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], list)
            or not all(isinstance(t, str) for t in entry[0])
            or not _is_int(entry[1])
            or entry[1] < 1
        ):
            return None
        total += entry[1]
    return total


def _path_errors(cfg: Mapping[str, Any], check_vocab_file: bool, run_name: str | None) -> list[ConfigError]:
    errors: list[ConfigError] = []
    save, load = cfg.get("save"), cfg.get("load")
    for key, value in (("save", save), ("load", load)):
        if not value:
            errors.append(ConfigError(key, "is required: the per-run checkpoint folder (resume reads it)"))
        elif not isinstance(value, str) or not value.startswith("/"):
            errors.append(ConfigError(key, f"must be an absolute path, got {value!r}"))
    if save and load and save != load:
        errors.append(
            ConfigError(
                "load", f"{load!r} differs from save {save!r}: a resumed slice would not continue this run"
            )
        )
    if isinstance(save, str) and run_name is not None and Path(save).name != run_name:
        errors.append(
            ConfigError(
                "save", f"{save!r} is not this run's folder (must end in /{run_name}); runs must not share it"
            )
        )

    if not cfg.get("data_path") and not cfg.get("train_data_paths"):
        errors.append(ConfigError("data_path", "is required (or train_data_paths)"))

    vocab = cfg.get("vocab_file")
    if cfg.get("tokenizer_type", "GPT2BPETokenizer") in ("HFTokenizer", "GPT2BPETokenizer") and not vocab:
        errors.append(
            ConfigError("vocab_file", f"is required for tokenizer_type {cfg.get('tokenizer_type')!r}")
        )
    elif vocab:
        if not isinstance(vocab, str) or not vocab.startswith("/"):
            errors.append(ConfigError("vocab_file", f"must be an absolute path, got {vocab!r}"))
        elif check_vocab_file:
            try:
                with open(vocab, "rb") as handle:
                    if not handle.read(1):
                        errors.append(ConfigError("vocab_file", f"{vocab} is empty"))
            except OSError as exc:
                errors.append(ConfigError("vocab_file", f"{vocab} is not readable: {exc.strerror or exc}"))
    return errors


def find_shared_save_paths(configs: Mapping[str, Mapping[str, Any]]) -> list[ConfigError]:
    """Errors for configs (name -> config) whose ``save`` folder another config also uses.

    The seed recipe had seven sizes saving into one folder: their checkpoints overwrite each other and a
    resume loads another model's weights.
    """
    by_path: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        save = cfg.get("save")
        if isinstance(save, str) and save:
            by_path.setdefault(os.path.normpath(save), []).append(name)
    return [
        ConfigError("save", f"{path} is shared by {', '.join(names)}: each run needs its own folder")
        for path, names in sorted(by_path.items())
        if len(names) > 1
    ]


# --------------------------------------------------------------------------------------------------
# profiles

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ProfileError(ValueError):
    """A profile that cannot be used: every problem with file, line (when known), key and why."""

    def __init__(self, path: str | os.PathLike[str], problems: list[tuple[int | None, str]]):
        self.path = str(path)
        self.problems = list(problems)
        lines = [
            f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}" for line, msg in self.problems
        ]
        super().__init__("\n".join(lines))


#: Profile keys under ``cluster:`` that become sbatch options of every job (validated as sbatch values).
SCHEDULING_KEYS = ("account", "qos", "reservation", "constraint")


@dataclass(frozen=True)
class ClusterSpec:
    """Shape and launch settings of the Slurm cluster a profile targets (checked again by launch.py)."""

    nodes: int
    gpus_per_node: int
    partition: str | None
    time_limit: str
    stop_before_limit_s: int
    template: str
    python: str
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()
    neox_dir: str | None = None
    master_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    # after a node failure with no spare, resume on fewer nodes (another world size: another sum order)
    shrink_on_node_failure: bool = False
    # one GPU's peak dense TFLOPS at the training precision: NeoX's peak_theoretical_tflops, for its MFU
    gpu_peak_tflops: float | None = None
    # one GPU's memory (GiB): the plan's recompute choice compares its estimate to it (neox/memory.py)
    gpu_memory_gib: float | None = None
    # what the training image has (neox/image.py: flash_attn, fused_kernels); None: not stated
    image_provides: tuple[str, ...] | None = None
    # where and on whose budget every job of the profile runs (most production clusters require an account)
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None

    def scheduling(self) -> dict[str, str]:
        """The sbatch options every job of the profile carries (data, training, export): the partition
        and the ``SCHEDULING_KEYS`` that are set."""
        keys = ("partition", *SCHEDULING_KEYS)
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


@dataclass(frozen=True)
class RunPaths:
    """Where one run lives on the cluster's file system (all absolute)."""

    run_name: str
    checkpoint_dir: str  # NeoX save == load
    run_dir: str  # rendered configs, job logs, NeoX's own log_dir
    log_dir: str  # Slurm job logs: <log_dir>/<job_name>-<job_id>.out
    neox_log_dir: str  # NeoX log_dir (per-host stdout/stderr copies)
    config_dir: str  # rendered configs, one file per content hash

    def config_file(self, digest: str) -> str:
        """Rendered config path for a content hash: versioned, so a changed config never overwrites."""
        return f"{self.config_dir}/neox-{digest[:16]}.json"


@dataclass(frozen=True)
class Profile:
    """A pipeline profile (``include/configs/profiles/<name>.yaml``): cluster, storage, data, NeoX overrides.

    ``raw`` keeps the whole parsed file (after ``${VAR}`` expansion) for sections other modules own.
    """

    name: str
    source: str
    cluster: ClusterSpec
    fsx_root: str
    fsx_visible_to_airflow: bool
    data_dir: str
    checkpoints_dir: str
    runs_dir: str
    code_dir: str
    dataset: str
    tokenizer_source: str
    tokenizer_sha256: str | None  # what the tokenizer file must be: part of a dataset's identity
    tokenizer_path: str
    s3_bucket: str
    s3_prefix: str
    default_size: str
    neox_overrides: dict[str, Any]
    raw: dict[str, Any]
    shard_url_template: str | None = None  # data.url_template: where the shards come from (None: allenai/c4)
    data_parallelism: int = 8  # data.parallelism: array tasks of a data step running at once
    export_keep_last: int = 0  # export.keep_last: prune FSx to the newest N exported checkpoints (0: never)
    data_repository: dict[str, Any] | None = None  # fsx.data_repository (typed by _ProfileReader)
    recompute: str = "auto"  # neox.recompute: auto (by memory), on, off (neox/memory.py)

    def data_path(self, dataset_id: str) -> str:
        """NeoX ``data_path`` of one dataset (the prefix, without ``.bin``/``.idx``):
        ``<data_dir>/<dataset folder>/<dataset_id>/<dataset name>``. A dataset is named by what it is built
        from, so it is never rebuilt in place, and NeoX's index-map caches beside it never go stale."""
        folder, _, name = self.dataset.rpartition("/")
        return "/".join(p for p in (self.data_dir, folder, dataset_id, name) if p)

    def run_paths(self, run_name: str) -> RunPaths:
        check_run_name(run_name, "run name")  # the one run-name rule (slurm/validate.py): it names folders
        run_dir = f"{self.runs_dir}/{run_name}"
        return RunPaths(
            run_name=run_name,
            checkpoint_dir=f"{self.checkpoints_dir}/{run_name}",
            run_dir=run_dir,
            log_dir=f"{run_dir}/logs",
            neox_log_dir=f"{run_dir}/neox_logs",
            config_dir=f"{run_dir}/configs",
        )


def _yaml_lines(
    node: yaml.Node, path: tuple[Any, ...], index: dict[tuple[Any, ...], int], problems: list
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            where = path + (key,)
            if key in seen:
                problems.append((key_node.start_mark.line + 1, f"{'.'.join(map(str, where))}: duplicate key"))
            seen.add(key)
            index[where] = key_node.start_mark.line + 1
            _yaml_lines(value_node, where, index, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index[path + (i,)] = item.start_mark.line + 1
            _yaml_lines(item, path + (i,), index, problems)


def _expand_env(value: Any, env: Mapping[str, str], missing: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if env.get(name):
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return match.group(0)

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, missing) for v in value]
    return value


def _resolve_local(path: str) -> str:
    """Relative paths in a profile are relative to the repository (the embedded cluster shares the host)."""
    # normpath, not resolve(): a venv's bin/python is a symlink that must stay a venv path
    return path if path.startswith("/") else os.path.normpath(REPO_ROOT / path)


def load_profile(
    name_or_path: str | os.PathLike[str],
    config_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Profile:
    """Load a profile by name (``local``, ``aws``) or path; raise :class:`ProfileError` naming file and line.

    String values may use ``${VAR}`` or ``${VAR:-default}`` (from ``env``, default ``os.environ``).
    """
    text_path = Path(name_or_path)
    if text_path.suffix not in (".yaml", ".yml"):
        if not _NAME.fullmatch(str(name_or_path)):
            raise ValueError(f"profile name {str(name_or_path)!r} must match {_NAME.pattern}")
        base = Path(config_dir) if config_dir is not None else CONFIG_DIR
        text_path = base / "profiles" / f"{name_or_path}.yaml"
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(text_path, [(None, f"cannot read: {exc}")]) from None
    return parse_profile(text, str(text_path), env=env)


def parse_profile(text: str, source: str = "<profile>", env: Mapping[str, str] | None = None) -> Profile:
    """Parse profile YAML text (see :func:`load_profile`)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(source, [(line, f"YAML syntax: {reason}")]) from None
    index: dict[tuple[Any, ...], int] = {}
    problems: list[tuple[int | None, str]] = []
    if node is not None:
        _yaml_lines(node, (), index, problems)
    if not isinstance(data, dict):
        raise ProfileError(source, [(1, "top level must be a mapping")])
    missing: list[str] = []
    data = _expand_env(data, os.environ if env is None else env, missing)
    for name in sorted(set(missing)):
        problems.append((None, f"environment variable {name} is not set and has no ${{{name}:-default}}"))
    reader = _ProfileReader(data, index, problems)
    profile = reader.build(source)
    if problems:
        raise ProfileError(source, problems)
    assert profile is not None
    return profile


def _positive_number(v: float) -> str | None:
    return None if v > 0 else "must be a positive number"


def _image_features(v: list) -> str | None:
    unknown = [f for f in v if f not in IMAGE_FEATURES]
    return f"unknown {unknown!r}: may list {', '.join(IMAGE_FEATURES)}" if unknown else None


def _recompute_mode(v: str) -> str | None:
    return None if v in RECOMPUTE_MODES else f"must be one of {', '.join(RECOMPUTE_MODES)}, got {v!r}"


class _ProfileReader:
    """Typed access to the parsed profile that records problems with their line instead of raising."""

    def __init__(self, data: dict[str, Any], index: dict[tuple[Any, ...], int], problems: list):
        self.data, self.index, self.problems = data, index, problems

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.index:
                return self.index[path]
            path = path[:-1]
        return None

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append((self.line(path), f"{'.'.join(map(str, path))}: {message}"))

    def get(
        self, path: tuple[Any, ...], kind: type | tuple[type, ...], default: Any = ..., check=None
    ) -> Any:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    self.problem(path, "is required")
                    return None
                return default
            node = node[part]
        if node is None and default is not ... and default is None:
            return None
        ok = isinstance(node, kind) and not (isinstance(node, bool) and kind in (int, (int,)))
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problem(path, f"must be {names}, got {node!r}")
            return None
        if check is not None:
            reason = check(node)
            if reason:
                self.problem(path, reason)
                return None
        return node

    def check_slices(self) -> None:
        """The optional ``slices`` section (first-slice pace hints, planning slack), checked now so that a
        bad value is named at load time, not when the first slice is planned."""
        from neoxflow.neox.slices import profile_slack, profile_times

        for check in (profile_times, profile_slack):
            try:
                check(self.data)
            except ValueError as err:
                self.problems.append((self.line(("slices",)), str(err).removeprefix("profile ")))

    def build(self, source: str) -> Profile | None:
        def positive(v: int) -> str | None:
            return None if v >= 1 else "must be a positive integer"

        def sha256_hex(v: str) -> str | None:
            return None if re.fullmatch(r"[0-9a-f]{64}", v) else "must be 64 lowercase hex digits (a sha256)"

        def sbatch_value(option: str):
            def check(v: str) -> str | None:
                try:
                    check_sbatch_option(option, v)
                except UnsafeValueError as err:
                    return f"{v!r} is not a valid sbatch --{option} value ({err})"
                return None

            return check

        def url_template_check(v: str) -> str | None:
            if not v:  # an unset ${VAR:-}: the public allenai/c4 URLs
                return None
            try:
                validate_url_template(v)
            except ShardSelectionError as err:
                return str(err).partition(": ")[2] or str(err)
            return None

        def data_parallelism(v: int) -> str | None:
            return None if 1 <= v <= 10_000 else "must be 1..10000 (array tasks running at once)"

        def not_negative(v: int) -> str | None:
            return None if v >= 0 else "must be 0 (never prune) or more"

        def relative(v: str) -> str | None:
            parts = v.split("/")
            return (
                None
                if v and not v.startswith("/") and ".." not in parts
                else "must be a relative path below fsx.root"
            )

        name = self.get(("name",), str)
        cluster_env = self.get(("cluster", "env"), dict, default={}) or {}
        mounts = self.get(("cluster", "container_mounts"), list, default=[]) or []
        overrides = self.get(("neox", "overrides"), dict, default={}) or {}
        for key in ("save", "load"):
            if key in overrides:
                self.problem(
                    ("neox", "overrides", key), "is set per run from fsx.checkpoints_dir; do not set it here"
                )
        size = self.get(("neox", "size"), str, default="14M")
        if size not in PYTHIA_SIZES:
            self.problem(("neox", "size"), f"must be one of {', '.join(PYTHIA_SIZES)}")
        for key, value in cluster_env.items():
            if not isinstance(value, str | int) or isinstance(value, bool):
                self.problem(("cluster", "env", key), f"must be a string or integer, got {value!r}")
        for i, mount in enumerate(mounts):
            if not isinstance(mount, str):
                self.problem(("cluster", "container_mounts", i), f"must be a string, got {mount!r}")

        root = self.get(("fsx", "root"), str)
        sub = {
            key: self.get(("fsx", key), str, default=default, check=relative)
            for key, default in (
                ("data_dir", "data"),
                ("checkpoints_dir", "checkpoints"),
                ("runs_dir", "runs"),
                ("code_dir", "code"),
            )
        }
        tokenizer_source = self.get(("tokenizer", "source"), str)
        tokenizer_path = self.get(
            ("tokenizer", "path"), str, default="tokenizers/20B_tokenizer.json", check=relative
        )
        cluster = dict(
            nodes=self.get(("cluster", "nodes"), int, check=positive),
            gpus_per_node=self.get(("cluster", "gpus_per_node"), int, check=positive),
            partition=self.get(("cluster", "partition"), str, default=None, check=sbatch_value("partition")),
            **{
                key: self.get(("cluster", key), str, default=None, check=sbatch_value(key))
                for key in SCHEDULING_KEYS
            },
            time_limit=self.get(("cluster", "time_limit"), str),
            stop_before_limit_s=self.get(
                ("cluster", "stop_before_limit_s"), int, default=300, check=positive
            ),
            template=self.get(("cluster", "template"), str, default="train.sbatch"),
            python=self.get(("cluster", "python"), str, default="python"),
            container_image=self.get(("cluster", "container_image"), str, default=None),
            neox_dir=self.get(("cluster", "neox_dir"), str, default=None),
            master_port=self.get(("cluster", "master_port"), int, default=None, check=positive),
        )
        cluster["shrink_on_node_failure"] = self.get(
            ("cluster", "shrink_on_node_failure"), bool, default=False
        )
        cluster["gpu_peak_tflops"] = self.get(
            ("cluster", "gpu_peak_tflops"), (int, float), default=None, check=_positive_number
        )
        cluster["gpu_memory_gib"] = self.get(
            ("cluster", "gpu_memory_gib"), (int, float), default=None, check=_positive_number
        )
        provides = self.get(("cluster", "image_provides"), list, default=None, check=_image_features)
        cluster["image_provides"] = None if provides is None else tuple(provides)
        # YAML reads a bare on/off as a boolean: take those as the words they were written as
        recompute = self.get(("neox", "recompute"), (str, bool), default="auto")
        recompute = (
            {True: "on", False: "off"}.get(recompute, recompute) if isinstance(recompute, bool) else recompute
        )
        if recompute is not None and _recompute_mode(recompute):
            self.problem(("neox", "recompute"), _recompute_mode(recompute))
        dataset = self.get(("data", "dataset"), str, check=relative)
        url_template = self.get(("data", "url_template"), str, default=None, check=url_template_check)
        parallelism = self.get(("data", "parallelism"), int, default=8, check=data_parallelism)
        keep_last = self.get(("export", "keep_last"), int, default=0, check=not_negative)
        data_repository = self.data_repository()
        tokenizer_sha256 = self.get(("tokenizer", "sha256"), str, default=None, check=sha256_hex)
        bucket = self.get(("s3", "bucket"), str)
        prefix = self.get(("s3", "prefix"), str, default="neoxflow")
        visible = self.get(("fsx", "visible_to_airflow"), bool, default=False)
        self.check_slices()
        if self.problems:
            return None
        root = _resolve_local(root)
        python = cluster["python"]
        if "/" in python:
            cluster["python"] = _resolve_local(python)
        if not re.match(r"^[a-z][a-z0-9+.-]*://", tokenizer_source):
            tokenizer_source = _resolve_local(tokenizer_source)
        return Profile(
            name=name,
            source=source,
            cluster=ClusterSpec(
                **cluster,
                container_mounts=tuple(mounts),
                env={str(k): str(v) for k, v in cluster_env.items()},
            ),
            fsx_root=root,
            fsx_visible_to_airflow=visible,
            data_dir=f"{root}/{sub['data_dir']}",
            checkpoints_dir=f"{root}/{sub['checkpoints_dir']}",
            runs_dir=f"{root}/{sub['runs_dir']}",
            code_dir=f"{root}/{sub['code_dir']}",
            dataset=dataset,
            tokenizer_source=tokenizer_source,
            tokenizer_sha256=tokenizer_sha256,
            tokenizer_path=f"{root}/{tokenizer_path}",
            s3_bucket=bucket,
            s3_prefix=prefix,
            default_size=size,
            neox_overrides=overrides,
            raw=self.data,
            shard_url_template=url_template or None,
            data_parallelism=parallelism,
            export_keep_last=keep_last,
            data_repository=data_repository,
            recompute=recompute or "auto",
        )

    def data_repository(self) -> dict[str, Any] | None:
        """``fsx.data_repository`` (an FSx data repository association of the raw shard folder), its keys
        typed now; None when absent or its ``file_system_id`` is empty (copy mode). The id and paths are
        checked against the FSx API's rules when the plan builds the import request."""
        section = self.get(("fsx", "data_repository"), dict, default=None)
        if not section:
            return None
        known = {"file_system_id", "aws_conn_id", "region_name", "poll_interval"}
        for key in sorted(set(section) - known, key=str):
            self.problem(("fsx", "data_repository", key), f"is not a key of data_repository {sorted(known)}")
        path = ("fsx", "data_repository")
        fs_id = self.get((*path, "file_system_id"), str, default=None)
        conn = self.get((*path, "aws_conn_id"), str, default="aws_default")
        region = self.get((*path, "region_name"), str, default=None)
        poll = self.get((*path, "poll_interval"), (int, float), default=30, check=_positive_number)
        if not fs_id:
            return None
        return {
            "file_system_id": fs_id,
            "aws_conn_id": conn or "aws_default",
            "region_name": region or None,
            "poll_interval": poll,
        }


# --------------------------------------------------------------------------------------------------
# one run's config


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
    run_overrides = _normalise_keys(overrides or {})
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
    explicit = _normalise_keys(profile.neox_overrides).keys() | run_overrides.keys()
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


# --------------------------------------------------------------------------------------------------
# NeoX's key list

#: Every top-level key GPT-NeoX accepts: the names (only) of the dataclass fields of the ``NeoXArgs*``
#: classes in megatron/neox_arguments/neox_args.py and deepspeed_args.py at GPT-NeoX commit ea7aefd8
#: (read with ast). Regenerate when the NeoX image moves to another commit.
KNOWN_KEYS_NEOX_COMMIT = "ea7aefd8"
KNOWN_KEYS: frozenset[str] = frozenset(
    """
account activation activation_checkpointing adlr_autoresume adlr_autoresume_interval allow_chopped amp
apply_query_key_layer_scaling attention_config attention_dropout attention_softmax_in_fp32 autotuning
autotuning_run base_shapes_file batch_size bf16 bias_dropout_fusion bias_gelu_fusion char_level_ppl
checkpoint checkpoint_activations checkpoint_factor checkpoint_in_cpu checkpoint_num_layers
checkpoint_scale checkpoint_validation_with_forward_pass clip_grad comet_experiment
comet_experiment_name comet_others comet_project comet_tags comet_workspace comment comms_logger
communication_data_type compression_training config_files contiguous_checkpointing coord_check
csv_monitor curriculum_learning curriculum_seqlen data_efficiency data_impl data_path data_types
dataset_impl deepscale deepscale_config deepspeed deepspeed_activation_checkpointing
deepspeed_extra_args deepspeed_mpi deepspeed_slurm dim_att distributed_backend do_test do_train
do_valid dpo_beta dpo_fp32 dpo_reference_free dump_state dynamic_loss_scale elasticity eod_mask_loss
eval_interval eval_iters eval_results_prefix eval_tasks exclude exit_interval expansion_factor
extra_save_iters ffn_dim finetune flops_profiler force_multi fp16 fp16_lm_cross_entropy fp32_allreduce
fp32_reinforce fused_kernels_build_path git_hash global_num_gpus gmlp_attn_dim gpt_j_residual
gpt_j_tied gradient_accumulation_steps gradient_clipping gradient_noise_scale_cpu_offload
gradient_noise_scale_n_batches gradient_predivide_factor head_size hidden_dropout hidden_size hostfile
hysteresis include init_method init_method_std intermediate_size is_pipe_parallel iteration
keep_last_n_checkpoints kl_div_beta kl_impl kto_beta kto_desirable_weight kto_fp32
kto_undesirable_weight launcher layernorm_epsilon layernorm_fusion lazy_mpu_init load local_rank
log_dir log_grad_norm log_grad_pct_zeros log_gradient_noise_scale log_interval log_optimizer_states
log_param_norm loss_scale loss_scale_window lr lr_decay_fraction lr_decay_iters lr_decay_style
make_vocab_size_divisible_by mamba_causal_conv_fusion mamba_inner_func_fusion
mamba_selective_fp32_params mamba_selective_scan_fusion mamba_use_bias_in_conv
mamba_use_bias_in_linears master_addr master_port max_position_embeddings maximum_tokens
memory_profiling memory_profiling_path merge_file min_lr min_scale mlp_multiple_of mmap_warmup
model_parallel_size moe_expert_interval moe_jitter_eps moe_lbl_in_fp32 moe_num_experts moe_router_type
moe_top_k mup_attn_temp mup_embedding_mult mup_init_scale mup_output_temp mup_rp_embedding_mult
mup_width_scale neg_test_data_paths neg_test_label_data_paths neg_train_data_paths
neg_train_label_data_paths neg_valid_data_paths neg_valid_label_data_paths no_load_optim no_load_rng
no_save_optim no_save_rng no_ssh_check no_weight_tying norm num_attention_heads num_gpus num_kv_heads
num_layers num_nodes num_samples num_unique_layers num_workers online_dataserver_ips
online_dataserver_ports onnx_safe opt_pos_emb_offset optimizer optimizer_type output_layer_init_method
output_layer_parallelism override_lr_scheduler pack_impl padded_vocab_size param_sharing_style
partition_activations peak_theoretical_tflops pipe_parallel_size pipe_partition_method pos_emb
pos_test_data_paths pos_test_label_data_paths pos_train_data_paths pos_train_label_data_paths
pos_valid_data_paths pos_valid_label_data_paths precision precompute_model_name prescale_gradients
profile profile_backward profile_step_start profile_step_stop prompt_end rank recompute
reinforce_leave_one_out return_logits rms_norm_epsilon rmsnorm_fusion rope_fusion rotary_emb_base
rotary_pct rotary_save_freqs_buffer rpe_max_distance rpe_num_buckets s3_chunk_size s3_path
sample_input_file sample_output_file save save_base_shapes scaled_masked_softmax_fusion
scaled_upper_triang_masked_softmax_fusion scalenorm_epsilon scheduler seed seq_length sequence_parallel
serve_model_weights short_seq_prob sliding_window_width soft_prompt_tuning sparse_attention
sparse_gradients sparsity_config split steps_per_print synchronize_each_layer te_columnparallel
te_fp8_amax_compute_algo te_fp8_amax_history_len te_fp8_format te_fp8_margin te_fp8_mha te_fp8_wgrad
te_layernorm_mlp te_mha te_rowparallel temperature tensorboard tensorboard_dir test_data_paths
test_data_weights test_label_data_paths test_reward_data_paths text_gen_type tokenizer_type top_k top_p
train_batch_size train_data_paths train_data_weights train_epochs train_impl train_iters
train_label_data_paths train_micro_batch_size_per_gpu train_reward_data_paths use_bias_in_attn_linear
use_bias_in_mlp use_bias_in_norms use_bnb_optimizer use_checkpoint_lr_scheduler use_comet
use_cpu_initialization use_flashattn_swiglu use_mup use_qk_layernorm use_shared_fs use_wandb
user_script valid_data_paths valid_data_weights valid_label_data_paths valid_reward_data_paths
vocab_file wall_clock_breakdown wandb wandb_group wandb_host wandb_init_all_ranks wandb_project
wandb_run_name wandb_team warmup weight_by_num_documents weight_decay weight_server_port
weighted_sampler_alpha world_size z_loss zero_allgather_bucket_size zero_contiguous_gradients
zero_optimization zero_reduce_bucket_size zero_reduce_scatter zero_stage
""".split()
)
