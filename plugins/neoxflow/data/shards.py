"""Which C4 shards a run uses, and where each one lives on its way to the tokenizer.

A pipeline run moves every shard through three places: the source (allenai/c4 on Hugging Face, a
mirror, or a local HTTP server in tests), S3 (the durable copy) and the FSx folder the cluster reads.
This module is pure: it turns the user's selection (trigger parameter or profile value) into a
validated :class:`ShardSelection`, and the selection into manifest entries, one per shard, that the
Slurm array tasks read line by line (``include/cluster/datamove.py`` parses the same format).

Accepted selections (``shards``):

* ``"subset"`` (default): the first 4 ``en`` train shards, the recipe's ``c4_subset``;
* a count ``N`` (``8`` or ``"8"``): the first N train shards;
* an explicit list ``"0,5,7"`` (or a Python list of ints), ranges allowed inside it: ``"0-15,32"``;
* ``"all"``: all 1024 train shards.

Validation shards (``validation``): ``False``/``None``/``0`` (none, default), ``True``/``"all"`` (all 8),
a count, or a list/range as above.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from string import Formatter
from urllib.parse import urlsplit

from neoxflow.slurm.validate import is_s3_bucket_name

C4_TRAIN_SHARDS = 1024
C4_VALIDATION_SHARDS = 8
SUBSET_SIZE = 4
DEFAULT_URL_TEMPLATE = "https://huggingface.co/datasets/allenai/c4/resolve/main/en/{name}"
ALLOWED_SCHEMES = ("http", "https", "s3", "file")
MANIFEST_COLUMNS = ("name", "source", "s3_uri", "fsx_path")
TOKENIZE_COLUMNS = ("name", "input", "output_prefix")

# Keys and paths travel in a tab-separated manifest and into shell-quoted arguments: keep them boring.
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+=@,-]+$")


class ShardSelectionError(ValueError):
    """A selection the user gave cannot be used; the message names the field and the bad value."""


def train_shard_name(index: int) -> str:
    """File name of train shard ``index`` (``c4-train.00000-of-01024.json.gz``)."""
    return f"c4-train.{index:05d}-of-{C4_TRAIN_SHARDS:05d}.json.gz"


def validation_shard_name(index: int) -> str:
    """File name of validation shard ``index`` (``c4-validation.00000-of-00008.json.gz``)."""
    return f"c4-validation.{index:05d}-of-{C4_VALIDATION_SHARDS:05d}.json.gz"


def _parse_int(token: str, field: str, whole: object) -> int:
    token = token.strip()
    if not token.isdigit():
        raise ShardSelectionError(f"{field}: {token!r} in {whole!r} is not a non-negative integer")
    return int(token)


def _parse_indices(value: object, *, field: str, total: int, default_count: int) -> tuple[int, ...]:
    """Turn one selection value into sorted, unique, in-range shard indices.

    Counts select the first N shards; lists and ranges select those exact indices. Duplicates are
    refused rather than silently merged: a duplicate usually means a typo in a hand-written list.
    """
    if value is None or value is False:
        return ()
    if value is True:
        return tuple(range(total))
    if isinstance(value, int):
        return _first_n(value, field=field, total=total)
    if isinstance(value, (list, tuple)):
        items: list[int] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ShardSelectionError(f"{field}: list item {item!r} is not an integer")
            items.append(item)
        return _check_explicit(items, field=field, total=total, whole=value)
    if not isinstance(value, str):
        raise ShardSelectionError(f"{field}: expected a string, count or list, got {type(value).__name__}")
    if len(value) > MAX_SELECTION_CHARS:
        raise ShardSelectionError(f"{field}: {len(value)} characters, more than {MAX_SELECTION_CHARS}")
    text = value.strip().lower()
    if text in ("", "none", "false", "no"):
        return ()
    if text == "subset":
        return _first_n(default_count, field=field, total=total)
    if text in ("all", "true", "yes"):
        return tuple(range(total))
    if text.isdigit():
        return _first_n(int(text), field=field, total=total)
    items = []
    for part in text.split(","):
        if "-" in part:
            lo_text, _, hi_text = part.partition("-")
            lo = _parse_int(lo_text, field, value)
            hi = _parse_int(hi_text, field, value)
            if hi < lo:
                raise ShardSelectionError(
                    f"{field}: range {part.strip()!r} in {value!r} ends before it starts"
                )
            if hi >= total:  # checked before the range is expanded: "0-9999999999" costs nothing
                raise ShardSelectionError(
                    f"{field}: range {part.strip()!r} in {value!r} is outside 0..{total - 1}"
                )
            items.extend(range(lo, hi + 1))
            if len(items) > total:  # overlapping ranges: a duplicate, refused below without expanding more
                break
        else:
            items.append(_parse_int(part, field, value))
    return _check_explicit(items, field=field, total=total, whole=value)


#: The longest selection text accepted (the form's ``maxLength`` too): 1024 shards written one by one.
MAX_SELECTION_CHARS = 5 * 1024


def _first_n(count: int, *, field: str, total: int) -> tuple[int, ...]:
    if count < 0 or count > total:
        raise ShardSelectionError(f"{field}: count {count} is outside 0..{total}")
    return tuple(range(count))


def _check_explicit(items: Sequence[int], *, field: str, total: int, whole: object) -> tuple[int, ...]:
    seen: set[int] = set()
    for index in items:
        if index < 0 or index >= total:
            raise ShardSelectionError(f"{field}: shard {index} in {whole!r} is outside 0..{total - 1}")
        if index in seen:
            raise ShardSelectionError(f"{field}: shard {index} appears twice in {whole!r}")
        seen.add(index)
    return tuple(sorted(seen))


def validate_url_template(template: str, *, field: str = "url_template") -> str:
    """Check a source URL template: a known scheme and exactly the one placeholder ``{name}``."""
    if not isinstance(template, str) or not template.strip():
        raise ShardSelectionError(f"{field}: must be a non-empty string")
    if any(ch.isspace() for ch in template):
        raise ShardSelectionError(f"{field}: {template!r} contains whitespace")
    try:
        fields = [f for _, f, _, _ in Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ShardSelectionError(f"{field}: {template!r} is not a valid template ({exc})") from None
    if fields != ["name"]:
        raise ShardSelectionError(f"{field}: {template!r} must contain the placeholder {{name}} exactly once")
    scheme = urlsplit(template).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise ShardSelectionError(
            f"{field}: scheme {scheme!r} of {template!r} is not one of {ALLOWED_SCHEMES}"
        )
    return template


def compact_indices(indices: list[int] | tuple[int, ...]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5-5,7-8"``: a selection in the form's syntax (plans and records).

    A lone shard is written as a one-shard range (``[3]`` -> ``"3-3"``): the form reads a bare number as a
    count (``"3"`` = the first three shards), so ``"3"`` would name another selection."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = None
    for i in [*ordered, None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(parts)


@dataclass(frozen=True)
class ShardSelection:
    """Validated choice of C4 shards for one run (indices sorted and unique)."""

    train: tuple[int, ...]
    validation: tuple[int, ...] = ()
    url_template: str = DEFAULT_URL_TEMPLATE

    @classmethod
    def parse(
        cls,
        shards: object = "subset",
        *,
        validation: object = None,
        url_template: str | None = None,
    ) -> ShardSelection:
        """Build a selection from user input; raise :class:`ShardSelectionError` naming the bad field."""
        train = _parse_indices(
            "subset" if shards is None else shards,
            field="shards",
            total=C4_TRAIN_SHARDS,
            default_count=SUBSET_SIZE,
        )
        if not train:
            raise ShardSelectionError(f"shards: {shards!r} selects no train shard")
        valid = _parse_indices(
            validation, field="validation", total=C4_VALIDATION_SHARDS, default_count=C4_VALIDATION_SHARDS
        )
        template = validate_url_template(url_template or DEFAULT_URL_TEMPLATE)
        return cls(train=train, validation=valid, url_template=template)

    def names(self) -> list[str]:
        """Shard file names, train first, in index order."""
        return [train_shard_name(i) for i in self.train] + [validation_shard_name(i) for i in self.validation]

    def url(self, name: str) -> str:
        return self.url_template.format(name=name)


@dataclass(frozen=True)
class ManifestEntry:
    """One file's journey: where it comes from, its S3 copy, and its place on FSx."""

    name: str
    source: str
    s3_uri: str
    fsx_path: str

    def line(self) -> str:
        return "\t".join((self.name, self.source, self.s3_uri, self.fsx_path))


