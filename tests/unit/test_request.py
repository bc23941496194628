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


# ------------------------------------------------------------------------- the form a person fills in
# (issue 20 item 4): Airflow checks each field against its Param's JSON schema before it creates the run
# and shows a refusal as the raw schema error, so each description says the format in words.
def schema_refuses(name: str, value) -> bool:
    from airflow.sdk.definitions.param import ParamValidationError

    from neoxflow.pipeline.request import form_params

    try:
        form_params()[name].resolve(value)
    except ParamValidationError:
        return True
    return False


def test_every_field_describes_its_format_and_its_default():
    from neoxflow.pipeline.request import form_params

    for name, param in form_params().items():
        description = param.description or ""
        assert len(description) > 40, name
        if param.value is None or param.value == "":
            assert "Blank" in description or "Default" in description, name
        else:
            assert "Default" in description or name == "run_name", name
        assert not schema_refuses(name, param.value), f"{name}: the form's own default is refused"
    for name in ("nodes", "gpus_per_node", "train_iters", "checkpoint_interval"):
        assert "whole number from 1 to" in form_params()[name].description, name


def test_the_size_list_has_no_null_and_its_first_entry_names_the_default():
    from neoxflow.pipeline.request import PYTHIA_SIZES, form_params

    size = form_params()["model_size"]
    assert None not in size.schema["enum"] and "null" not in str(size.schema["type"])
    assert size.schema["enum"] == ["default", *PYTHIA_SIZES] and size.value == "default"
    assert "Default" in size.schema["values_display"]["default"]
    # not "": Airflow's form submits an empty field as null, which the string-typed list refuses
    assert "" not in size.schema["enum"]
    assert parse_request({"run_name": "r", "model_size": "default"}).model_size is None
    assert parse_request({"run_name": "r", "model_size": ""}).model_size is None  # REST callers' blank
    assert parse_request({"run_name": "r", "model_size": "160M"}).model_size == "160M"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("shards", "0-99999"),  # was accepted by the form and failed later in prepare.plan
        ("shards", "5000"),
        ("shards", "1025"),
        ("shards", "0 - 3"),
        ("time_limit", "04:99:00"),
        ("time_limit", "4h"),
        ("nodes", 0),
        ("nodes", 2000),
        ("gpus_per_node", 17),
        ("train_iters", 0),
        ("train_iters", 10**8),
        ("checkpoint_interval", 0),
        ("run_name", "Bad Name!"),
        ("model_size", "7B"),
    ],
)
def test_the_form_refuses_bad_values_before_a_run_exists(name, value):
    assert schema_refuses(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("shards", "0-1023"),
        ("shards", "1024"),
        ("shards", "0-3,8-11"),
        ("shards", None),
        ("time_limit", "1-12:00:00"),
        ("time_limit", None),
        ("nodes", None),
        ("nodes", 1024),
        ("train_iters", 143000),
        ("model_size", "12B"),
    ],
)
def test_the_form_takes_good_values(name, value):
    assert not schema_refuses(name, value)
