"""A validating dataset is reused only when it was built from the run's shard selection."""

from neoxflow.data.shards import DEFAULT_URL_TEMPLATE, compact_indices
from neoxflow.pipeline.tasks import selection_mismatch

TOKENS = "/fsx/data/c4/tokens"
DATA = "/fsx/data/c4_openwebtext/c4_openwebtext_text_document"


def _plan(stems: list[str]) -> dict:
    """A plan selecting these shards (its dataset names them in the form's syntax, as plans do)."""
    indices = [int(stem.split(".")[1].split("-")[0]) for stem in stems]
    dataset = {"shards": compact_indices(indices), "url_template": DEFAULT_URL_TEMPLATE}
    return {"layout": {"data_path": DATA, "tokens_dir": TOKENS}, "dataset": dataset}


def _summary(stems: list[str]) -> dict:
    datasets = {DATA: {"documents": 10, "tokens": 100}}
    datasets.update({f"{TOKENS}/{s}_text_document": {"documents": 1, "tokens": 10} for s in stems})
    return {"ok": True, "datasets": datasets}


def test_same_selection_is_reused():
    stems = ["c4-train.00000-of-01024", "c4-train.00001-of-01024"]
    assert selection_mismatch(_summary(stems), _plan(list(reversed(stems)))) is None


def test_other_selection_is_rebuilt_naming_the_difference():
    why = selection_mismatch(
        _summary(["c4-train.00000-of-01024", "c4-train.00001-of-01024"]),
        _plan(["c4-train.00000-of-01024", "c4-train.00002-of-01024"]),
    )
    assert why == (
        "it was built from other shards (missing c4-train.00002-of-01024_text_document; "
        "not selected c4-train.00001-of-01024_text_document)"
    )


def test_a_summary_without_shards_is_not_trusted():
    assert selection_mismatch({"ok": True, "datasets": {DATA: {}}}, _plan(["c4-train.00000-of-01024"]))
