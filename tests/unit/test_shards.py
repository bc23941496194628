"""Shard selection and manifests (neoxflow.data.shards): pure, no services."""

from __future__ import annotations

import pytest

from neoxflow.data.shards import (
    DEFAULT_URL_TEMPLATE,
    ManifestEntry,
    ShardSelection,
    ShardSelectionError,
    build_manifest,
    build_tokenize_manifest,
    format_manifest,
    shard_stem,
    tokenizer_entry,
    train_shard_name,
    validation_shard_name,
)
from tests.unit.manifest_reader import parse_manifest


def test_default_is_the_recipes_four_train_shards():
    selection = ShardSelection.parse()
    assert selection.train == (0, 1, 2, 3)
    assert selection.validation == ()
    assert selection.url_template == DEFAULT_URL_TEMPLATE
    assert ShardSelection.parse(None).train == (0, 1, 2, 3)
    assert ShardSelection.parse("subset").train == (0, 1, 2, 3)


def test_shard_names_follow_allenai_c4():
    assert train_shard_name(0) == "c4-train.00000-of-01024.json.gz"
    assert train_shard_name(1023) == "c4-train.01023-of-01024.json.gz"
    assert validation_shard_name(7) == "c4-validation.00007-of-00008.json.gz"
    url = ShardSelection.parse().url(train_shard_name(0))
    assert url == "https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.00000-of-01024.json.gz"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8, tuple(range(8))),
        ("8", tuple(range(8))),
        (" 2 ", (0, 1)),
        ("0,5,7", (0, 5, 7)),
        ("7,0,5", (0, 5, 7)),
        ("0-15", tuple(range(16))),
        ("0-2,10,20-21", (0, 1, 2, 10, 20, 21)),
        ([3, 1], (1, 3)),
        ("1023", tuple(range(1023))),
        ("1020-1023", (1020, 1021, 1022, 1023)),
    ],
)
def test_train_selection_forms(value, expected):
    assert ShardSelection.parse(value).train == expected


def test_all_selects_1024_shards():
    selection = ShardSelection.parse("all")
    assert selection.train == tuple(range(1024))
    assert len(selection.names()) == 1024
    assert selection.names()[-1] == "c4-train.01023-of-01024.json.gz"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        (False, ()),
        (0, ()),
        ("none", ()),
        (True, tuple(range(8))),
        ("all", tuple(range(8))),
        (2, (0, 1)),
        ("3,5", (3, 5)),
        ("6-7", (6, 7)),
    ],
)
def test_validation_selection_forms(value, expected):
    assert ShardSelection.parse("subset", validation=value).validation == expected


@pytest.mark.parametrize(
    ("shards", "validation", "field", "fragment"),
    [
        ("1024-1025", None, "shards", "outside 0..1023"),
        ("1025", None, "shards", "outside 0..1024"),
        ("0,5,5", None, "shards", "appears twice"),
        ("0-3,2", None, "shards", "appears twice"),
        ("five", None, "shards", "not a non-negative integer"),
        ("1;rm -rf /", None, "shards", "not a non-negative integer"),
        ("-3", None, "shards", "not a non-negative integer"),
        ("5-2", None, "shards", "ends before it starts"),
        ("0", None, "shards", "selects no train shard"),
        ([1, "2"], None, "shards", "is not an integer"),
        ([True], None, "shards", "is not an integer"),
        (3.5, None, "shards", "expected a string"),
        ("subset", 9, "validation", "outside 0..8"),
        ("subset", "0,8", "validation", "outside 0..7"),
        ("subset", "1,1", "validation", "appears twice"),
    ],
)
def test_bad_selections_name_the_field(shards, validation, field, fragment):
    with pytest.raises(ShardSelectionError) as info:
        ShardSelection.parse(shards, validation=validation)
    assert str(info.value).startswith(f"{field}:")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("http://mirror/en/", "exactly once"),
        ("http://mirror/{name}/{name}", "exactly once"),
        ("http://mirror/{shard}", "exactly once"),
        ("ftp://mirror/{name}", "scheme 'ftp'"),
        ("http://mirror/ {name}", "whitespace"),
        ("http://mirror/{name", "not a valid template"),
    ],
)
def test_url_template_is_validated(template, fragment):
    with pytest.raises(ShardSelectionError) as info:
        ShardSelection.parse(url_template=template)
    assert str(info.value).startswith("url_template:")
    assert fragment in str(info.value)


def test_manifest_has_url_s3_and_fsx_per_shard():
    selection = ShardSelection.parse("0,2", validation=1, url_template="http://127.0.0.1:8000/c4/en/{name}")
    entries = build_manifest(selection, s3_bucket="neox-data", s3_prefix="/c4/en/", fsx_dir="/fsx/data/c4/")
    assert [e.name for e in entries] == [
        "c4-train.00000-of-01024.json.gz",
        "c4-train.00002-of-01024.json.gz",
        "c4-validation.00000-of-00008.json.gz",
    ]
    first = entries[1]
    assert first.source == "http://127.0.0.1:8000/c4/en/c4-train.00002-of-01024.json.gz"
    assert first.s3_uri == "s3://neox-data/c4/en/c4-train.00002-of-01024.json.gz"
    assert first.fsx_path == "/fsx/data/c4/c4-train.00002-of-01024.json.gz"
    text = format_manifest(entries)
    assert text.count("\n") == 3
    assert text.splitlines()[1].split("\t") == [first.name, first.source, first.s3_uri, first.fsx_path]
    assert parse_manifest(text) == entries


