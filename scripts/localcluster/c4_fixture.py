#!/usr/bin/env python3
"""Small C4-format shards for tests and the demo, deterministic from a seed.

Real allenai/c4 ``en`` shards are ~316 MB of gzip each; the pipeline's tests need the same *format*
(gzip'd JSON lines with string fields ``text``, ``timestamp``, ``url``, named
``c4-train.{i:05d}-of-01024.json.gz``) with text varied enough to exercise a BPE tokenizer: paragraphs
separated by newlines, punctuation, numbers, capitalised names, some accents, curly quotes and dashes,
the odd emoji, and runs of spaces. The same seed gives byte-identical files (gzip mtime is fixed to 0 and
no file name is stored in the gzip header).

Usage::

    c4_fixture.py --out DIR [--train 4] [--validation 1] [--docs 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
from datetime import UTC, datetime, timedelta

TRAIN_TOTAL = 1024
VALIDATION_TOTAL = 8

_NOUNS = (
    "garden recipe market season library teacher river weekend kitchen project window morning village "
    "software engine budget festival museum student harbour coffee journey bicycle mountain storm company "
    "customer painting neighbour concert island lesson hospital chapter battery forest bridge camera "
    "council factory holiday ladder orchestra pattern quarter rocket signal ticket valley wallet"
).split()
_VERBS = (
    "builds finds opens carries remembers explains repairs visits chooses measures prepares shares "
    "discovers collects describes improves welcomes follows answers protects reviews organises"
).split()
_ADJECTIVES = (
    "quiet bright local early simple careful ancient modern friendly narrow generous practical curious "
    "heavy fresh rare steady familiar colourful reliable"
).split()
_ADVERBS = "quickly slowly carefully often rarely happily easily gently suddenly finally".split()
_NAMES = (
    "Anna Björn Chloé David Elena François Grace Hiroshi Isabel José Kofi Lena Mateo Noor Olga Priya".split()
)
_PLACES = "Boston Zürich Lisbon Kyoto Nairobi Montréal Oslo Austin Seville Melbourne Kraków Dublin".split()
_OPENERS = (
    "However,",
    "Meanwhile,",
    "In 2019,",
    "According to the council,",
    "Last year,",
    "For example,",
    "",
)
_SITES = "dailyharbor cityguide homecooking techdigest travelnotes gardenweekly localnews bookcorner".split()
_EXTRAS = (" 🙂", " — really", " (see below)", " “quoted”", " #tips", " 50% off!", " café", "  ", "\t")


def _sentence(rng: random.Random) -> str:
    subject = rng.choice((f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}", rng.choice(_NAMES)))
    opener = rng.choice(_OPENERS)
    if opener and subject.startswith("The "):
        subject = "the " + subject[4:]
    words = [
        opener,
        subject,
        rng.choice(_ADVERBS) if rng.random() < 0.3 else "",
        rng.choice(_VERBS),
        rng.choice(("a", "the", "every", "one", str(rng.randint(2, 2024)))),
        rng.choice(_ADJECTIVES) if rng.random() < 0.5 else "",
        rng.choice(_NOUNS) + ("s" if rng.random() < 0.3 else ""),
    ]
    if rng.random() < 0.4:
        words += ["in", rng.choice(_PLACES)]
    text = " ".join(w for w in words if w)
    if rng.random() < 0.08:
        text += rng.choice(_EXTRAS)
    return text + rng.choice((".", ".", ".", "!", "?", "..."))


def make_document(rng: random.Random, *, mean_sentences: int = 12) -> dict[str, str]:
    """One C4 record: paragraphs of sentences, a timestamp in 2019, a plausible URL."""
    paragraphs = []
    for _ in range(max(1, int(rng.expovariate(1 / 3)) + 1)):
        count = max(1, int(rng.gauss(mean_sentences / 3, 2)))
        paragraphs.append(" ".join(_sentence(rng) for _ in range(count)))
    stamp = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86400))
    slug = "-".join(rng.choice(_NOUNS) for _ in range(rng.randint(2, 4)))
    return {
        "text": "\n".join(paragraphs),
        "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "url": f"https://www.{rng.choice(_SITES)}.com/{slug}-{rng.randint(1, 99999)}",
    }


def shard_name(split: str, index: int) -> str:
    total = TRAIN_TOTAL if split == "train" else VALIDATION_TOTAL
    return f"c4-{split}.{index:05d}-of-{total:05d}.json.gz"


def write_shard(path: str, *, seed: int, docs: int) -> int:
    """Write one shard of ``docs`` documents to ``path`` (atomically); return its size in bytes."""
    rng = random.Random(seed)
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        for _ in range(docs):
            out.write(json.dumps(make_document(rng), ensure_ascii=False).encode("utf-8") + b"\n")
    os.replace(temp, path)
    return os.path.getsize(path)


def generate(
    out_dir: str, *, train: int = 4, validation: int = 0, docs: int = 200, seed: int = 0
) -> list[str]:
    """Write ``train`` train shards and ``validation`` validation shards; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for split, count in (("train", train), ("validation", validation)):
        for index in range(count):
            path = os.path.join(out_dir, shard_name(split, index))
            # one independent stream per shard: shard i does not change when the count changes
            write_shard(path, seed=_shard_seed(seed, split, index), docs=docs)
            paths.append(path)
    return paths


def _shard_seed(seed: int, split: str, index: int) -> int:
    return seed * 1_000_003 + (0 if split == "train" else 500_000) + index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the shards into")
    parser.add_argument("--train", type=int, default=4, help="number of train shards (from 00000)")
    parser.add_argument("--validation", type=int, default=0, help="number of validation shards")
    parser.add_argument("--docs", type=int, default=200, help="documents per shard")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.train <= TRAIN_TOTAL or not 0 <= args.validation <= VALIDATION_TOTAL or args.docs < 0:
        parser.error("--train must be 0..1024, --validation 0..8, --docs >= 0")
    for path in generate(
        args.out, train=args.train, validation=args.validation, docs=args.docs, seed=args.seed
    ):
        print(f"{path} {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
