"""The one retry delay of neoxflow's waits: exponential, capped, jittered.

Every poll loop (:mod:`neoxflow.triggers.base`) and the async hook's command retry use it, so a cluster
outage is met the same way everywhere: the delay doubles per failure up to ``cap``, and a random factor
of 0.5-1.5 keeps a hundred triggers that lost the same login node from reconnecting in lock step.
"""

from __future__ import annotations

import random

__all__ = ["MAX_BACKOFF_S", "jittered_backoff"]

MAX_BACKOFF_S = 60.0  # the longest wait between two tries, before the jitter


def jittered_backoff(base: float, failures: int, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base * 2**failures`` (the exponent stops
    at 6), at most ``cap``, times a random 0.5-1.5."""
    return min(cap, base * 2 ** min(failures, 6)) * random.uniform(0.5, 1.5)
