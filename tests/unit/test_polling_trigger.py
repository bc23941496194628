"""The one poll loop (neoxflow.triggers.base) and the one backoff (neoxflow.backoff), without a cluster:
a failed probe is retried with the jittered backoff, never judged; a refused host key and a probe failing
past ``unreachable_timeout`` are ``error`` events; ``AGAIN`` polls again without sleeping."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from neoxflow import backoff
from neoxflow.backoff import jittered_backoff
from neoxflow.triggers import base
from neoxflow.triggers.base import AGAIN, PollingTrigger


def test_the_backoff_doubles_stops_at_the_cap_and_jitters(monkeypatch):
    monkeypatch.setattr(backoff.random, "uniform", lambda lo, hi: 1.0)
    assert [jittered_backoff(1.0, n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert jittered_backoff(10.0, 1, cap=15.0) == 15.0
    monkeypatch.undo()
    waits = {jittered_backoff(10.0, 1) for _ in range(50)}
    assert all(10.0 <= w <= 30.0 for w in waits) and len(waits) > 1


class Hook:
    closed = False

    async def close(self):
        self.closed = True


class Scripted(PollingTrigger):
    """Probes answer from a script: an exception is raised, anything else is judged."""

    SERIALIZED = ("poll_interval",)

    def __init__(self, script, poll_interval=0.0, unreachable_timeout=3600.0):
        super().__init__()
        self.script, self.poll_interval, self.unreachable_timeout = (
            list(script),
            poll_interval,
            unreachable_timeout,
        )
        self.hook, self.judged = Hook(), []

    def _hook(self):
        return self.hook

    async def _probe(self, hook):
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def _judge(self, hook, answer):
        self.judged.append(answer)
        return (
            {"event": "done", "answer": answer}
            if answer == "final"
            else (AGAIN if answer == "more" else None)
        )


async def events(trigger):
    return [e.payload async for e in trigger.run()]


async def test_failed_probes_back_off_then_the_answer_is_judged(monkeypatch):
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    monkeypatch.setattr(base.asyncio, "sleep", sleep)
    monkeypatch.setattr(base, "jittered_backoff", lambda poll, failures: 100 + failures)
    trigger = Scripted([OSError("down"), OSError("down"), "running", "more", "final"], poll_interval=5)
    assert await events(trigger) == [{"event": "done", "answer": "final"}]
    assert trigger.judged == ["running", "more", "final"]  # a failed probe is never judged
    assert sleeps == [101, 102, 5]  # backoff per failure; AGAIN polls at once
    assert trigger.hook.closed
    assert trigger.serialize() == (f"{__name__}.Scripted", {"poll_interval": 5})


async def test_a_refused_host_key_is_an_error_at_once():
    err = asyncssh.HostKeyNotVerifiable("bad key")
    (event,) = await events(Scripted([err, "final"]))
    assert event["event"] == "error" and "SSH host key rejected" in event["message"]


async def test_probes_failing_past_the_unreachable_timeout_are_an_error():
    trigger = Scripted([OSError("down")] * 1000, poll_interval=0.001, unreachable_timeout=0.05)
    (event,) = await asyncio.wait_for(events(trigger), 10)
    assert event == {"event": "error", "message": "cluster unreachable for 0s: down"}


@pytest.mark.parametrize("answers, expected", [([True, True, False, True], [(1,), (2,), None, (1,)])])
def test_the_unknown_streak_resets_at_the_first_answer_that_knows(answers, expected):
    trigger = Scripted([])
    seen = [trigger._unknown_for(a) for a in answers]
    assert [None if s is None else (s[0],) for s in seen] == expected


# a trigger row written by the release before the common base: same classpath, same keyword arguments
OLD_ROWS = {
    "neoxflow.triggers.slurm_job.SlurmJobTrigger": {
        "ssh_conn_id": "c",
        "job_id": "42",
        "start_day": "2026-01-01",
        "expected_tasks": ["42_0"],
        "log_path": "/fsx/j/slurm-42.out",
        "log_offset": 7,
        "poll_interval": 10.0,
        "unknown_timeout": 900.0,
        "unreachable_timeout": 3600.0,
        "cancel_on_kill": True,
        "use_sacct": True,
        "owner_token": None,
        "owner_path": None,
        "silent_alerted": False,
    },
    "neoxflow.triggers.checkpoint.CheckpointTrigger": {
        "ssh_conn_id": "c",
        "save_dir": "/fsx/ckpt",
        "listing_script": "/fsx/code/ckpt_listing.py",
        "listing_python": "python3",
        "after_iteration": 10,
        "expectation": None,
        "poll_interval": 30.0,
        "stall_window": None,
        "started_at": None,
        "unreachable_timeout": 3600.0,
    },
    "neoxflow.triggers.fsx.FsxImportTaskTrigger": {
        "task_id": "task-1",
        "aws_conn_id": "aws_default",
        "region_name": None,
        "poll_interval": 30.0,
        "max_unknown": 10,
    },
}


@pytest.mark.parametrize("classpath", sorted(OLD_ROWS))
def test_a_trigger_row_of_the_previous_release_still_deserialises(classpath):
    import importlib

    module, name = classpath.rsplit(".", 1)
    trigger = getattr(importlib.import_module(module), name)(**OLD_ROWS[classpath])
    assert isinstance(trigger, PollingTrigger)
    path, kwargs = trigger.serialize()
    assert path == classpath and {k: kwargs[k] for k in OLD_ROWS[classpath]} == OLD_ROWS[classpath]
    added = {k: v for k, v in kwargs.items() if k not in OLD_ROWS[classpath]}
    assert added == NEW_KWARGS.get(classpath, {})  # arguments added since: at their defaults


NEW_KWARGS = {"neoxflow.triggers.slurm_job.SlurmJobTrigger": {"array_log": None, "task_offsets": None}}
