"""The shape of a slice resumed after a node failure: spares keep the world size, shrinking is the last
resort (issue 17, item 8: a run that keeps its world size keeps its sums, so its model stays identical)."""

from __future__ import annotations

import logging
import shlex
from types import SimpleNamespace

import pytest

from neoxflow.operators.pipeline import PretrainTrainOperator, failed_nodes, usable_nodes
from neoxflow.slurm import commands


class FakeSinfo:
    """Answers the node listings as Slurm would for a partition of ``nodes``, ``down`` unhealthy."""

    def __init__(self, nodes: list[str], down: list[str]):
        self.nodes, self.down, self.commands = nodes, down, []

    def run(self, command: str, check: bool = True):
        self.commands.append(command)
        argv = shlex.split(command)
        if argv[:3] == ["scontrol", "show", "hostnames"]:
            assert argv[3] == "node[1-2]"
            return 0, b"node1\nnode2\n", b""
        assert argv[:5] == ["sinfo", "-h", "-N", "-o", "%N"], argv
        names = self.down if "-t" in argv else self.nodes
        if "-t" in argv:
            assert argv[argv.index("-t") + 1] == commands.UNHEALTHY_NODE_STATES
        return 0, "".join(f"{n}\n" for n in names).encode(), b""


def shape(nodes: list[str], down: list[str], excluded: list[str], *, wanted=2, shrink=True) -> int:
    profile = SimpleNamespace(
        cluster=SimpleNamespace(nodes=wanted, partition="debug", shrink_on_node_failure=shrink),
    )
    fake_self = SimpleNamespace(
        _plan=SimpleNamespace(slice=SimpleNamespace(nodes=wanted), load_profile=lambda: profile),
        hook=FakeSinfo(nodes, down),
        log=logging.getLogger("test"),
    )
    return PretrainTrainOperator._resume_shape(fake_self, excluded)


def test_a_spare_keeps_the_world_size():
    assert shape(["node1", "node2", "node3"], ["node2"], ["node2"]) == 2


def test_without_a_spare_the_run_shrinks_only_when_the_profile_allows_it():
    assert shape(["node1", "node2"], ["node2"], ["node2"]) == 1
    assert shape(["node1", "node2"], ["node2"], ["node2"], shrink=False) == 2  # it queues for nodes


def test_an_excluded_node_that_came_back_is_still_not_counted():
    # node2 was resumed by an admin, but the run excludes it: only node1 and node3 are usable
    assert shape(["node1", "node2", "node3"], [], ["node2"], wanted=3) == 2
    assert shape(["node1", "node2", "node3"], [], ["node2"], wanted=3, shrink=False) == 3


def test_node_listings_are_quoted_and_scoped_to_the_partition():
    hook = FakeSinfo(["node1", "node2", "node3"], ["node3"])
    assert usable_nodes(hook, "debug", ["node1"]) == 1
    assert all("-p debug" in c for c in hook.commands)
    assert failed_nodes(hook, "node[1-2]") == []
    with pytest.raises(Exception, match="nodelist"):
        commands.hostnames_command("node1; rm -rf /")
    with pytest.raises(Exception, match="partition"):
        commands.node_names_command("debug$(id)")
