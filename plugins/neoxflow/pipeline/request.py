"""The trigger form of ``pythia_pretrain``: typed Params, and their validation into a RunRequest.

The form is user input. Every field is checked here, before any task touches the cluster, and every
error names the field it is about. Values that later reach a remote shell are held to strict patterns
(no shell metacharacters can pass), and are quoted again where they are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from neoxflow.data.shards import (
    DEFAULT_URL_TEMPLATE,
    MAX_SELECTION_CHARS,
    ShardSelection,
    ShardSelectionError,
    compact_indices,
)
from neoxflow.neox.config_files import PYTHIA_SIZES
from neoxflow.slurm.validate import RUN_NAME

PROFILES = ["local", "aws"]
#: The form's shape of a shard selection (data/shards.py checks the values): subset, all, a count, or a
#: list of indices and ranges of numbers from 0 to 1024 (a count of all C4 train shards is 1024).
_SHARD_NUMBER = r"(10[01][0-9]|102[0-4]|[0-9]{1,3})"
_SHARD_ITEM = rf"{_SHARD_NUMBER}(-{_SHARD_NUMBER})?"
SHARDS_PATTERN = rf"^(|subset|all|{_SHARD_ITEM}(,{_SHARD_ITEM})*)$"
#: What a blank field of the form means.
BLANK = "Blank: the run of record's value when the run exists, else the profile's."
#: The Pythia size list's first entry: no size chosen (the run of record's, else the profile's default).
#: the size list's first entry: a word, not "" (Airflow's form turns an empty field into null, which a
#: string-typed list then refuses, so the Trigger button stays disabled)
SIZE_DEFAULT = "default"
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() takes "²", which int() refuses
TIME_LIMIT = re.compile(r"([0-9]{1,3}-)?[0-9]{1,3}:[0-5][0-9]:[0-5][0-9]")


class RequestError(ValueError):
    """One or more trigger-form fields are invalid; ``problems`` maps field -> why."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {why}" for field, why in problems.items()))


@dataclass(frozen=True)
class RunRequest:
    profile: str
    model_size: str | None
    run_name: str
    nodes: int | None
    gpus_per_node: int | None
    shards: ShardSelection
    train_iters: int | None
    checkpoint_interval: int | None
    time_limit: str | None
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        """The parsed request as JSON (the run plan carries it): the shards in the form's compact syntax,
        so the plan stays small whatever the selection."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "shards"}
        values["shards"] = compact_indices(self.shards.train)
        values["shard_url_template"] = self.shards.url_template
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRequest:
        """The request :meth:`to_dict` wrote, already validated when it was parsed: not parsed again."""
        values = {name: data[name] for name in cls.__dataclass_fields__ if name != "shards"}
        shards = ShardSelection.parse(
            data["shards"], url_template=data.get("shard_url_template") or DEFAULT_URL_TEMPLATE
        )
        return cls(**values, shards=shards)

    def neox_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if self.train_iters is not None:
            overrides["train_iters"] = self.train_iters
        if self.checkpoint_interval is not None:
            overrides["checkpoint_factor"] = self.checkpoint_interval
        return overrides


def form_params() -> dict[str, Any]:
    """The ``params`` of the DAG: what the Airflow trigger form shows (typed, with help texts)."""
    from airflow.sdk import Param

    return {
        "profile": Param(
            "local",
            type="string",
            enum=PROFILES,
            title="Profile",
            description="local (the embedded test cluster) or aws: include/configs/profiles/<name>.yaml, the "
            "cluster, storage and paths. Default: local.",
        ),
        "model_size": Param(
            SIZE_DEFAULT,
            type="string",
            enum=[SIZE_DEFAULT, *PYTHIA_SIZES],
            values_display={SIZE_DEFAULT: "Default (the run's size, else the profile's)"},
            title="Pythia size",
            description="One of the Pythia sizes, 14M to 12B (GPT-NeoX's configs). The first entry, Default: "
            "the run of record's size when the run exists, else the profile's default size.",
        ),
        "run_name": Param(
            "pythia-demo",
            type="string",
            pattern=f"^{RUN_NAME.pattern}$",
            title="Run name",
            description="1 to 63 characters of a-z, 0-9 and -, starting with a letter or digit (no capitals, "
            "no spaces). Names the checkpoint folder and the run of record: the same name continues the "
            "same run, as it was first planned (a change to what defines the model is refused).",
        ),
        "nodes": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1024,
            title="Nodes",
            description="Slurm nodes per training job: a whole number from 1 to 1024. " + BLANK,
        ),
        "gpus_per_node": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=16,
            title="GPUs per node",
            description="GPUs (ranks) on each node: a whole number from 1 to 16. " + BLANK,
        ),
        "shards": Param(
            None,
            type=["null", "string"],
            pattern=SHARDS_PATTERN,
            maxLength=MAX_SELECTION_CHARS,
            title="C4 shards",
            description="Which of C4's 1024 train shards (numbered 0 to 1023): subset (the first 4), a "
            "count (16: the first 16), a list (0,5,7), a range (0-15), lists and ranges (0-3,8-11) or all; "
            "numbers up to 1024, no spaces. Blank: the run of record's shards if it exists, else subset.",
        ),
        "train_iters": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=10_000_000,
            title="Train iterations",
            description="NeoX train_iters, the run's target: a whole number from 1 to 10000000. " + BLANK,
        ),
        "checkpoint_interval": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=10_000_000,
            title="Checkpoint every N",
            description="Iterations between checkpoints (NeoX checkpoint_factor): a whole number from 1 to "
            "10000000, at most Train iterations. " + BLANK,
        ),
        "time_limit": Param(
            None,
            type=["null", "string"],
            pattern=f"^({TIME_LIMIT.pattern})?$",
            title="Time limit per slice",
            description="Slurm time limit of one training job (a slice): HH:MM:SS or D-HH:MM:SS, minutes and "
            "seconds 00 to 59, e.g. 04:00:00 or 1-12:00:00. " + BLANK,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="On: render every script and config and show them (the plan task's log and the "
            "Training view); submit nothing. Default: off.",
        ),
    }


def _given(conf: dict, name: str) -> Any:
    """The field's value, or None when it is blank (absent, None or ""). Only blank means "use the
    default": 0, False or "0" are values, and are checked like any other."""
    value = conf.get(name)
    return None if value is None or value == "" else value


