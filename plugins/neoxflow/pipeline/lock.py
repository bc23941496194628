"""A lease on the run's checkpoint folder, kept on FSx, so two runs never train into it at once.

Pure command builders (POSIX ``sh``; the Slurm hook runs them on the login node) and their parsers.

The lock folder ``<ckpt>.lock/`` holds a chain of lease *records*, each one line
``<holder> <expires epoch s> <version>``; ``<version>`` is a fresh random name per record. Files:

- ``owner``: a recent record (a shortcut into the chain, never wrong, at worst one or two steps behind);
- ``next.<v>``: the record that succeeded version ``<v>``. The current record is found by starting at
  ``owner`` and following ``next.<version>`` while such a file exists.

Every change of state is ONE atomic, exclusive name creation, so exactly one contender wins it:

1. **Creation** (no lock folder yet): build ``.<name>.new.<v>/owner`` next to it, complete, then
   ``mv -T`` it to the lock path: rename(2) of a directory onto an existing non-empty directory fails
   (ENOTEMPTY/EEXIST), so one creator wins; the others see the winner's folder and read it. The folder is
   never visible without its ``owner`` record: it appears, already filled, in one rename.
2. **Every later change** (a renewal by the holder, a take-over after expiry, an acquisition of a
   released lock, a release) from the current version ``v``: write the new record to ``.tmp.<new>``,
   then ``ln`` (link(2)) it as ``next.<v>``. link(2) fails with EEXIST when the name exists, so ``v`` has
   at most one successor: of 20 contenders that all read the same expired record exactly one gets
   ``taken-over``; the others find the winner's record on their next read and answer ``held``. The new
   record is complete before it gets its ``next.`` name. Then the winner renames ``.tmp.<new>`` over
   ``owner`` (rename(2) replaces atomically) to keep the chain short; a late, stale rename there only
   moves the shortcut back, the chain still leads to the newest record.

Why a chain and not "rename the expired folder aside, check it, put it back": between moving a folder
aside and putting it back, the lock path is empty and a third contender can create a fresh lock there,
so a contender that moved a lock it should not have touched could no longer undo it. Here the folder is
never removed or moved while it exists, and nothing is ever compared-then-written: the exclusive create
of ``next.<v>`` IS the compare-and-swap (a stale reader's ``next.<v>`` already exists, its link fails).
Version names are never reused (time + 64 random bits), so no A-B-A. Nothing is pruned while the folder
lives, so a chain only grows by one small link per acquisition, renewal and release (a renewal every
lease/3: a dozen a day).

A release writes a *free* record (holder ``-``) instead of deleting the folder: deleting would reopen
the gap above. A crashed writer leaves at worst a ``.tmp.*`` file or a ``.<name>.new.*`` folder, which
nobody reads; the state is always the last linked record.

On FSx for Lustre every namespace operation (rename within a directory, link, mkdir) is executed by the
metadata server under the parent directory's lock, so the same atomicity holds for contenders on
different login nodes; clients are cache-coherent (LDLM), so a record read is the one last linked.
Expiry compares the record with the login node's clock (``date +%s``), the only timing assumption:
login nodes' clocks agree to well under a lease.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from neoxflow.slurm.validate import UnsafeValueError, check_remote_path

__all__ = [
    "DEFAULT_LEASE_S",
    "FREE",
    "LockAnswer",
    "acquire_command",
    "owner_dag_run",
    "owner_token",
    "parse_acquire",
    "parse_release",
    "parse_renew",
    "release_command",
    "renew_command",
    "state_command",
    "live_holder",
]

#: The lease an acquisition or renewal grants. Longer than a poll gap, shorter than a crashed run should
#: keep a folder; the training watch renews it every third of it while the run's job lives.
DEFAULT_LEASE_S = 6 * 3600
#: The holder of a released lock, and of a lock folder without a readable record (an old layout).
FREE = "-"
UNKNOWN = "unknown"

_OWNER = re.compile(r"[A-Za-z0-9_.:+-]{1,200}")


def owner_token(dag_id: str, run_id: str) -> str:
    token = re.sub(r"[^A-Za-z0-9_.:+-]", "_", f"{dag_id}:{run_id}")[:200]
    return _check_owner(token)


def owner_dag_run(owner: str) -> tuple[str, str] | None:
    """(dag_id, run_id) of a token made by :func:`owner_token`; None when it is not one (another kind of
    holder, or a run id that had to be cut or changed to become a token). A DAG id has no ``:``."""
    dag_id, sep, run_id = owner.partition(":")
    if not sep or not dag_id or not run_id or len(owner) >= 200:
        return None
    return dag_id, run_id


def _check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner) or owner in (FREE, UNKNOWN):
        raise UnsafeValueError("lock owner", owner, "is not a usable token ([A-Za-z0-9_.:+-], 1-200)")
    return owner


def _check_lease(lease_seconds: object) -> int:
    # a lease <= 0 is a lease that already ran out (tests use it); anything but an int is refused
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int):
        raise UnsafeValueError("lock lease", lease_seconds, "must be whole seconds (int)")
    return lease_seconds


def _prelude(lock_dir: str, owner: str, lease_seconds: int) -> str:
    """Variables and the three primitives shared by every lock command (POSIX sh, no bashisms).

    ``current`` sets holder/till/ver from the chain (1: no lock folder, 2: a corrupt record);
    ``create`` installs a new folder with one rename; ``cas`` links the successor of ``$ver``.
    """
    d = check_remote_path(lock_dir, "lock_dir").rstrip("/") or "/"
    me = _check_owner(owner)
    lease = _check_lease(lease_seconds)
    return (
        f"d={shlex.quote(d)}; me={shlex.quote(me)}; lease={lease}; "
        'parent=$(dirname "$d"); base=$(basename "$d"); stage=; tmp=; '
        'trap \'rm -rf "$stage" "$tmp" 2>/dev/null\' EXIT; '
        'nonce() { printf \'%s.%s\' "$(date +%s)" "$(od -An -N8 -tx1 /dev/urandom | tr -dc 0-9a-f)"; }; '
        "checkrec() { "
        "case $holder in ''|*[!A-Za-z0-9_.:+-]*) holder=unknown;; esac; "
        "case $till in ''|*[!0-9-]*) till=0;; esac; "
        "case $ver in '') ver=0;; *[!A-Za-z0-9_.-]*) return 2;; esac; }; "
        "current() { "
        '[ -d "$d" ] || return 1; holder=unknown; till=0; ver=0; '
        'if [ -f "$d/owner" ]; then read -r holder till ver < "$d/owner" || return 2; fi; '
        "checkrec || return 2; n=0; "
        'while [ -e "$d/next.$ver" ]; do '
        'read -r holder till ver < "$d/next.$ver" || return 2; checkrec || return 2; '
        'n=$((n + 1)); [ "$n" -lt 1000000 ] || return 2; done; return 0; }; '
        "create() { "
        'new=$(nonce); stage="$parent/.$base.new.$new"; '
        'mkdir "$stage" && printf \'%s %s %s\\n\' "$me" "$1" "$new" > "$stage/owner" || return 2; '
        'if mv -T "$stage" "$d" 2>/dev/null; then stage=; return 0; fi; '
        'rm -rf "$stage"; stage=; return 1; }; '
        "cas() { "
        'new=$(nonce); tmp="$d/.tmp.$new"; '
        'printf \'%s %s %s\\n\' "$1" "$2" "$new" > "$tmp" || return 2; '
        'if ln -T "$tmp" "$d/next.$ver" 2>/dev/null; then mv -f -T "$tmp" "$d/owner" 2>/dev/null; '
        "tmp=; return 0; fi; "
        'rm -f "$tmp"; tmp=; return 1; }; '
    )


_RETRIES = "1 2 3 4 5 6 7 8"  # lost races in a row before answering with what is there now


def acquire_command(lock_dir: str, owner: str, lease_seconds: int = DEFAULT_LEASE_S) -> str:
    """Take the lock for ``owner``. Prints one line:

    - ``acquired`` (exit 0): the folder was free (absent or released);
    - ``renewed <until>`` (exit 0): ``owner`` already held it (a retried lock task); expiry moved on;
    - ``taken-over <old holder> <expired at>`` (exit 0): the old lease had run out;
    - ``held <holder> <until>`` (exit 3): someone else holds an unexpired lease.
    """
    return _prelude(lock_dir, owner, lease_seconds) + (
        'mkdir -p "$parent" || { echo "error cannot create $parent"; exit 5; }; '
        f"for attempt in {_RETRIES}; do "
        "now=$(date +%s); exp=$((now + lease)); current; rc=$?; "
        'if [ "$rc" = 1 ]; then create "$exp"; rc=$?; '
        '[ "$rc" = 0 ] && { echo acquired; exit 0; }; '
        '[ "$rc" = 2 ] && { echo "error cannot create $d"; exit 5; }; continue; fi; '
        '[ "$rc" = 0 ] || { echo "error unreadable lock record in $d"; exit 5; }; '
        'if [ "$holder" = "$me" ]; then said="renewed $exp"; '
        'elif [ "$holder" = - ]; then said=acquired; '
        'elif [ "$till" -lt "$now" ]; then said="taken-over $holder $till"; '
        'else echo "held $holder $till"; exit 3; fi; '
        'cas "$me" "$exp"; rc=$?; '
        '[ "$rc" = 0 ] && { echo "$said"; exit 0; }; '
        '[ "$rc" = 2 ] && { echo "error cannot write in $d"; exit 5; }; '
        "done; "
        'echo "held $holder $till"; exit 3'
    )


def renew_command(lock_dir: str, owner: str, lease_seconds: int = DEFAULT_LEASE_S) -> str:
    """Extend ``owner``'s lease to now + lease; only the holder may. Prints one line:

    - ``renewed <until>`` (exit 0): still ours (even if it had run out: nobody took it meanwhile);
    - ``lost <holder> <until>`` (exit 4): someone else holds it, it was released (holder ``-``) or the
      folder is gone (``lost - 0``). Nothing is changed then.
    """
    return _prelude(lock_dir, owner, lease_seconds) + (
        f"for attempt in {_RETRIES}; do "
        "now=$(date +%s); exp=$((now + lease)); current; rc=$?; "
        '[ "$rc" = 1 ] && { echo "lost - 0"; exit 4; }; '
        '[ "$rc" = 0 ] || { echo "error unreadable lock record in $d"; exit 5; }; '
        '[ "$holder" = "$me" ] || { echo "lost $holder $till"; exit 4; }; '
        'cas "$me" "$exp"; rc=$?; '
        '[ "$rc" = 0 ] && { echo "renewed $exp"; exit 0; }; '
        '[ "$rc" = 2 ] && { echo "error cannot write in $d"; exit 5; }; '
        "done; "
        'echo "lost $holder $till"; exit 4'
    )


def release_command(lock_dir: str, owner: str) -> str:
    """Free the lock only if ``owner`` still holds it (a taken-over lease belongs to someone else now).

    Prints ``released``, ``not ours: <holder>`` or ``not held`` (all exit 0: nothing left to do).
    """
    return _prelude(lock_dir, owner, 0) + (
        f"for attempt in {_RETRIES}; do "
        "current; rc=$?; "
        '[ "$rc" = 1 ] && { echo "not held"; exit 0; }; '
        '[ "$rc" = 0 ] || { echo "error unreadable lock record in $d"; exit 5; }; '
        '[ "$holder" = "$me" ] || { echo "not ours: $holder"; exit 0; }; '
        "cas - 0; rc=$?; "
        '[ "$rc" = 0 ] && { echo released; exit 0; }; '
        '[ "$rc" = 2 ] && { echo "error cannot write in $d"; exit 5; }; '
        "done; "
        'echo "not ours: $holder"; exit 0'
    )


def state_command(lock_dir: str) -> str:
    """Read the current record without changing anything: prints ``<holder> <until>`` (``- 0`` when there
    is no lock folder; holder ``-`` when released). For surveys (the continuation), never for decisions
    that need the lock itself: take it with :func:`acquire_command`."""
    return _prelude(lock_dir, "survey", 0) + (
        "current; rc=$?; "
        '[ "$rc" = 1 ] && { echo "- 0"; exit 0; }; '
        '[ "$rc" = 0 ] || { echo "error unreadable lock record in $d"; exit 5; }; '
        'echo "$holder $till"'
    )


def live_holder(stdout: str, now: float) -> str | None:
    """The holder of an unexpired lease from :func:`state_command`'s answer, or None (free, expired)."""
    words = stdout.split()
    if len(words) != 2 or words[0] in (FREE, UNKNOWN):
        return None
    until = _int(words[1])
    return words[0] if until is not None and until >= now else None


