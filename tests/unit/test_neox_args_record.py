"""GPT-NeoX accepts what neoxflow renders, for every Pythia size at 1x1, 1x8, 2x8, 4x8 and 16x8 GPUs
(issue 18 item 4). CI has no NeoX checkout: ``gpu_check/neox_args.py`` ran NeoX's own argument checks
(``NeoXArgs.from_ymls``, as every rank's launch does) and recorded each rendered config's hash with the
verdict. This fails when a rendered config changed since (re-run the recorder against a checkout) and
when a config neoxflow accepts was refused by NeoX or derived another batch split."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO

SPEC = importlib.util.spec_from_file_location("neox_args", REPO / "gpu_check" / "neox_args.py")
neox_args = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(neox_args)
RECORD = json.loads(neox_args.OUT.read_text())
RERUN = "re-run gpu_check/neox_args.py against a GPT-NeoX checkout (see its docstring) and commit the record"


def test_every_size_and_shape_is_recorded():
    shapes = {label for _, label, _ in neox_args.rendered_configs()}
    assert RECORD["shapes"] == sorted(shapes, key=RECORD["shapes"].index) and len(shapes) == 5
    assert set(RECORD["sizes"]) == {size for size, _, _ in neox_args.rendered_configs()}


CONFIGS = list(neox_args.rendered_configs())


@pytest.mark.parametrize(
    ("size", "shape", "cfg"), CONFIGS, ids=[f"{size}-{shape}" for size, shape, _ in CONFIGS]
)
def test_neox_accepted_the_config_neoxflow_renders_for_this_shape(size, shape, cfg):
    recorded = RECORD["sizes"][size][shape]
    assert cfg.config_hash == recorded["config_sha256"], (
        f"{size} at {shape}: the rendered config changed; {RERUN}"
    )
    if not cfg.ok:
        assert recorded["neoxflow"].startswith("refused"), (size, shape)
        return
    assert recorded["neoxflow"] == "accepted" and recorded["neox"] == "ok", (size, shape, recorded.get("why"))
    # NeoX derived the same batch split neoxflow wrote (global batch kept, GAS fitted to the shape)
    assert recorded["train_batch_size"] == cfg.config["train_batch_size"]
    assert recorded["gradient_accumulation_steps"] == cfg.config["gradient_accumulation_steps"]


def test_only_shapes_that_cannot_hold_the_model_are_refused():
    refused = sorted(
        (size, shape)
        for size, by in RECORD["sizes"].items()
        for shape, e in by.items()
        if e["neoxflow"] != "accepted"
    )
    assert refused == [("12B", "1x1"), ("6.9B", "1x1")]  # model parallel 4 and 2 need more than one GPU
