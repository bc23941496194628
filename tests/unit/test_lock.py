"""The FSx lease lock, run by a real bash on a real folder (what the login node does)."""

import subprocess

import pytest

from neoxflow.pipeline import lock
from neoxflow.slurm.validate import UnsafeValueError


def sh(cmd: str) -> tuple[int, str]:
    result = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=10)
    return result.returncode, result.stdout.strip()


def test_first_acquires_second_is_refused_owner_renews(tmp_path):
    d = str(tmp_path / "ckpt.lock")
    assert sh(lock.acquire_command(d, "dag:run1", 600)) == (0, "acquired")
    status, out = sh(lock.acquire_command(d, "dag:run2", 600))
    answer = lock.parse_acquire(status, out)
    assert not answer.acquired and answer.holder == "dag:run1"
    assert sh(lock.acquire_command(d, "dag:run1", 600)) == (0, "renewed")


def test_expired_lease_is_taken_over(tmp_path):
    d = str(tmp_path / "ckpt.lock")
    assert sh(lock.acquire_command(d, "dag:crashed", -1))[0] == 0  # a lease that already ran out
    assert sh(lock.acquire_command(d, "dag:next", 600)) == (0, "taken-over dag:crashed")


def test_release_only_by_the_holder(tmp_path):
    d = str(tmp_path / "ckpt.lock")
    sh(lock.acquire_command(d, "dag:a", 600))
    assert sh(lock.release_command(d, "dag:b")) == (0, "not ours: dag:a")
    assert (tmp_path / "ckpt.lock").exists()
    assert sh(lock.release_command(d, "dag:a")) == (0, "released")
    assert not (tmp_path / "ckpt.lock").exists()


def test_owner_token_is_safe_and_paths_are_checked():
    token = lock.owner_token("pythia_pretrain", "manual__2026-11-27T10:00:00+00:00 ;rm")
    assert " " not in token and ";" not in token
    with pytest.raises(UnsafeValueError):
        lock.acquire_command("/fsx/x;rm -rf /", "a", 1)
