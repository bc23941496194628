"""A validating dataset is reused only when it was built from the run's shard selection."""

from neoxflow.pipeline.tasks import selection_mismatch

TOKENS = "/fsx/data/c4/tokens"
DATA = "/fsx/data/c4_openwebtext/c4_openwebtext_text_document"


def _plan(stems: list[str]) -> dict:
    return {"layout": {"data_path": DATA, "tokens_dir": TOKENS}, "data": {"shards": {"stems": stems}}}


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
