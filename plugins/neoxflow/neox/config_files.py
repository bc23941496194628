"""GPT-NeoX config files: strict JSON in, strict JSON out that PyYAML reads the same way, and its hash.

Why this exists: NeoX reads every config file with YAML 1.1, so ``json.dumps``'s ``1e-08`` becomes a
*string* there, and non-strict JSON (comments, trailing commas, duplicate keys) fails or silently
changes a value only once the job runs. The upstream Pythia size files are read strictly
(:func:`load_size_config`), layers are merged the NeoX way (:func:`merge_config`), and the merged config
is written so that JSON and YAML agree (:func:`render_config`, checked by :func:`yaml_json_disagreement`);
:func:`config_hash` of that text versions it on FSx and in S3.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from neoxflow.paths import CONFIG_DIR

#: The ten Pythia sizes, smallest first (file names under include/configs/pythia/).
PYTHIA_SIZES: tuple[str, ...] = ("14M", "31M", "70M", "160M", "410M", "1B", "1.4B", "2.8B", "6.9B", "12B")


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


def normalise_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``base`` updated by ``overrides`` (neither is modified).

    Top-level keys are normalised the NeoX way (``train-iters`` -> ``train_iters``) so that an override
    replaces its base key instead of becoming a duplicate. Nested dicts (``optimizer.params``,
    ``fp16``...) merge recursively; lists, scalars and ``None`` replace (``None`` means JSON null, which
    NeoX reads as "use the default").
    """
    merged = copy.deepcopy(normalise_keys(base))
    for key, value in normalise_keys(overrides or {}).items():
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
            items.append(f"{pad}{_render_string(key)}: {_render(item, level + 1, join_key(where, key))}")
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


def join_key(where: str, key: str) -> str:
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
                return f"{join_key(where, str(key))}: present in only one reading"
            diff = _first_difference(a[key], b[key], join_key(where, str(key)))
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
