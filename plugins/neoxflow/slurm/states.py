"""What a Slurm job state means for a pipeline (see docs/reference/slurm.md).

Slurm reports one word per job (squeue ``%T``, scontrol ``JobState=``, sacct ``State``). neoxflow sorts
every word into one :class:`Outcome` so that operators, sensors and the resume policy decide on the same
facts. Words we do not know are UNKNOWN (ask again), never success.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Outcome(enum.StrEnum):
    ACTIVE = "active"  # pending, running, completing, requeued...: keep waiting
    SUCCESS = "success"
    INFRA_FAILURE = "infra_failure"  # node died, preempted, time limit: resume from a checkpoint
    APP_FAILURE = "app_failure"  # the program failed: a human must look, no blind resubmit
    CANCELLED = "cancelled"
    HELD = "held"  # needs a human to release or fix
    UNKNOWN = "unknown"  # no trustworthy answer yet: ask again

    @property
    def final(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.INFRA_FAILURE, Outcome.APP_FAILURE, Outcome.CANCELLED)


_ACTIVE = {
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "POWER_UP_NODE",
    "UPDATE_DB",
}
_HELD = {"REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
_INFRA = {"NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "TIMEOUT", "DEADLINE", "LAUNCH_FAILED"}
_APP = {"FAILED", "OUT_OF_MEMORY"}
# PENDING reasons that will never resolve by themselves.
HUMAN_PENDING_REASONS = {"DependencyNeverSatisfied", "JobHeldUser", "JobHeldAdmin"}

_ABBREVIATIONS = {  # squeue %t / sacct -X short forms, in case a site's format uses them
    "PD": "PENDING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "BF": "BOOT_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "DL": "DEADLINE",
    "S": "SUSPENDED",
    "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD",
    "SE": "SPECIAL_EXIT",
    "CF": "CONFIGURING",
    "RS": "RESIZING",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
}


def normalise_state(word: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``RUNNING+`` (cut by sacct) -> ``RUNNING``; ``CD`` -> ...

    Abbreviations (``CD``) are expanded to the full word.
    """
    word = word.strip().split(" ", 1)[0].rstrip("+").upper()
    return _ABBREVIATIONS.get(word, word)


def classify(state: str, reason: str | None = None) -> Outcome:
    word = normalise_state(state)
    if word == "PENDING" and reason in HUMAN_PENDING_REASONS:
        return Outcome.HELD
    if word in _ACTIVE:
        return Outcome.ACTIVE
    if word == "COMPLETED":
        return Outcome.SUCCESS
    if word in _HELD:
        return Outcome.HELD
    if word in _INFRA:
        return Outcome.INFRA_FAILURE
    if word in _APP:
        return Outcome.APP_FAILURE
    if word == "CANCELLED":
        return Outcome.CANCELLED
    return Outcome.UNKNOWN


# When array tasks end differently, the array's outcome is the most serious one: a human must see a held
# task, an application failure must not be hidden behind a node failure, and so on.
_SEVERITY = [
    Outcome.UNKNOWN,
    Outcome.ACTIVE,
    Outcome.HELD,
    Outcome.APP_FAILURE,
    Outcome.CANCELLED,
    Outcome.INFRA_FAILURE,
    Outcome.SUCCESS,
]


def combine(outcomes: Iterable[Outcome]) -> Outcome:
    """Outcome of a job array from the outcomes of its tasks.

    Unknown or active anywhere -> not final yet. Otherwise the worst final outcome wins.
    """
    seen = set(outcomes)
    if not seen:
        return Outcome.UNKNOWN
    for outcome in _SEVERITY:
        if outcome in seen:
            return outcome
    raise AssertionError("unreachable")
