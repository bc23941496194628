"""The FSx lease lock, run by a real shell on a real folder (what the login node does).

The races start their contenders as separate processes held at a barrier (a start file), so they run
the commands at the same time; each race is repeated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from neoxflow.pipeline import lock
from neoxflow.slurm.validate import UnsafeValueError

SHELLS = [s for s in ("sh", "bash") if shutil.which(s)]  # the login shell may be dash: no bashisms


def sh(cmd: str, shell: str = "bash") -> tuple[int, str]:
    result = subprocess.run([shell, "-c", cmd], capture_output=True, text=True, timeout=20)
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout.strip()


def record(lock_dir: Path) -> tuple[str, int]:
    """The current (holder, expiry), found the way the commands find it: owner, then next.<version>."""
    holder, until, version = (lock_dir / "owner").read_text().split()
    while (lock_dir / f"next.{version}").exists():
        holder, until, version = (lock_dir / f"next.{version}").read_text().split()
    return holder, int(until)


def race(tmp_path: Path, commands: list[str]) -> list[tuple[int, str]]:
    """Run the commands as processes released together from a start-file barrier."""
    start = tmp_path / f"start.{time.monotonic_ns()}"
    gate = f"while [ ! -e {start} ]; do sleep 0.002; done; "
    procs = [
        subprocess.Popen(["sh", "-c", gate + c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    time.sleep(0.3)  # every contender is waiting at the gate
    start.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert err == "", err
        results.append((p.returncode, out.strip()))
    return results


# ------------------------------------------------------------------------------------------ one by one
@pytest.mark.parametrize("shell", SHELLS)
def test_first_acquires_second_is_refused_holder_renews(tmp_path, shell):
    d = tmp_path / "ckpt.lock"
    assert sh(lock.acquire_command(str(d), "dag:run1", 600), shell) == (0, "acquired")
    holder, first_until = record(d)
    assert holder == "dag:run1" and first_until > time.time() + 500
    status, out = sh(lock.acquire_command(str(d), "dag:run2", 600), shell)
    answer = lock.parse_acquire(status, out)
    assert status == 3 and not answer.acquired
    assert (answer.state, answer.holder, answer.until) == ("held", "dag:run1", first_until)
    assert record(d) == ("dag:run1", first_until)  # the refused contender changed nothing
    # the holder acquiring again (a retried lock task) renews
    status, out = sh(lock.acquire_command(str(d), "dag:run1", 1200), shell)
    answer = lock.parse_acquire(status, out)
    assert answer.acquired and answer.state == "renewed" and answer.until == record(d)[1] > first_until


@pytest.mark.parametrize("shell", SHELLS)
def test_holder_renews_and_a_non_holder_cannot(tmp_path, shell):
    d = tmp_path / "ckpt.lock"
    sh(lock.acquire_command(str(d), "dag:a", 60), shell)
    _, until = record(d)
    status, out = sh(lock.renew_command(str(d), "dag:b", 6000), shell)
    answer = lock.parse_renew(status, out)
    assert (status, answer.state, answer.holder, answer.until) == (4, "lost", "dag:a", until)
    assert record(d) == ("dag:a", until)  # untouched
    status, out = sh(lock.renew_command(str(d), "dag:a", 6000), shell)
    answer = lock.parse_renew(status, out)
    assert status == 0 and answer.state == "renewed"
    assert record(d) == ("dag:a", answer.until) and answer.until >= until + 5000


def test_renewal_of_a_folder_that_is_gone_or_released_is_lost(tmp_path):
    d = tmp_path / "ckpt.lock"
    assert lock.parse_renew(*sh(lock.renew_command(str(d), "dag:a"))).state == "lost"
    sh(lock.acquire_command(str(d), "dag:a", 600))
    assert sh(lock.release_command(str(d), "dag:a")) == (0, "released")
    answer = lock.parse_renew(*sh(lock.renew_command(str(d), "dag:a")))
    assert (answer.state, answer.holder) == ("lost", lock.FREE)


def test_an_expired_lease_is_taken_over_and_the_old_holder_has_lost_it(tmp_path):
    d = tmp_path / "ckpt.lock"
    assert sh(lock.acquire_command(str(d), "dag:crashed", -1))[0] == 0  # a lease that already ran out
    _, expired_at = record(d)
    status, out = sh(lock.acquire_command(str(d), "dag:next", 600))
    answer = lock.parse_acquire(status, out)
    assert (status, out) == (0, f"taken-over dag:crashed {expired_at}")
    assert answer.acquired and answer.state == "taken-over" and answer.holder == "dag:crashed"
    assert record(d)[0] == "dag:next"
    assert sh(lock.release_command(str(d), "dag:crashed")) == (0, "not ours: dag:next")
    assert lock.parse_renew(*sh(lock.renew_command(str(d), "dag:crashed"))).holder == "dag:next"
    assert record(d)[0] == "dag:next"


def test_an_unexpired_lease_is_not_taken_over(tmp_path):
    d = tmp_path / "ckpt.lock"
    sh(lock.acquire_command(str(d), "dag:a", 5))
    assert sh(lock.acquire_command(str(d), "dag:b", 600))[0] == 3


def test_release_only_by_the_holder_and_a_released_lock_is_free(tmp_path):
    d = tmp_path / "ckpt.lock"
    sh(lock.acquire_command(str(d), "dag:a", 600))
    assert sh(lock.release_command(str(d), "dag:b")) == (0, "not ours: dag:a")
    assert record(d)[0] == "dag:a"
    assert sh(lock.release_command(str(d), "dag:a")) == (0, "released")
    assert lock.parse_release(0, "released").state == "released"
    # the folder stays (with a free record) so it is never seen without one; the next run acquires it
    assert record(d)[0] == lock.FREE
    assert sh(lock.acquire_command(str(d), "dag:b", 600)) == (0, "acquired")
    assert sh(lock.release_command(str(tmp_path / "never.lock"), "dag:b")) == (0, "not held")


def test_an_old_layout_folder_is_read(tmp_path):
    """Folders left by the mkdir-then-write lock: a two-field owner file, or no owner at all."""
    d = tmp_path / "ckpt.lock"
    d.mkdir()
    (d / "owner").write_text("dag:old 9999999999\n")
    assert sh(lock.acquire_command(str(d), "dag:new", 600)) == (3, "held dag:old 9999999999")
    (d / "owner").write_text("dag:old 5\n")
    assert sh(lock.acquire_command(str(d), "dag:new", 600)) == (0, "taken-over dag:old 5")
    empty = tmp_path / "empty.lock"
    empty.mkdir()
    assert sh(lock.acquire_command(str(empty), "dag:new", 600)) == (0, "taken-over unknown 0")
    assert record(empty)[0] == "dag:new"


def test_no_temporary_files_are_left_next_to_the_lock(tmp_path):
    d = tmp_path / "ckpt.lock"
    results = race(tmp_path, [lock.acquire_command(str(d), f"dag:r{i}", 600) for i in range(10)])
    assert sum(out == "acquired" for _, out in results) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("start.")) == ["ckpt.lock"]
    assert not [p.name for p in d.iterdir() if p.name.startswith(".tmp.")]


# ------------------------------------------------------------------------------------------------ races
@pytest.mark.parametrize("round_", range(3))
def test_twenty_contenders_on_a_free_lock_one_acquires(tmp_path, round_):
    d = tmp_path / "ckpt.lock"
    results = race(tmp_path, [lock.acquire_command(str(d), f"dag:r{i}", 600) for i in range(20)])
    winners = [i for i, (status, out) in enumerate(results) if (status, out) == (0, "acquired")]
    assert len(winners) == 1, results
    assert all(
        status == 3 and out == f"held dag:r{winners[0]} {record(d)[1]}"
        for status, out in (r for i, r in enumerate(results) if i != winners[0])
    ), results
    assert record(d)[0] == f"dag:r{winners[0]}"


@pytest.mark.parametrize("round_", range(3))
def test_twenty_contenders_on_an_expired_lock_one_takes_over(tmp_path, round_):
    d = tmp_path / "ckpt.lock"
    sh(lock.acquire_command(str(d), "dag:crashed", -10))
    results = race(tmp_path, [lock.acquire_command(str(d), f"dag:r{i}", 600) for i in range(20)])
    winners = [i for i, (status, out) in enumerate(results) if status == 0]
    assert len(winners) == 1, results
    assert results[winners[0]][1].startswith("taken-over dag:crashed ")
    assert record(d)[0] == f"dag:r{winners[0]}"
    assert all(
        out.startswith(f"held dag:r{winners[0]} ") for i, (_, out) in enumerate(results) if i != winners[0]
    ), results


def test_renewal_racing_take_overs_of_an_expired_lease_has_one_winner(tmp_path):
    """The holder renewing its run-out lease while others take it over: one of them gets it."""
    for _ in range(3):
        d = tmp_path / "ckpt.lock"
        shutil.rmtree(d, ignore_errors=True)
        sh(lock.acquire_command(str(d), "dag:slow", -10))
        commands = [lock.renew_command(str(d), "dag:slow", 600)] * 5
        commands += [lock.acquire_command(str(d), f"dag:r{i}", 600) for i in range(15)]
        results = race(tmp_path, commands)
        won = [i for i, (status, _) in enumerate(results) if status == 0]
        holder = record(d)[0]
        if holder == "dag:slow":  # the holder's renewal won: no take-over, all others refused
            assert all(results[i][1].startswith("renewed ") for i in won), results
            assert all(status == 3 for status, _ in results[5:]), results
        else:  # one take-over won: every renewal says lost, to that holder
            assert [results[i][1].split()[0] for i in won] == ["taken-over"], results
            assert all(out.startswith(f"lost {holder} ") for _, out in results[:5]), results


def test_the_lock_folder_is_never_seen_without_its_owner_record(tmp_path):
    """A reader looking all the time while contenders create, take over and release the lock."""
    d = tmp_path / "ckpt.lock"
    seen_without_owner: list[str] = []
    seen = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal seen
        while not stop.is_set():
            try:  # hold the folder itself, so a rename of it away does not look like a missing file
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                seen += 1
                os.stat("owner", dir_fd=fd)
            except FileNotFoundError:
                seen_without_owner.append(str(sorted(os.listdir(fd))))
            finally:
                os.close(fd)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for round_ in range(15):
            if d.exists():  # start again from no lock: moved away in one rename, so not a false alarm
                d.rename(tmp_path / f"old.{round_}")
            commands = [
                lock.acquire_command(str(d), f"dag:r{round_}-{i}", -1 if i % 2 else 600) for i in range(8)
            ]
            commands += [lock.release_command(str(d), f"dag:r{round_}-{i}") for i in range(4)]
            race(tmp_path, commands)
    finally:
        stop.set()
        reader.join()
    assert seen > 0  # the reader did look while the folder existed
    assert seen_without_owner == []


# ---------------------------------------------------------------------------------------- values/parse
def test_owner_token_is_safe_and_values_are_checked():
    token = lock.owner_token("pythia_pretrain", "manual__2026-11-27T10:00:00+00:00 ;rm")
    assert " " not in token and ";" not in token
    with pytest.raises(UnsafeValueError):
        lock.acquire_command("/fsx/x;rm -rf /", "a", 1)
    for bad in ("", "a b", "$(reboot)", lock.FREE, "unknown"):
        with pytest.raises(UnsafeValueError):
            lock.renew_command("/fsx/x.lock", bad, 1)
    with pytest.raises(UnsafeValueError):
        lock.acquire_command("/fsx/x.lock", "a", "600; reboot")  # type: ignore[arg-type]


def test_a_quoted_path_with_odd_but_allowed_characters(tmp_path):
    d = tmp_path / "run=1,a@b+c%d.lock"
    assert sh(lock.acquire_command(str(d), "dag:a", 600)) == (0, "acquired")
    assert record(d)[0] == "dag:a"


def test_parse_refuses_failures_and_unexpected_answers():
    with pytest.raises(RuntimeError, match="unreadable"):
        lock.parse_acquire(5, "error unreadable lock record in /x")
    with pytest.raises(RuntimeError):
        lock.parse_renew(0, "acquired")  # a renewal never acquires
    with pytest.raises(RuntimeError):
        lock.parse_acquire(0, "")
    assert lock.parse_release(0, "not ours: dag:b").holder == "dag:b"
    assert lock.parse_release(0, "not held").state == "not-held"


class ShellHook:
    """The Slurm hook's ``run`` on this machine's shell (the login node's role)."""

    def run(self, command: str, check: bool = True):
        result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=20)
        return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("state", "freed"), [("failed", True), ("success", True), ("running", False), (None, False)]
)
def test_the_continuation_frees_only_the_lease_of_an_ended_dag_run(tmp_path, monkeypatch, state, freed):
    """A person marked the DAG run failed: its release_lock never ran and its lease would block the run's
    continuation for hours. The survey frees it for that DAG run only; a live or unknown one keeps it."""
    import airflow.sdk
    from airflow.sdk.api.datamodels._generated import DagRunState as SdkDagRunState

    from neoxflow.pipeline import connections, record_tasks

    holder = lock.owner_token("pythia_pretrain", "manual__2026-12-02T21:00:00+00:00")
    assert lock.owner_dag_run(holder) == ("pythia_pretrain", "manual__2026-12-02T21:00:00+00:00")
    assert lock.owner_dag_run("someone-else") is None
    lock_dir = str(tmp_path / "run.lock")
    assert sh(lock.acquire_command(lock_dir, holder, 3600)) == (0, "acquired")
    asked = []

    class TaskInstance:  # the running task's Task SDK answer: the SDK's own generated enum, not a str
        @staticmethod
        def get_dagrun_state(dag_id, run_id):
            asked.append((dag_id, run_id))
            if state is None:
                raise LookupError("no such DAG run")
            return SdkDagRunState(state)

    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": TaskInstance()})
    monkeypatch.setattr(connections, "slurm_hook", ShellHook)
    assert record_tasks.live_lease(lock_dir, holder) == (None if freed else holder)
    assert asked == [("pythia_pretrain", "manual__2026-12-02T21:00:00+00:00")]
    now_holder = lock.live_holder(sh(lock.state_command(lock_dir))[1], time.time())
    assert now_holder == (None if freed else holder)
    # a holder that is no DAG run is never asked about, nor freed
    assert record_tasks.live_lease(lock_dir, "someone-else") == "someone-else" and len(asked) == 1