def _optional_int(conf: dict, name: str, problems: dict, low: int, high: int) -> int | None:
    value = _given(conf, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not WHOLE_NUMBER.fullmatch(str(value)):
        problems[name] = f"must be a whole number, got {value!r}"
        return None
    number = int(value)
    if not low <= number <= high:
        problems[name] = f"must be between {low} and {high}, got {number}"
        return None
    return number


def parse_request(conf: dict[str, Any]) -> RunRequest:
    """Validate the form (the DAG run's params); raise :class:`RequestError` naming every bad field."""
    problems: dict[str, str] = {}
    profile = _given(conf, "profile")
    profile = "local" if profile is None else profile
    if profile not in PROFILES:
        problems["profile"] = f"must be one of {PROFILES}, got {profile!r}"
    size = _given(conf, "model_size")
    size = None if size == SIZE_DEFAULT else size
    if size is not None and size not in PYTHIA_SIZES:
        problems["model_size"] = f"must be one of {list(PYTHIA_SIZES)}, got {size!r}"
    run_name = _given(conf, "run_name")
    if not isinstance(run_name, str) or not RUN_NAME.fullmatch(run_name):
        problems["run_name"] = f"must be 1-63 of a-z 0-9 - starting with a letter or digit, got {run_name!r}"
    nodes = _optional_int(conf, "nodes", problems, 1, 1024)
    gpus = _optional_int(conf, "gpus_per_node", problems, 1, 16)
    train_iters = _optional_int(conf, "train_iters", problems, 1, 10_000_000)
    interval = _optional_int(conf, "checkpoint_interval", problems, 1, 10_000_000)
    time_limit = _given(conf, "time_limit")
    if time_limit is not None and (not isinstance(time_limit, str) or not TIME_LIMIT.fullmatch(time_limit)):
        problems["time_limit"] = f"must look like HH:MM:SS or D-HH:MM:SS, got {time_limit!r}"
    elif time_limit is not None:
        from neoxflow.neox.launch import parse_time_limit  # the launch's own parser: one rule for both

        try:
            parse_time_limit(time_limit)
        except ValueError as err:
            problems["time_limit"] = str(err)
    try:
        selected = _given(conf, "shards")
        shards = ShardSelection.parse(
            "subset" if selected is None else selected, url_template=_given(conf, "shard_url_template")
        )
    except ShardSelectionError as err:
        field, _, why = str(err).partition(": ")
        problems[field if field in ("shards", "url_template") else "shards"] = why or str(err)
        shards = None
    dry_run = conf.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems["dry_run"] = f"must be true or false, got {dry_run!r}"
    if train_iters is not None and interval is not None and interval > train_iters:
        problems["checkpoint_interval"] = f"{interval} is more than train_iters {train_iters}: no checkpoint"
    if problems:
        raise RequestError(problems)
    return RunRequest(
        profile, size, run_name, nodes, gpus, shards, train_iters, interval, time_limit, dry_run
    )
