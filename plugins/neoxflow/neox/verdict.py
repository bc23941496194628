"""How a NeoX training job ended, judged from its log and its complete checkpoints.

The exit code alone cannot say whether training finished: with pipe_parallel_size >= 1 NeoX exits 1
after committing the final checkpoint (its end-of-training evaluation crashes). `training_verdict`
therefore decides from the log (a :class:`~neoxflow.neox.logstate.LogState`) and the complete
checkpoints, and uses the exit code only as a hint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from neoxflow.neox.logparse import Event
from neoxflow.neox.logstate import LogState

__all__ = ["Verdict", "training_verdict"]


@dataclass(frozen=True)
class Verdict:
    """How a training job ended, decided from evidence rather than from the exit code alone."""

    finished: bool
    reason: str
    last_iteration: int | None
    last_complete_iteration: int | None
    exit_code: int | None
    #: the slice stopped where it was told to (exit_interval) after a complete checkpoint: not finished,
    #: not a failure either; the next slice resumes there with nothing recomputed
    planned_stop: bool = False

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "slice_end" if self.planned_stop else "failed"

    @property
    def resume_from(self) -> int | None:
        """Where a retry would continue (the newest complete checkpoint); None = from scratch."""
        return None if self.finished else self.last_complete_iteration


def _error_summary(state: LogState) -> str:
    if not state.errors:
        return ""
    exceptions = [e for e in state.errors if e.kind == "exception"]
    chosen = exceptions[-1] if exceptions else state.errors[-1]
    where = f" on {chosen.node}" if chosen.node else ""
    return f"; last error{where}: {chosen.message}"


def training_verdict(
    state: LogState | Iterable[Event],
    train_iters: int,
    exit_code: int | None,
    committed_iters: Iterable[int],
    *,
    planned_stop: int | None = None,
    exited_at: int | None = None,
) -> Verdict:
    """Finished iff the log reached ``train_iters`` AND a complete checkpoint at ``train_iters`` exists.

    A planned stop (``planned_stop``: the slice's ``exit_interval``) is a clean slice end, not a failure:
    exit 0, NeoX printed that it exits at that iteration (``exited_at``, `slices.exited_at`) and the
    checkpoint there is complete. NeoX saves before it checks exit_interval, so nothing is lost and the
    next slice resumes from that checkpoint (``Verdict.planned_stop``, status ``slice_end``).

    ``committed_iters`` are the iterations of COMPLETE checkpoints (`checkpoints.complete_checkpoints`
    on the save folder), not the commit lines. A non-zero exit after both are true is still a finished
    run: NeoX's end-of-training evaluation crashes with pipe_parallel_size >= 1 after the final save
    (tests/fixtures/neox-run/README.md). Any other ending is a failure whose reason names the iteration
    reached, the newest complete checkpoint (what a resume would start from) and the last error seen.
    """
    if not isinstance(state, LogState):
        state = LogState.from_events(state)
    if train_iters <= 0:
        raise ValueError(f"train_iters must be positive, got {train_iters}")
    complete = sorted(set(committed_iters))
    last_complete = complete[-1] if complete else None
    last = state.last_iteration
    if state.resumed_from and (last is None or state.resumed_from > last):
        last = state.resumed_from  # resumed at (or past) the end: nothing left to train
    log_reached = last is not None and last >= train_iters
    saved_final = last_complete is not None and last_complete >= train_iters
    ckpt_text = f"global_step{last_complete}" if last_complete is not None else "none"
    errors = _error_summary(state)
    exit_text = "unknown" if exit_code is None else str(exit_code)

    if log_reached and saved_final:
        if exit_code == 0:
            reason = f"training reached {train_iters}/{train_iters} and checkpoint {ckpt_text} is complete"
        else:
            reason = (
                f"training reached {train_iters}/{train_iters} and checkpoint {ckpt_text} is complete; "
                f"exit code {exit_text} after the final checkpoint ignored "
                f"(NeoX's end-of-training evaluation fails after saving){errors}"
            )
        return Verdict(True, reason, last, last_complete, exit_code)

    if (
        planned_stop is not None
        and exit_code == 0
        and exited_at == planned_stop
        and planned_stop in complete
        and planned_stop < train_iters
    ):
        reason = (
            f"stopped as planned after the save of iteration {planned_stop} (exit_interval); checkpoint "
            f"global_step{planned_stop} is complete; {train_iters - planned_stop} iterations left{errors}"
        )
        return Verdict(False, reason, max(last or 0, planned_stop), last_complete, exit_code, True)

    if log_reached:
        reason = (
            f"log reached iteration {last}/{train_iters} but no complete checkpoint at {train_iters} "
            f"(newest complete: {ckpt_text}); exit code {exit_text}{errors}"
        )
    elif last is None:
        reason = f"no training iteration was logged; exit code {exit_text}{errors}"
        if exit_code == 0:
            reason = f"exited 0 before logging any training iteration{errors}"
    elif exit_code == 0:
        reason = (
            f"exited 0 at iteration {last} of {train_iters} (exit_interval or a clean stop?); "
            f"newest complete checkpoint: {ckpt_text}{errors}"
        )
    else:
        reason = (
            f"stopped at iteration {last} of {train_iters} with exit code {exit_text}; "
            f"newest complete checkpoint: {ckpt_text}{errors}"
        )
    if saved_final:
        reason += f" (checkpoint {ckpt_text} is complete, but the log does not show iteration {train_iters})"
    return Verdict(False, reason, last, last_complete, exit_code)
