"""Read a profile file (``include/configs/profiles/<name>.yaml``) into a :class:`Profile`.

Every problem is collected with its file, line and key before anything is refused, so one error message
lists all of them; ``${VAR}`` / ``${VAR:-default}`` references are expanded first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from neoxflow.data.shards import ShardSelectionError, validate_url_template
from neoxflow.neox.config_files import PYTHIA_SIZES
from neoxflow.neox.image import IMAGE_FEATURES
from neoxflow.neox.memory import RECOMPUTE_MODES
from neoxflow.neox.profile import NAME_PATTERN, SCHEDULING_KEYS, ClusterSpec, Profile
from neoxflow.paths import CONFIG_DIR, REPO_ROOT
from neoxflow.slurm.validate import UnsafeValueError, check_sbatch_option

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ProfileError(ValueError):
    """A profile that cannot be used: every problem with file, line (when known), key and why."""

    def __init__(self, path: str | os.PathLike[str], problems: list[tuple[int | None, str]]):
        self.path = str(path)
        self.problems = list(problems)
        lines = [
            f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}" for line, msg in self.problems
        ]
        super().__init__("\n".join(lines))


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
        if not NAME_PATTERN.fullmatch(str(name_or_path)):
            raise ValueError(f"profile name {str(name_or_path)!r} must match {NAME_PATTERN.pattern}")
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
