#!/usr/bin/env python3
"""Print a JSON listing of a NeoX save folder, so the watcher judges checkpoints in one SSH round-trip.

Runs ON the cluster (standard library only; no neoxflow, no airflow). The Airflow side applies the
completeness rule (plugins/neoxflow/neox/checkpoints.py) to this listing; this script only reports
what is there and judges nothing, so the rule lives in one place.

    python3 ckpt_listing.py /fsx/checkpoints/run42 [--min-iteration 1000]

Output (format 1)::

    {"format": 1, "save_dir": "...", "exists": true, "scanned_at": 1764280000.0,
     "latest": "global_step80" | null, "latest_mtime": 1764280000.0 | null,
     "tags": {"global_step80": {"mtime": ..., "dirs": ["configs"],
                                "files": {"configs/tiny.json": [2173, mtime],
                                          "mp_rank_00_model_states.pt": [17969, mtime]}}}}

Only ``global_stepN`` folders are listed (NeoX's tag scheme); ``latest`` is its stripped content (at
most 4 KiB read; it is written before the other ranks finish, so it is reported, never trusted).
A file that vanishes during the scan (pruning, a rank rewriting it) is skipped, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

FORMAT = 1
TAG_RE = re.compile(r"^global_step(\d+)$")
LATEST_MAX_BYTES = 4096


def _scan_tag(tag_dir: str) -> dict:
    files: dict[str, list] = {}
    dirs: list[str] = []
    for root, subdirs, names in os.walk(tag_dir):
        subdirs.sort()
        rel_root = os.path.relpath(root, tag_dir)
        for d in subdirs:
            dirs.append(d if rel_root == "." else f"{rel_root}/{d}")
        for name in sorted(names):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            files[rel] = [st.st_size, st.st_mtime]
    return {"mtime": os.stat(tag_dir).st_mtime, "dirs": dirs, "files": files}


def build_listing(save_dir: str, min_iteration: int = 0) -> dict:
    """The listing of ``save_dir`` as a dict (see the module docstring for the shape)."""
    listing: dict = {
        "format": FORMAT,
        "save_dir": save_dir,
        "exists": os.path.isdir(save_dir),
        "scanned_at": time.time(),
        "latest": None,
        "latest_mtime": None,
        "tags": {},
    }
    if not listing["exists"]:
        return listing
    latest_path = os.path.join(save_dir, "latest")
    try:
        with open(latest_path, "rb") as fh:
            listing["latest"] = fh.read(LATEST_MAX_BYTES).decode("utf-8", errors="replace").strip()
        listing["latest_mtime"] = os.stat(latest_path).st_mtime
    except (FileNotFoundError, IsADirectoryError):
        pass
    for name in sorted(os.listdir(save_dir)):
        m = TAG_RE.match(name)
        path = os.path.join(save_dir, name)
        if not m or int(m.group(1)) < min_iteration or not os.path.isdir(path):
            continue
        try:
            listing["tags"][name] = _scan_tag(path)
        except FileNotFoundError:
            continue  # pruned while we looked
    return listing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("save_dir", help="NeoX `save` folder (holds `latest` and global_stepN/)")
    parser.add_argument(
        "--min-iteration", type=int, default=0, help="skip tags below this iteration (keeps output small)"
    )
    args = parser.parse_args(argv)
    json.dump(build_listing(args.save_dir, args.min_iteration), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
