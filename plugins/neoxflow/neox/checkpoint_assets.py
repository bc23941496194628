"""What a complete checkpoint's Asset is (name ``neoxflow/<run>/<tag>``, URI ``file://<path>``, group
checkpoint) and what its events say of it (:func:`asset_extra`), for the training operator and the
checkpoint sensor alike: the Asset page in Airflow then explains each checkpoint without a file read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset

__all__ = ["DEFAULT_ALIAS", "asset_extra", "checkpoint_asset"]

#: the AssetAlias the training operator and the checkpoint sensor attach checkpoint events to
DEFAULT_ALIAS = "neoxflow-checkpoints"


def checkpoint_asset(run: str, ckpt: Mapping[str, Any]) -> Asset:
    """The Asset of one complete checkpoint: name ``neoxflow/<run>/<tag>``, URI ``file://<path>``."""
    return Asset(name=f"neoxflow/{run}/{ckpt['tag']}", uri=f"file://{ckpt['path']}", group="checkpoint")


def asset_extra(ckpt: Mapping[str, Any], job_id: Any, s3_checkpoints: str | None) -> dict[str, Any]:
    """What a checkpoint's Asset event says of it: iteration, the last lm_loss logged at or before it (the
    watch's), the job that wrote it, its size, and its S3 copy: ``pending`` at emission (the export runs
    after training) at the URI the export will use, or ``none`` when the run exports nowhere."""
    s3 = (
        {"state": "pending", "uri": f"{s3_checkpoints.rstrip('/')}/{ckpt['tag']}"}
        if s3_checkpoints
        else {"state": "none", "uri": None}
    )
    loss = ckpt.get("loss")
    job = ckpt.get("job_id") or job_id
    return {
        "iteration": int(ckpt["iteration"]),
        "loss": float(loss) if loss is not None else None,
        "job_id": str(job) if job is not None else None,
        "size_bytes": int(ckpt.get("size_bytes", 0)),
        "path": ckpt["path"],
        "s3": s3,
    }
