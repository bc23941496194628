"""Tokenize C4-style JSON-lines shards into GPT-NeoX ``.bin``/``.idx`` files; a drop-in for NeoX's
``tools/datasets/preprocess_data.py``.

Why not NeoX's script: it reads through lm_dataformat, which tokenizes the wrong thing for allenai's
``.json.gz`` shards (whole JSON objects) and ``.jsonl.gz`` (raw lines), keeps no line numbers for errors,
writes its outputs in place (a crash leaves a half-written ``.bin`` under the final name), and spends
most of its time outside the tokenizer. This script takes the same flags and writes byte-identical
``<prefix>_<key>_document.{bin,idx}`` for the same documents, with:

* input: ``.jsonl``, ``.json`` (JSON lines), ``.jsonl.gz``/``.json.gz`` (gzip, multi-member),
  ``.jsonl.zst``/``.json.zst`` (zstd, multi-frame), streamed in bounded chunks; the ``--jsonl-keys``
  field of every line is tokenized (NeoX always reads ``text``, whatever the flag says);
* NeoX's document rules: empty strings dropped, whitespace-only documents kept, one item per
  document, EOD (the id of ``<|endoftext|>``) appended with ``--append-eod``;
* errors (truncated or corrupt compression, invalid UTF-8, invalid JSON, a missing or non-string field)
  name the file and line, exit non-zero, and leave nothing under the final names;
* speed: ``--workers`` processes parse and tokenize blocks of whole lines with an exact fast path of
  the tokenizer (:class:`tokenizer_engine.FastExactEncoder`); the main process only reads
  (decompresses), cuts the stream at newlines and writes.

Where the parts live: :mod:`jsonl_blocks` reads the inputs (decompression, blocks of whole lines,
documents with their line numbers); :mod:`tokenizer_engine` tokenizes (the exact fast path and plain
HF), with the pre-tokenizer patterns of :mod:`pretokenizer` and tiktoken's BPE where :mod:`rank_bpe`
proves it exact; :mod:`mmidx_dataset` writes the outputs. This script is the command line, the worker
pool and the driver.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path

# Our parallelism is --workers processes; the tokenizer must not add its own threads (equal-cores
# comparisons with NeoX, and no rayon pool inherited across fork).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy is only used for arrays here; an idle OpenBLAS thread pool in every worker spins on the cores
# the workers need (measured: ~2% of each worker's instructions).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Everything that imports numpy or tokenizers comes after the settings above (the forked workers inherit
# these modules, they import nothing themselves).
import jsonl_blocks  # noqa: E402
import mmidx  # noqa: E402
import mmidx_dataset  # noqa: E402
import numpy as np  # noqa: E402
from jsonl_blocks import Block, InputError, input_format, parse_block, read_blocks  # noqa: E402
from tokenizer_engine import UnsupportedTokenizer, make_encoder  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# Worker side: one job = a list of texts -> (token bytes, sizes) or an error for one document
# ---------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(
    vocab_file: str,
    engine: str,
    append_eod: bool,
    use_ftfy: bool,
    dtype: str,
    keys: list[str],
    tokenizer=None,
) -> None:
    enc = make_encoder(vocab_file, engine, dtype, tokenizer)
    eod = enc.pack([enc.hf.token_to_id("<|endoftext|>")]) if append_eod else b""
    fix = None
    if use_ftfy:
        import ftfy

        fix = ftfy.fix_text
    _WORKER.update(enc=enc, eod=eod, fix=fix, keys=keys)


def _encode_texts(texts: list[str]):
    """``("ok", tokens_bytes, sizes)`` or ``("error", index_in_texts, message)``."""
    enc, eod, fix = _WORKER["enc"], _WORKER["eod"], _WORKER["fix"]
    try:
        docs = enc.encode_many_bytes([fix(t) for t in texts] if fix is not None else texts)
    except Exception:  # e.g. a lone surrogate from a JSON escape: find the document, one at a time
        for i, text in enumerate(texts):
            try:
                enc.encode_bytes(fix(text) if fix is not None else text)
            except Exception as exc:
                return ("error", i, f"cannot tokenize: {type(exc).__name__}: {exc}")
        raise
    sizes = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) // enc.dtype.itemsize
    if eod:
        sizes += 1
        docs = chain.from_iterable(zip(docs, repeat(eod)))  # joined once below, no copy per document
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        return ("error", int(empty[0]), "document produced no tokens")
    return ("ok", b"".join(docs), sizes)


def _encode_block(block: Block):
    """One job: ``("ok", documents, bytes, [(tokens_bytes, sizes) per key])`` or ``("error", message)``
    naming the file and line."""
    keys = _WORKER["keys"]
    try:
        documents, texts, lines = parse_block(block, keys)
    except InputError as exc:
        return ("error", str(exc))
    outputs = []
    for k, key in enumerate(keys):
        result = _encode_texts(texts[k])
        if result[0] == "error":
            return ("error", f"{block.path}:{lines[k][result[1]]}: field {key!r}: {result[2]}")
        outputs.append(result[1:])
    return ("ok", documents, len(block.data), outputs)


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    documents: int = 0  # JSON lines read
    tokens: dict = field(default_factory=dict)  # per key
    items: dict = field(default_factory=dict)  # per key (documents written)
    text_bytes: int = 0  # bytes of the JSON lines read (decompressed)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        toks = sum(self.tokens.values())
        return (
            f"[preprocess_data] {self.documents} documents, {toks} tokens, "
            f"{self.text_bytes / elapsed / 1e6:.2f} MB/s, {toks / elapsed / 1e6:.3f} M tokens/s, "
            f"{elapsed:.1f} s"
        )


def output_prefix_for(output_prefix: str, key: str) -> str:
    """NeoX's naming: ``{output_prefix}_{key}_document`` (+ ``.bin``/``.idx``)."""
    return f"{output_prefix}_{key}_document"


