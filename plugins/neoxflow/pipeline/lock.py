"""A lease on the run's checkpoint folder, kept on FSx, so two runs never train into it at once.

``mkdir`` is atomic on POSIX file systems (Lustre included): the run that creates ``<ckpt>.lock/`` owns
it. The owner file holds the holder and an expiry time; a holder that crashed cannot keep the folder
forever: once the lease expired, the next run takes it over. Pure command builders; the hook runs them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from neoxflow.slurm.validate import UnsafeValueError, check_remote_path

_OWNER = re.compile(r"[A-Za-z0-9_.:+-]{1,200}")


def owner_token(dag_id: str, run_id: str) -> str:
    token = re.sub(r"[^A-Za-z0-9_.:+-]", "_", f"{dag_id}:{run_id}")[:200]
    if not _OWNER.fullmatch(token):
        raise UnsafeValueError("lock owner", token, "is not a usable token")
    return token


def acquire_command(lock_dir: str, owner: str, lease_seconds: int) -> str:
    """Prints ``acquired``/``renewed``/``taken-over <old>`` (exit 0) or ``held <owner> <expiry>`` (exit 3)."""
    d = shlex.quote(check_remote_path(lock_dir, "lock_dir"))
    o = shlex.quote(owner if _OWNER.fullmatch(owner) else "")
    lease = int(lease_seconds)
    return (
        f"d={d}; me={o}; now=$(date +%s); exp=$((now + {lease})); "
        'mkdir -p "$(dirname "$d")"; '
        'if mkdir "$d" 2>/dev/null; then echo "$me $exp" > "$d/owner"; echo acquired; exit 0; fi; '
        'read -r holder until < "$d/owner" 2>/dev/null || { holder=unknown; until=0; }; '
        'if [ "$holder" = "$me" ]; then echo "$me $exp" > "$d/owner"; echo renewed; exit 0; fi; '
        'if [ "${until:-0}" -lt "$now" ]; then '
        'echo "$me $exp" > "$d/owner"; echo "taken-over $holder"; exit 0; fi; '
        'echo "held $holder $until"; exit 3'
    )


def release_command(lock_dir: str, owner: str) -> str:
    """Remove the lock only if we still hold it (a taken-over lease belongs to someone else now)."""
    d = shlex.quote(check_remote_path(lock_dir, "lock_dir"))
    o = shlex.quote(owner if _OWNER.fullmatch(owner) else "")
    return (
        f"d={d}; me={o}; "
        'read -r holder until < "$d/owner" 2>/dev/null || exit 0; '
        'if [ "$holder" = "$me" ]; then rm -f "$d/owner" && rmdir "$d"; echo released; '
        'else echo "not ours: $holder"; fi'
    )


@dataclass(frozen=True)
class LockAnswer:
    acquired: bool
    holder: str | None
    text: str


def parse_acquire(status: int, stdout: str) -> LockAnswer:
    text = stdout.strip()
    if status == 0:
        return LockAnswer(True, None, text)
    if text.startswith("held "):
        return LockAnswer(False, text.split()[1], text)
    raise RuntimeError(f"lock command failed ({status}): {text[:300]}")
