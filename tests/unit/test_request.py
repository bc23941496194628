"""The trigger form's fields: only a blank field means "the default"; every other value is checked and a
bad one is refused naming its field (issue 18 item 2)."""

from __future__ import annotations

import pytest

from neoxflow.pipeline.request import RequestError, parse_request


def refused(**form) -> dict[str, str]:
    with pytest.raises(RequestError) as err:
        parse_request({"run_name": "r", **form})
    return err.value.problems


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"profile": 0}, "profile"),  # was silently the local profile
        ({"time_limit": 0}, "time_limit"),  # was silently the profile's limit
        ({"shards": 0}, "shards"),  # was silently the subset
        ({"nodes": "²"}, "nodes"),  # a Unicode digit: was a bare ValueError from int()
        ({"gpus_per_node": "٣"}, "gpus_per_node"),
        ({"train_iters": False}, "train_iters"),
        ({"run_name": 0}, "run_name"),
        ({"time_limit": "0:00:00"}, "time_limit"),  # the form's pattern takes it; the launch refuses 0
        ({"time_limit": "0-00:00:00"}, "time_limit"),
    ],
)
def test_falsy_or_non_ascii_values_are_refused_naming_the_field(form, field):
    assert field in refused(**form)


def test_blank_fields_take_the_defaults():
    request = parse_request(
        {"run_name": "r", "profile": "", "shards": None, "nodes": "", "time_limit": None, "model_size": ""}
    )
    assert request.profile == "local" and request.shards.train == (0, 1, 2, 3)
    assert request.nodes is None and request.time_limit is None and request.model_size is None
    assert parse_request({"run_name": "r", "nodes": "3"}).nodes == 3