def test_manifest_refuses_bad_destinations():
    selection = ShardSelection.parse()
    with pytest.raises(ShardSelectionError, match="^s3_bucket:"):
        build_manifest(selection, s3_bucket="Bad_Bucket", fsx_dir="/fsx")
    with pytest.raises(ShardSelectionError, match="^fsx_dir:.*absolute"):
        build_manifest(selection, s3_bucket="bucket", fsx_dir="fsx/data")
    with pytest.raises(ShardSelectionError, match="^fsx_dir:"):
        build_manifest(selection, s3_bucket="bucket", fsx_dir="/fsx/../etc")
    with pytest.raises(ShardSelectionError, match="^fsx_dir:"):
        build_manifest(selection, s3_bucket="bucket", fsx_dir="/fsx/$(reboot)")
    with pytest.raises(ShardSelectionError, match="^s3_prefix:"):
        build_manifest(selection, s3_bucket="bucket", s3_prefix="c4\ten", fsx_dir="/fsx")


def test_tokenizer_takes_the_same_path():
    entry = tokenizer_entry(
        "https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/20B_tokenizer.json",
        s3_bucket="neox-data",
        fsx_dir="/fsx/tokenizers",
    )
    assert entry == ManifestEntry(
        name="20B_tokenizer.json",
        source="https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/20B_tokenizer.json",
        s3_uri="s3://neox-data/tokenizers/20B_tokenizer.json",
        fsx_path="/fsx/tokenizers/20B_tokenizer.json",
    )
    from_s3 = tokenizer_entry("s3://models/tok/20B_tokenizer.json", s3_bucket="neox-data", fsx_dir="/fsx/t")
    assert from_s3.source == "s3://models/tok/20B_tokenizer.json"
    with pytest.raises(ShardSelectionError, match="^tokenizer_source:"):
        tokenizer_entry("/local/20B_tokenizer.json", s3_bucket="neox-data", fsx_dir="/fsx/t")
    with pytest.raises(ShardSelectionError, match="^tokenizer_source:"):
        tokenizer_entry("https://host/dir/", s3_bucket="neox-data", fsx_dir="/fsx/t")


def test_tokenize_manifest_points_at_staged_files():
    entries = build_manifest(ShardSelection.parse(2), s3_bucket="neox-data", fsx_dir="/fsx/raw")
    tasks = build_tokenize_manifest(entries, tokens_dir="/fsx/tokens")
    assert [(t.input, t.output_prefix) for t in tasks] == [
        ("/fsx/raw/c4-train.00000-of-01024.json.gz", "/fsx/tokens/c4-train.00000-of-01024"),
        ("/fsx/raw/c4-train.00001-of-01024.json.gz", "/fsx/tokens/c4-train.00001-of-01024"),
    ]
    assert format_manifest(tasks).splitlines()[0].split("\t")[2] == "/fsx/tokens/c4-train.00000-of-01024"
    assert shard_stem("x.jsonl.zst") == "x"
    assert shard_stem("plain") == "plain"


@pytest.mark.parametrize("hostile", ["0-9999999999", "0-20000000", "5-1023,0-99999999999999999999"])
def test_a_huge_range_is_refused_before_it_is_expanded(hostile):
    """The bounds are checked before ``range`` is expanded: before, "0-9999999999" raised MemoryError."""
    with pytest.raises(ShardSelectionError, match="outside 0..1023"):
        ShardSelection.parse(hostile)


def test_overlapping_ranges_stop_expanding_at_the_first_duplicate():
    with pytest.raises(ShardSelectionError, match="appears twice"):
        ShardSelection.parse(",".join(["0-1023"] * 600))


def test_an_overlong_selection_is_refused_by_its_length():
    from neoxflow.data.shards import MAX_SELECTION_CHARS

    with pytest.raises(ShardSelectionError, match="characters"):
        ShardSelection.parse("0," * MAX_SELECTION_CHARS)


def test_the_form_pattern_takes_what_the_parser_takes_and_refuses_more_digits():
    import re

    from neoxflow.pipeline.request import SHARDS_PATTERN, form_params

    assert form_params()["shards"].schema["pattern"] == SHARDS_PATTERN
    pattern = re.compile(SHARDS_PATTERN)
    for good in ("", "subset", "all", "16", "0,5,7", "0-15", "1000-1023,3"):
        assert pattern.match(good), good
        if good:
            ShardSelection.parse(good)
    for bad in ("0-99999", "x", "0;rm -rf /", " 1", "1,", "-5"):
        assert not pattern.match(bad), bad
