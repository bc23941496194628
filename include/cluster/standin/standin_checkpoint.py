"""NeoX-layout checkpoints for the stand-in trainer, committed by an atomic ``latest``.

Layout (what the watcher, sensor and export already expect from NeoX, see docs/reference/neox.md)::

    save/global_stepN/mp_rank_00_model_states.pt   model, optimizer, lr_scheduler, rng, iteration, data
    save/global_stepN/configs/<config name>.json    the run's config, written after the model states
    save/latest                                     the text ``global_stepN``

Why stricter than NeoX: NeoX writes files in place and ``latest`` before every rank has finished, so a
killed job can leave ``latest`` naming a partial checkpoint. Here every file is fsynced, then the folder,
and only then is ``latest`` replaced through ``latest.tmp`` + rename (+ fsync of ``save/``): whatever
moment the job dies, ``latest`` names a complete checkpoint or the previous one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"
LATEST = "latest"
TAG_RE = re.compile(r"^global_step(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint named by ``latest`` is missing or incomplete (the message names the path)."""


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_latest(load_dir: str | os.PathLike) -> str | None:
    """The tag in ``load_dir/latest``, or None when there is no such file (a fresh run)."""
    path = Path(load_dir) / LATEST
    try:
        tag = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not TAG_RE.match(tag):
        raise CheckpointError(f"{path}: holds {tag!r}, not a tag like global_step1000")
    return tag


def is_complete(tag_dir: str | os.PathLike) -> bool:
    """NeoX's completeness rule for this layout: non-empty model states and a non-empty file in configs/."""
    tag_dir = Path(tag_dir)
    configs = tag_dir / "configs"
    model = tag_dir / MODEL_STATES
    if not (model.is_file() and model.stat().st_size > 0 and configs.is_dir()):
        return False
    return any(p.is_file() and p.stat().st_size > 0 for p in configs.iterdir())


def save_checkpoint(
    save_dir: str | os.PathLike, iteration: int, state: dict, config_path: str | os.PathLike, log=print
) -> Path:
    """Write ``global_step{iteration}`` completely, then point ``latest`` at it. Returns the tag folder.

    A folder of the same tag left by an interrupted save is replaced; one that ``latest`` already names
    is kept as is (its content is the committed state of this very iteration).
    """
    save_dir = Path(save_dir)
    tag = tag_for(iteration)
    tag_dir = save_dir / tag
    config_path = Path(config_path)
    config_bytes = config_path.read_bytes()  # before touching the save folder: a missing config fails clean
    save_dir.mkdir(parents=True, exist_ok=True)
    if read_latest(save_dir) == tag and is_complete(tag_dir):
        log(f"checkpoint {tag} is already committed in {save_dir}; not rewriting it")
        return tag_dir
    log(f"[Rank 0] [Torch] Checkpoint {tag} is about to be saved!")
    if tag_dir.exists():
        shutil.rmtree(tag_dir)
    tag_dir.mkdir()
    target = tag_dir / MODEL_STATES
    log(f"[Rank 0] Saving model checkpoint: {target}")
    with open(target, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    # configs/ is the completeness marker for every reader (NeoX writes it last): build it under another
    # name and rename the folder, so a configs/ that exists is never half written.
    staging = tag_dir / "configs.tmp"
    staging.mkdir()
    with open(staging / config_path.name, "wb") as f:
        f.write(config_bytes)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(staging)
    os.replace(staging, tag_dir / "configs")
    _fsync_path(tag_dir)
    write_latest(save_dir, tag)
    log(f"[Torch] Checkpoint {tag} is ready now!")
    return tag_dir


def write_latest(save_dir: str | os.PathLike, tag: str) -> None:
    """Replace ``save_dir/latest`` atomically: write ``latest.tmp``, fsync, rename, fsync the folder."""
    save_dir = Path(save_dir)
    tmp = save_dir / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, save_dir / LATEST)
    _fsync_path(save_dir)


def load_checkpoint(load_dir: str | os.PathLike) -> tuple[str, dict] | None:
    """(tag, state) of the checkpoint ``latest`` names, None when there is no ``latest``.

    A ``latest`` naming a missing or incomplete folder is an error, not a silent fresh start: silently
    restarting from iteration 0 (NeoX's behaviour) would overwrite a run's history.
    """
    tag = read_latest(load_dir)
    if tag is None:
        return None
    tag_dir = Path(load_dir) / tag
    if not is_complete(tag_dir):
        raise CheckpointError(
            f"{Path(load_dir) / LATEST} names {tag}, but {tag_dir} is missing or incomplete "
            f"(needs {MODEL_STATES} and configs/)"
        )
    state = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=False)
    return tag, state
