"""CheckpointSensor: wait for a COMPLETE NeoX checkpoint newer than a given iteration.

Deferrable by default (:class:`~neoxflow.triggers.checkpoint.CheckpointTrigger` lists the save folder from
the triggerer, one SSH command per poll). A folder a killed save left half written is never reported:
the completeness rule of :mod:`neoxflow.neox.checkpoints` decides. On success the sensor returns
``{"iteration", "tag", "path", "size_bytes"}`` and emits an Asset event for that checkpoint through
``outlets=[AssetAlias(asset_alias)]``; with ``stall_window`` it fails when nothing new arrives in time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import AssetAlias, BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException

from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.neox.checkpoint_assets import DEFAULT_ALIAS, asset_extra, checkpoint_asset
from neoxflow.neox.checkpoint_listing import (
    checkpoint_to_dict,
    expectation_from_dict,
    listing_command,
    new_complete_checkpoints,
    read_listing,
)
from neoxflow.triggers.checkpoint import CheckpointTrigger

__all__ = ["CheckpointSensor", "CheckpointStalled"]


class CheckpointStalled(AirflowException):
    """No new complete checkpoint arrived within the stall window."""


class CheckpointSensor(BaseSensorOperator):
    """Succeed when ``save_dir`` holds a complete checkpoint newer than ``after_iteration``.

    :param save_dir: NeoX ``save`` folder on the cluster (templated).
    :param after_iteration: only a checkpoint past this iteration counts (templated; None = any).
    :param listing_script: remote path of ckpt_listing.py (templated).
    :param listing_python: interpreter on the login node for the listing (templated).
    :param expectation: `Expectation` fields of a complete checkpoint (None = the stand-in's layout).
    :param run_name: names the Asset (``neoxflow/<run>/<tag>``); default the DAG run's id.
    :param asset_alias: the AssetAlias the event is attached to (also the task's outlet).
    :param stall_window: seconds without a new complete checkpoint (or a new partial folder) -> fail.
    """

    template_fields: Sequence[str] = (
        "save_dir",
        "after_iteration",
        "listing_script",
        "listing_python",
        "run_name",
    )

    def __init__(
        self,
        *,
        save_dir: str,
        listing_script: str,
        after_iteration: int | str | None = None,
        listing_python: str = "python3",
        expectation: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        asset_alias: str = DEFAULT_ALIAS,
        stall_window: float | None = None,
        ssh_conn_id: str = "neoxflow_cluster",
        deferrable: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault("outlets", [AssetAlias(asset_alias)])
        super().__init__(**kwargs)
        self.save_dir = save_dir
        self.listing_script = listing_script
        self.after_iteration = after_iteration
        self.listing_python = listing_python
        self.expectation = dict(expectation) if expectation is not None else None
        self.run_name = run_name
        self.asset_alias = asset_alias
        self.stall_window = stall_window
        self.ssh_conn_id = ssh_conn_id
        self.deferrable = deferrable
        self._started = time.time()

    @cached_property
    def hook(self) -> SlurmSSHHook:
        return SlurmSSHHook(self.ssh_conn_id)

    def _after(self) -> int | None:
        value = self.after_iteration
        if value is None or value == "" or value == "None":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"after_iteration must be an integer or None, got {value!r}") from err
        if number < 0:
            raise ValueError(f"after_iteration must be >= 0, got {number}")
        return number

    def poke(self, context: Context) -> Any:
        after = self._after()
        floor = 0 if after is None else after + 1
        listing = read_listing(self.hook, self.listing_python, self.listing_script, self.save_dir, floor)
        found = new_complete_checkpoints(listing, expectation_from_dict(self.expectation), after)
        if found:
            self._found = checkpoint_to_dict(found[-1])
            return True
        if self.stall_window and time.time() - self._started > self.stall_window:
            raise CheckpointStalled(
                f"no new complete checkpoint in {self.save_dir} after iteration {after} "
                f"within {self.stall_window:.0f}s"
            )
        return False

    def execute(self, context: Context) -> Any:
        expectation_from_dict(self.expectation)  # fail on bad input before any waiting
        listing_command(self.listing_python, self.listing_script, self.save_dir)
        if self.deferrable:
            self._defer()
        super().execute(context)
        return self._emit(context, self._found)

    def _defer(self) -> None:
        self.defer(
            trigger=CheckpointTrigger(
                ssh_conn_id=self.ssh_conn_id,
                save_dir=self.save_dir,
                listing_script=self.listing_script,
                listing_python=self.listing_python,
                after_iteration=self._after(),
                expectation=self.expectation,
                poll_interval=self.poke_interval,
                stall_window=self.stall_window,
                started_at=time.time(),
            ),
            method_name="execute_complete",
            timeout=self.execution_timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        kind = event.get("event")
        if kind == "checkpoint":
            return self._emit(context, event)
        if kind == "stalled":
            raise CheckpointStalled(event.get("reason") or "checkpoint stalled")
        raise AirflowException(f"checkpoint watch failed: {event.get('message') or event}")

    def _emit(self, context: Context, found: Mapping[str, Any]) -> dict[str, Any]:
        result = {k: found[k] for k in ("iteration", "tag", "path", "size_bytes") if k in found}
        run = self.run_name or context["run_id"]
        context["outlet_events"][AssetAlias(self.asset_alias)].add(
            checkpoint_asset(run, result),
            extra=asset_extra(result, None, None),  # the same keys as the training watch's events
        )
        self.log.info("Complete checkpoint %s at %s", result.get("tag"), result.get("path"))
        return result
