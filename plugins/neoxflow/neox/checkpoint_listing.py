"""Asking the cluster which checkpoints a save folder holds: the listing command, its answer, and the
dict forms of what is judged from it.

Every caller that lists a save folder (the training operator, the checkpoint sensor and trigger, the
training watch, the resume and export tasks) runs ONE remote command built by :func:`listing_command`:
``python3 ckpt_listing.py SAVE --min-iteration=K`` (include/cluster/ckpt_listing.py, shipped to the
cluster), and reads its JSON answer with :func:`parse_listing`. Which of the listed checkpoints are
complete is the rule of :mod:`neoxflow.neox.checkpoints`. The expectation and checkpoints cross trigger
serialisation and XCom as plain dicts, converted here.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
from collections.abc import Mapping
from typing import Any, Protocol

from neoxflow.neox.checkpoints import Checkpoint, Expectation, complete_checkpoints
from neoxflow.slurm.validate import UnsafeValueError, check_remote_path

__all__ = [
    "LISTING_SCRIPT",
    "ListingError",
    "checkpoint_to_dict",
    "expectation_from_dict",
    "expectation_to_dict",
    "listing_command",
    "listing_script_path",
    "new_complete_checkpoints",
    "parse_listing",
    "read_listing",
]

#: The lister's file name in the shipped include/cluster folder.
LISTING_SCRIPT = "ckpt_listing.py"


class ListingError(RuntimeError):
    """ckpt_listing.py failed or printed something that is not its JSON listing."""


class CommandRunner(Protocol):
    """What :func:`read_listing` needs of a hook: ``SlurmSSHHook.run``."""

    def run(self, command: str, *, check: bool = True) -> tuple[int, bytes, bytes]: ...


def listing_script_path(code_dir: str) -> str:
    """Where the lister is on the cluster, given the folder include/cluster was shipped to."""
    return posixpath.join(code_dir, LISTING_SCRIPT)


def listing_command(python: str, script: str, save_dir: str, min_iteration: int = 0) -> str:
    """The remote command line that prints the JSON listing of ``save_dir`` (validated, quoted)."""
    if isinstance(min_iteration, bool) or not isinstance(min_iteration, int) or min_iteration < 0:
        raise UnsafeValueError("min_iteration", min_iteration, "must be an integer >= 0")
    args = [
        check_remote_path(python, "listing_python"),
        check_remote_path(script, "listing_script"),
        check_remote_path(save_dir, "save_dir"),
        f"--min-iteration={min_iteration}",
    ]
    for name, value in zip(("listing_python", "listing_script", "save_dir"), args, strict=False):
        if value.startswith("-"):
            raise UnsafeValueError(name, value, "must not start with '-'")
    return " ".join(shlex.quote(a) for a in args)


def parse_listing(status: int, stdout: bytes, stderr: bytes = b"") -> dict:
    """The listing dict from the command's answer; `ListingError` naming what went wrong otherwise."""
    text = stdout.decode("utf-8", "replace").strip()
    if status != 0:
        err = stderr.decode("utf-8", "replace").strip()[-500:]
        raise ListingError(f"ckpt_listing.py exited {status}: {err or text[-500:] or 'no output'}")
    try:
        listing = json.loads(text.splitlines()[-1] if text else "")
    except (json.JSONDecodeError, IndexError) as err:
        raise ListingError(f"ckpt_listing.py printed no JSON listing ({err}): {text[:300]!r}") from err
    if not isinstance(listing, dict):
        raise ListingError(f"ckpt_listing.py printed {type(listing).__name__}, not a JSON object")
    return listing


def read_listing(
    hook: CommandRunner, python: str, script: str, save_dir: str, min_iteration: int = 0
) -> dict:
    """The listing of ``save_dir``, from one command over a (synchronous) hook; `ListingError` when the
    lister failed. The trigger's asynchronous twin is ``neoxflow.triggers.checkpoint.fetch_listing``."""
    status, out, err = hook.run(listing_command(python, script, save_dir, min_iteration), check=False)
    return parse_listing(status, out, err)


def expectation_to_dict(expect: Expectation) -> dict[str, Any]:
    return dataclasses.asdict(expect)


def expectation_from_dict(data: Mapping[str, Any] | None) -> Expectation:
    """An `Expectation` from its dict (None = the stand-in trainer's layout); unknown keys are named."""
    if data is None:
        return Expectation.standin()
    if isinstance(data, Expectation):
        return data
    known = {f.name for f in dataclasses.fields(Expectation)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"expectation: unknown key(s) {unknown}; known: {sorted(known)}")
    return Expectation(**dict(data))


def checkpoint_to_dict(ckpt: Checkpoint) -> dict[str, Any]:
    return {"iteration": ckpt.iteration, "tag": ckpt.tag, "path": ckpt.path, "size_bytes": ckpt.size_bytes}


def new_complete_checkpoints(
    listing: Mapping, expect: Expectation, after_iteration: int | None
) -> list[Checkpoint]:
    """Complete checkpoints newer than ``after_iteration`` (None = all), oldest first."""
    floor = -1 if after_iteration is None else after_iteration
    return [c for c in complete_checkpoints(listing, expect) if c.iteration > floor]
