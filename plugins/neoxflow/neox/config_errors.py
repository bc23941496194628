"""The config problems every check reports: which key and why, and the exception for callers that stop.

A separate module because the batch arithmetic (``neox/batch.py``), the checks (``neox/config_checks.py``)
and the run's config (``neox/run_config.py``) all report :class:`ConfigError` s, and the checks use the
batch arithmetic: the error type sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigError:
    """One problem with a config: which key (dotted for nested ones) and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigValidationError(ValueError):
    """Raised by :func:`require_valid`: carries every :class:`ConfigError`, one per line in the message."""

    def __init__(self, errors: list[ConfigError], what: str = "config"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{what} has {len(self.errors)} error(s):\n{lines}")


def require_valid(errors: list[ConfigError], what: str = "config") -> None:
    """Raise :class:`ConfigValidationError` when ``errors`` is not empty (for callers that want to stop)."""
    if errors:
        raise ConfigValidationError(errors, what)