def run(
    inputs: list[str],
    output_prefix: str,
    vocab_file: str,
    *,
    keys: tuple[str, ...] = ("text",),
    append_eod: bool = False,
    use_ftfy: bool = False,
    workers: int = 1,
    log_interval: int = 100,
    engine: str = "auto",
    log=None,
) -> Stats:
    """Tokenize ``inputs`` into ``{output_prefix}_{key}_document.{bin,idx}``; returns the counts.

    Output files appear only when everything succeeded (atomic rename); on any error none do."""
    from tokenizers import Tokenizer

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if use_ftfy:
        try:
            import ftfy  # noqa: F401
        except ImportError:
            raise SystemExit("--ftfy needs the 'ftfy' package, which is not installed") from None
    for path in inputs:
        input_format(path)  # fail on an unsupported name before any work
        if not os.path.isfile(path):
            raise InputError(f"{path}: input file not found")
    hf = Tokenizer.from_file(vocab_file)
    if append_eod and hf.token_to_id("<|endoftext|>") is None:
        raise ValueError(f"{vocab_file}: --append-eod needs an <|endoftext|> token, the tokenizer has none")
    dtype = mmidx.best_fitting_dtype(hf.get_vocab_size())
    log(f"[preprocess_data] vocab size {hf.get_vocab_size()}, dtype {dtype}, output prefix {output_prefix}")
    keys = tuple(keys)
    stats = Stats(tokens={k: 0 for k in keys}, items={k: 0 for k in keys})
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    writers = [mmidx_dataset.DatasetWriter(output_prefix_for(output_prefix, k), dtype) for k in keys]
    init_args = (vocab_file, engine, append_eod, use_ftfy, dtype.str, list(keys), hf)
    pool = None
    next_log = log_interval
    try:
        blocks = read_blocks(inputs)
        # Built once here and inherited by the forked workers (tokenizer, patterns, tables).
        _worker_init(*init_args)
        log(f"[preprocess_data] {_WORKER['enc'].describe()}")
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("fork").Pool(workers)
            results = _ordered_bounded(
                pool, blocks, max_in_flight_bytes=2 * workers * jsonl_blocks.BLOCK_BYTES
            )
        else:
            results = map(_encode_block, blocks)
        for result in results:
            if result[0] == "error":
                raise InputError(result[1])
            _, documents, nbytes, outputs = result
            stats.documents += documents
            stats.text_bytes += nbytes
            for k, (token_bytes, sizes) in enumerate(outputs):
                if sizes.size:
                    writers[k].add_documents(np.frombuffer(token_bytes, dtype=dtype), sizes)
                stats.tokens[keys[k]] += int(sizes.sum())
                stats.items[keys[k]] += len(sizes)
            if log_interval > 0 and stats.documents >= next_log:
                log(stats.line())
                next_log = (stats.documents // log_interval + 1) * log_interval
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    log(stats.line() + " (done)")
    return stats


def _ordered_bounded(pool, blocks: Iterator[Block], max_in_flight_bytes: int):
    """Like ``pool.imap`` (ordered) but with bounded read-ahead: imap's feeder thread would read the
    whole shard into memory ahead of the workers.

    Blocks are queued while the input bytes behind the oldest block stay under ``max_in_flight_bytes``
    plus that block's own size. So a block that takes long (one multi-MB document) does not idle the
    other workers while the results behind it wait: they go on with about as much input as that block
    holds (what one other worker gets through meanwhile). Memory stays bounded by the budget plus
    twice the largest block, whatever the shard's size."""
    in_flight: collections.deque = collections.deque()
    queued = 0
    for block in blocks:
        in_flight.append((pool.apply_async(_encode_block, (block,)), len(block.data)))
        queued += len(block.data)
        while queued - 2 * in_flight[0][1] >= max_in_flight_bytes:
            result, size = in_flight.popleft()
            queued -= size
            yield result.get()
    while in_flight:
        yield in_flight.popleft()[0].get()


def build_parser() -> argparse.ArgumentParser:
    """NeoX's flags (same names and defaults) plus ``--engine``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="comma-separated .jsonl/.json[.gz|.zst] files")
    g.add_argument("--jsonl-keys", nargs="+", default=["text"], help="JSON fields to tokenize (default text)")
    g.add_argument("--num-docs", type=int, default=None, help="accepted for NeoX compatibility; unused")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help="only HFTokenizer is supported")
    g.add_argument("--vocab-file", required=True, help="HF tokenizers JSON, e.g. 20B_tokenizer.json")
    g.add_argument("--merge-file", default=None, help="accepted for NeoX compatibility; unused")
    g.add_argument("--append-eod", action="store_true", help="append <|endoftext|> to every document")
    g.add_argument("--ftfy", action="store_true", help="clean text with ftfy.fix_text first")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    g.add_argument("--dataset-impl", default="mmap", choices=["lazy", "cached", "mmap"], help="only mmap")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=100, help="progress line every N documents")
    g.add_argument(
        "--engine",
        choices=["auto", "fast", "hf"],
        default="auto",
        help="auto: exact fast path when the tokenizer supports it (default); hf: plain Tokenizer.encode",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tokenizer_type != "HFTokenizer":
        print(
            f"error: --tokenizer-type {args.tokenizer_type} is not supported (HFTokenizer only)",
            file=sys.stderr,
        )
        return 2
    if args.dataset_impl != "mmap":
        print(f"error: --dataset-impl {args.dataset_impl} is not supported (mmap only)", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    inputs = [p for p in args.input.split(",") if p]
    try:
        stats = run(
            inputs,
            args.output_prefix,
            args.vocab_file,
            keys=tuple(args.jsonl_keys),
            append_eod=args.append_eod,
            use_ftfy=args.ftfy,
            workers=args.workers,
            log_interval=args.log_interval,
            engine=args.engine,
        )
    except (InputError, UnsupportedTokenizer, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "documents_read": stats.documents,
        "outputs": {
            output_prefix_for(args.output_prefix, k): {"documents": stats.items[k], "tokens": stats.tokens[k]}
            for k in args.jsonl_keys
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
