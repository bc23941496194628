"""Reading a data manifest back, for tests that check what the plan's manifests say.

The product only writes manifests (``data/shards.format_manifest``) and names them by their hash; the
cluster's array jobs read them. Reading one back is a test's need alone, so the reader lives here.
"""

from __future__ import annotations

from neoxflow.data.shards import MANIFEST_COLUMNS, ManifestEntry, ShardSelectionError


def parse_manifest(text: str) -> list[ManifestEntry]:
    """The entries of a fetch/stage manifest's text (the inverse of ``format_manifest``)."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split("\t")
        if len(cols) != len(MANIFEST_COLUMNS):
            raise ShardSelectionError(
                f"manifest line {lineno}: expected {len(MANIFEST_COLUMNS)} columns, got {len(cols)}"
            )
        entries.append(ManifestEntry(*cols))
    return entries