@dataclass(frozen=True)
class LockAnswer:
    """One lock command's answer. ``state``: acquired, renewed, taken-over, held, lost, released,
    not-ours, not-held. ``holder``/``until``: the other holder and its expiry (held, lost, taken-over:
    the previous holder and when its lease ran out) or our new expiry (renewed)."""

    acquired: bool
    holder: str | None
    text: str
    state: str = ""
    until: int | None = None


def _int(word: str) -> int | None:
    try:
        return int(word)
    except ValueError:
        return None


def _answer(status: int, stdout: str, ok: dict[int, tuple[str, ...]]) -> LockAnswer:
    text = stdout.strip()
    words = text.split()
    state = words[0] if words else ""
    if state not in ok.get(status, ()):
        raise RuntimeError(f"lock command failed ({status}): {text[:300]}")
    if state in ("held", "lost", "taken-over") and len(words) == 3:
        return LockAnswer(state == "taken-over", words[1], text, state, _int(words[2]))
    if state == "renewed":
        return LockAnswer(True, None, text, state, _int(words[1]) if len(words) > 1 else None)
    if state == "acquired":
        return LockAnswer(True, None, text, state)
    if state in ("released", "not"):
        state = {"released": "released", "ours:": "not-ours", "held": "not-held"}.get(
            words[1] if state == "not" and len(words) > 1 else state, state
        )
        holder = words[2] if state == "not-ours" and len(words) > 2 else None
        return LockAnswer(False, holder, text, state)
    raise RuntimeError(f"lock command answered unexpectedly ({status}): {text[:300]}")


def parse_acquire(status: int, stdout: str) -> LockAnswer:
    return _answer(status, stdout, {0: ("acquired", "renewed", "taken-over"), 3: ("held",)})


def parse_renew(status: int, stdout: str) -> LockAnswer:
    return _answer(status, stdout, {0: ("renewed",), 4: ("lost",)})


def parse_release(status: int, stdout: str) -> LockAnswer:
    return _answer(status, stdout, {0: ("released", "not")})