@dataclass(frozen=True)
class TokenizeEntry:
    """One tokenizer task: a staged shard and the output prefix its ``.bin/.idx`` get."""

    name: str
    input: str
    output_prefix: str

    def line(self) -> str:
        return "\t".join((self.name, self.input, self.output_prefix))


def validate_bucket(bucket: str, *, field: str = "s3_bucket") -> str:
    if not is_s3_bucket_name(bucket):
        raise ShardSelectionError(f"{field}: {bucket!r} is not a valid S3 bucket name")
    return bucket


def validate_key_prefix(prefix: str, *, field: str = "s3_prefix") -> str:
    """A key prefix without leading/trailing slashes; empty means the bucket root."""
    prefix = (prefix or "").strip("/")
    if prefix and (not _SAFE_PATH_RE.match(prefix) or ".." in prefix.split("/")):
        raise ShardSelectionError(f"{field}: {prefix!r} may only hold letters, digits and ._/+=@,-")
    return prefix


def validate_abs_path(path: str, *, field: str) -> str:
    """An absolute POSIX path without shell or manifest metacharacters, normalised."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ShardSelectionError(f"{field}: {path!r} must be an absolute path")
    if not _SAFE_PATH_RE.match(path) or ".." in path.split("/"):
        raise ShardSelectionError(f"{field}: {path!r} may only hold letters, digits and ._/+=@,- (no '..')")
    return posixpath.normpath(path)


def _check_source(source: str, name: str) -> str:
    if any(ch in source for ch in "\t\r\n") or not source:
        raise ShardSelectionError(f"source of {name}: {source!r} is empty or holds a tab/newline")
    return source


def s3_uri(bucket: str, *parts: str) -> str:
    key = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return f"s3://{bucket}/{key}"


def build_manifest(
    selection: ShardSelection,
    *,
    s3_bucket: str,
    s3_prefix: str = "c4/en",
    fsx_dir: str,
) -> list[ManifestEntry]:
    """One manifest entry per selected shard: source URL, ``s3://bucket/prefix/name``, ``fsx_dir/name``."""
    bucket = validate_bucket(s3_bucket)
    prefix = validate_key_prefix(s3_prefix)
    folder = validate_abs_path(fsx_dir, field="fsx_dir")
    return [
        ManifestEntry(
            name=name,
            source=_check_source(selection.url(name), name),
            s3_uri=s3_uri(bucket, prefix, name),
            fsx_path=posixpath.join(folder, name),
        )
        for name in selection.names()
    ]


