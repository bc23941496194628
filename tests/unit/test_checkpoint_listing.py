"""Listing a save folder on the cluster (plugins/neoxflow/neox/checkpoint_listing.py): the one command
every caller runs, and the reading of its answer."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from neoxflow.neox.checkpoint_listing import (
    ListingError,
    listing_command,
    listing_script_path,
    parse_listing,
    read_listing,
)
from neoxflow.paths import CLUSTER_CODE
from neoxflow.slurm.validate import UnsafeValueError


def test_listing_command_quotes_and_refuses_unsafe_values():
    cmd = listing_command("python3", "/fsx/code/ckpt_listing.py", "/fsx/checkpoints/run 1"[:-2], 41)
    assert shlex.split(cmd) == [
        "python3",
        "/fsx/code/ckpt_listing.py",
        "/fsx/checkpoints/run",
        "--min-iteration=41",
    ]
    for bad in ("/fsx/$(rm -rf x)", "/fsx/a;b", "-rf", "/fsx/../etc"):
        with pytest.raises(UnsafeValueError, match="save_dir"):
            listing_command("python3", "/fsx/code/ckpt_listing.py", bad)
    with pytest.raises(UnsafeValueError, match="min_iteration"):
        listing_command("python3", "/x.py", "/fsx/c", -1)


def test_parse_listing_names_the_failure():
    with pytest.raises(ListingError, match="exited 2: python3: can.t open file"):
        parse_listing(2, b"", b"python3: can't open file: No such file")
    with pytest.raises(ListingError, match="no JSON listing"):
        parse_listing(0, b"Traceback ...\n", b"")
    assert parse_listing(0, b'warning\n{"format": 1, "tags": {}}\n')["format"] == 1


class LocalShell:
    """A hook that runs the command here, as the login node would."""

    def __init__(self):
        self.commands: list[tuple[str, bool]] = []

    def run(self, command: str, *, check: bool = True) -> tuple[int, bytes, bytes]:
        self.commands.append((command, check))
        done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr


def test_read_listing_runs_the_shipped_lister_once_and_parses_it(tmp_path):
    save = tmp_path / "save"
    for tag in ("global_step10", "global_step20"):
        (save / tag / "configs").mkdir(parents=True)
    (save / "latest").write_text("global_step20\n")
    hook = LocalShell()
    listing = read_listing(hook, "python3", listing_script_path(str(CLUSTER_CODE)), str(save)[:0] + str(save))
    assert listing["latest"] == "global_step20" and sorted(listing["tags"]) == [
        "global_step10",
        "global_step20",
    ]
    ((command, check),) = hook.commands
    assert check is False and shlex.split(command)[1] == str(CLUSTER_CODE / "ckpt_listing.py")
    with pytest.raises(ListingError, match="exited"):
        read_listing(LocalShell(), "python3", str(tmp_path / "no_such_lister.py"), str(save))
