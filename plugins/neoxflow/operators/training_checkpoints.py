"""The training operator's checkpoint bookkeeping: which complete checkpoints exist, which are new to the
task, and their Asset events.

A part of :class:`neoxflow.operators.training.NeoXTrainOperator` (a mixin: it uses the operator's hook,
save folder, listing and expectation), kept apart because it is one job: deciding, across deferrals,
re-attaches and tries, that every complete checkpoint of the run gets exactly one Asset event. The
watermark in the task state store is what survives all of those.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import AssetAlias, Context

from neoxflow.neox.checkpoint_assets import asset_extra, checkpoint_asset
from neoxflow.neox.checkpoint_listing import expectation_from_dict, new_complete_checkpoints, read_listing
from neoxflow.operators.slurm import STATE_KEY

#: task_state_store key: the newest checkpoint iteration whose Asset event was emitted (or, before the
#: first emission, the newest complete one before this task's first job): the floor of new checkpoints
ASSET_WATERMARK_KEY = "asset_watermark"


def merge_checkpoints(known: list[dict[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Add checkpoints by iteration (a trigger may run twice: events must be idempotent)."""
    by_iter = {int(c["iteration"]): dict(c) for c in known}
    for c in new:
        by_iter.setdefault(int(c["iteration"]), dict(c))
    return [by_iter[i] for i in sorted(by_iter)]


class CheckpointAssetsMixin:
    """Listing the save folder from the worker, the Asset watermark and the Asset events, and the try
    that finds the run already finished (it still owes the events of an earlier try's checkpoints)."""

    def _complete_checkpoints(self) -> list[dict[str, Any]]:
        """The complete checkpoints in the save folder now, oldest first ([] if the listing failed)."""
        try:
            listing = read_listing(self.hook, self.listing_python, self.listing_script, self.save_dir)
            found = new_complete_checkpoints(listing, expectation_from_dict(self.expectation), None)
        except Exception as err:  # only the baseline: the watch still judges every checkpoint
            self.log.warning("Could not list %s before watching: %s", self.save_dir, err)
            return []
        return [
            {"iteration": c.iteration, "tag": c.tag, "path": c.path, "size_bytes": c.size_bytes}
            for c in found
        ]

    def _newest_complete(self) -> int | None:
        """The newest complete checkpoint in the save folder now (None if none or the listing failed)."""
        found = self._complete_checkpoints()
        return found[-1]["iteration"] if found else None

    def _asset_floor(self, context: Context) -> int | None:
        """The newest checkpoint that needs no Asset event: the store's watermark when an earlier try (or
        this try before a re-attach) set one, so that checkpoints completed since then still get their
        event; else the newest complete one now (the one a resumed slice loads is not new) - stored as
        the watermark at once, so a later try starts from the same floor."""
        store = context.get("task_state_store")
        mark = store.get(ASSET_WATERMARK_KEY) if store is not None else None
        if isinstance(mark, Mapping) and "iteration" in mark:
            return mark["iteration"]
        newest = self._newest_complete()
        if store is not None:
            store.set(ASSET_WATERMARK_KEY, {"iteration": newest})
        return newest

    def _emit_assets(self, context: Context, run: str, checkpoints, job_id: Any) -> None:
        """One Asset event per checkpoint (its extra: asset_extra); then raise the watermark past them."""
        events = context["outlet_events"][AssetAlias(self.asset_alias)]
        for ckpt in checkpoints:
            events.add(checkpoint_asset(run, ckpt), extra=asset_extra(ckpt, job_id, self.s3_checkpoints))
        store = context.get("task_state_store")
        if checkpoints and store is not None:
            store.set(ASSET_WATERMARK_KEY, {"iteration": max(int(c["iteration"]) for c in checkpoints)})

    def _relist(
        self,
        context: Context,
        checkpoints: list[dict[str, Any]],
        event: Mapping[str, Any],
        baseline: int | None,
    ) -> list[dict[str, Any]]:
        """The trigger's final listing failed: list once more from the worker."""
        self.log.warning("Final listing in the trigger failed (%s); listing again", event["listing_error"])
        listing = read_listing(self.hook, self.listing_python, self.listing_script, self.save_dir)
        found = new_complete_checkpoints(listing, expectation_from_dict(self.expectation), baseline)
        new = [
            {"iteration": c.iteration, "tag": c.tag, "path": c.path, "size_bytes": c.size_bytes}
            for c in found
        ]
        merged = merge_checkpoints(checkpoints, new)
        if len(merged) > len(checkpoints):
            context["ti"].xcom_push(key="checkpoints", value=merged)
        return merged

    def _done_without_a_job(self, context: Context) -> Any:
        """No job of this task is live: if the run already has a complete checkpoint at train_iters, the
        slice is done and nothing is submitted. A try that starts over after an earlier one's job finished
        (the task rescheduled or its worker killed while the job ran; without accounting the ended job's
        state is unknown) would otherwise start a second training job of a finished run."""
        found = self._complete_checkpoints()
        newest = found[-1]["iteration"] if found else None
        if newest is None or newest < self.train_iters:
            return None
        store = context.get("task_state_store")
        earlier = (store.get(STATE_KEY) if store is not None else None) or {}
        mark = store.get(ASSET_WATERMARK_KEY) if store is not None else None
        if isinstance(mark, Mapping) and "iteration" in mark:
            # an earlier try of this task watched a job that completed checkpoints but never reached its
            # own result (re-attach, clear, lost worker): their Asset events are still owed
            floor = mark["iteration"]
            owed = [c for c in found if floor is None or c["iteration"] > floor]
            run = self.run_name or earlier.get("job_name") or "run"
            self._emit_assets(context, run, owed, earlier.get("job_id"))
        reason = (
            f"checkpoint global_step{newest} is complete and train_iters is {self.train_iters}: "
            "training already finished, no job submitted"
        )
        self.log.info("Training finished before this try: %s", reason)
        context["ti"].xcom_push(
            key="summary",
            value={
                "finished": True,
                "reason": reason,
                "last_checkpoint": newest,
                "train_iters": self.train_iters,
            },
        )
        return {
            "more_to_do": False,
            "reason": reason,
            "iteration": newest,
            "train_iters": self.train_iters,
            "last_checkpoint": newest,
            "last_checkpoint_path": posixpath.join(self.save_dir, f"global_step{newest}"),
            "checkpoints": [],
            "resumed_from": None,
            "baseline_checkpoint": newest,
            "slice_end": None,
            "job_id": earlier.get("job_id"),
            "save_dir": posixpath.normpath(self.save_dir),
        }