def tokenizer_entry(
    source: str, *, s3_bucket: str, s3_prefix: str = "tokenizers", fsx_dir: str
) -> ManifestEntry:
    """The tokenizer JSON takes the same path as a shard: a URL (or ``s3://``) -> S3 -> FSx."""
    scheme = urlsplit(source).scheme if isinstance(source, str) else ""
    if scheme not in ALLOWED_SCHEMES:
        raise ShardSelectionError(f"tokenizer_source: {source!r} must be one of {ALLOWED_SCHEMES} URLs")
    name = posixpath.basename(urlsplit(source).path)
    if not name or not _SAFE_PATH_RE.match(name):
        raise ShardSelectionError(f"tokenizer_source: {source!r} does not end in a usable file name")
    bucket = validate_bucket(s3_bucket)
    prefix = validate_key_prefix(s3_prefix)
    folder = validate_abs_path(fsx_dir, field="fsx_dir")
    return ManifestEntry(
        name=name,
        source=_check_source(source, name),
        s3_uri=s3_uri(bucket, prefix, name),
        fsx_path=posixpath.join(folder, name),
    )


def shard_stem(name: str) -> str:
    """``c4-train.00000-of-01024.json.gz`` -> ``c4-train.00000-of-01024`` (the tokenizer output stem)."""
    for suffix in (".json.gz", ".jsonl.gz", ".jsonl.zst", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def build_tokenize_manifest(entries: Iterable[ManifestEntry], *, tokens_dir: str) -> list[TokenizeEntry]:
    """Per-shard tokenizer tasks: input = the staged FSx file, output = ``tokens_dir/<stem>``.

    NeoX's preprocess script appends ``_text_document.{bin,idx}`` to the prefix.
    """
    folder = validate_abs_path(tokens_dir, field="tokens_dir")
    return [
        TokenizeEntry(name=e.name, input=e.fsx_path, output_prefix=posixpath.join(folder, shard_stem(e.name)))
        for e in entries
    ]


def format_manifest(entries: Iterable[ManifestEntry | TokenizeEntry]) -> str:
    """Manifest file text: one tab-separated line per array task, line i for ``SLURM_ARRAY_TASK_ID=i``."""
    return "".join(entry.line() + "\n" for entry in entries)
