"""Deterministic training samples from NeoX ``.bin/.idx`` datasets, for the stand-in trainer.

Like NeoX's GPT2Dataset, a sample is ``seq_length + 1`` consecutive tokens of a stream made by
concatenating the training documents in a shuffled order, consecutive samples overlapping by one token,
and samples are visited in a shuffled order. Like NeoX, the index is sized by the run: ``num_samples`` is
``train_iters x train_batch_size`` (megatron/data/data_utils.py, build_train_valid_test_data_loaders) and
both shuffles are seeded by it, so another ``train_iters`` gives another data order, as NeoX's index maps
(named ``..._{num_samples}ns_{seq_length}sl_{seed}s_...``) do. That is on purpose: a pipeline that changed
``train_iters`` between slices would silently train on another data order on GPUs, and the stand-in must
make the golden "sliced run == uninterrupted run" comparison fail the same way. Within one
``num_samples`` the order is fixed, so resuming at any iteration continues exactly.

How (memory stays small whatever the run length): the stream is a series of epochs, epoch ``e`` using its
own seeded permutation of the documents, and samples are shuffled within blocks of about one epoch (at
most MAX_BLOCK samples). Only document sizes are held in memory; tokens are read from the memory-mapped
``.bin`` on demand.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import mmidx_dataset
import numpy as np

MAX_BLOCK = 1 << 20


def split_bounds(split: str, num_docs: int) -> list[int]:
    """Document boundaries of NeoX's ``split`` weights ("969,30,1"), as get_train_valid_test_split_."""
    try:
        weights = [float(w) for w in str(split).replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(f"split {split!r} is not comma-separated numbers like '969,30,1'") from None
    weights = (weights + [0.0, 0.0, 0.0])[:3]
    total = sum(weights)
    if total <= 0 or min(weights) < 0:
        raise ValueError(f"split {split!r} must be non-negative weights with a positive sum")
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w / total * float(num_docs))))
    diff = bounds[-1] - num_docs
    return [0] + [b - diff for b in bounds[1:]]


class SampleStream:
    """Global sample index -> int64 array of ``seq_length + 1`` tokens, deterministic in ``seed``."""

    PARTS = ("train", "validation", "test")

    def __init__(
        self,
        prefixes: list[str],
        seq_length: int,
        seed: int,
        split: str = "969,30,1",
        part: int = 0,
        *,
        num_samples: int,
    ) -> None:
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.seq_length = seq_length
        self.num_samples = int(num_samples)
        self.prefixes = list(prefixes)
        self.seed = int(seed)
        self.readers = [self._open(p) for p in prefixes]
        self.part = part
        owners, items = [], []
        for r, reader in enumerate(self.readers):
            lo, hi = split_bounds(split, len(reader))[part : part + 2]
            owners.append(np.full(hi - lo, r, dtype=np.int32))
            items.append(np.arange(lo, hi, dtype=np.int64))
        self.doc_owner = np.concatenate(owners) if owners else np.zeros(0, np.int32)
        self.doc_item = np.concatenate(items) if items else np.zeros(0, np.int64)
        sizes = [np.asarray(r.sizes, dtype=np.int64)[it] for r, it in zip(self.readers, items, strict=True)]
        self.doc_sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self.tokens_per_epoch = int(self.doc_sizes.sum())
        if self.tokens_per_epoch < seq_length + 1:
            raise ValueError(
                f"{self.PARTS[part]} split of {', '.join(prefixes)} has {self.tokens_per_epoch} tokens, "
                f"fewer than one sample of seq_length + 1 = {seq_length + 1}"
            )
        # shuffle within blocks of about one epoch, capped so the permutation stays small (8 MiB)
        self.block = max(1, min(self.tokens_per_epoch // seq_length, MAX_BLOCK, self.num_samples))
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def index_name(self) -> str:
        """The name NeoX gives this index's maps (gpt2_dataset.py, _build_index_mappings), for the log."""
        name = ("train", "valid", "test")[self.part]
        return f"{self.prefixes[0]}_{name}_indexmap_{self.num_samples}ns_{self.seq_length}sl_{self.seed}s"

    @staticmethod
    def _open(prefix: str) -> mmidx_dataset.DatasetReader:
        if not os.path.exists(f"{prefix}.idx"):
            raise FileNotFoundError(
                f"data_path {prefix!r}: {prefix}.idx not found (give the prefix without .bin/.idx)"
            )
        return mmidx_dataset.DatasetReader(prefix)

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, cumulative token offsets) of epoch ``e``; a few are cached."""
        if e not in self._epochs:
            order = np.random.default_rng([self.seed, 0, e, self.num_samples]).permutation(
                len(self.doc_sizes)
            )
            cum = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(self.doc_sizes[order], out=cum[1:])
            self._epochs[e] = (order, cum)
            if len(self._epochs) > 4:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def _block_perm(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            self._blocks[b] = np.random.default_rng([self.seed, 1, b, self.num_samples]).permutation(
                self.block
            )
            if len(self._blocks) > 4:
                self._blocks.popitem(last=False)
        return self._blocks[b]

    def stream_tokens(self, start: int, count: int) -> np.ndarray:
        """``count`` tokens of the endless shuffled-document stream from token offset ``start``."""
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            e, off = divmod(start + filled, self.tokens_per_epoch)
            order, cum = self._epoch(e)
            d = int(np.searchsorted(cum, off, side="right")) - 1
            doc = int(order[d])
            within = off - int(cum[d])
            tokens = self.readers[self.doc_owner[doc]][int(self.doc_item[doc])]
            take = min(count - filled, len(tokens) - within)
            out[filled : filled + take] = tokens[within : within + take]
            filled += take
        return out

    def sample(self, g: int) -> np.ndarray:
        """Global sample ``g`` (the g-th one consumed by training): seq_length + 1 tokens.

        ``g`` must lie in the index (``0 <= g < num_samples``): a run never reads past
        ``train_iters x train_batch_size``, so a read beyond it is a bug in the caller.
        """
        if not 0 <= int(g) < self.num_samples:
            raise IndexError(f"sample {g} is outside the index of {self.num_samples} samples")
        b, r = divmod(int(g), self.block)
        s = b * self.block + int(self._block_perm(b)[r])
        return self.stream_tokens(s * self.seq_length, self.seq_length + 1)

    def batch(self, first: int, count: int) -> np.ndarray:
        """Samples ``first .. first+count-1`` stacked: int64 [count, seq_length + 1]."""
        return np.stack([self.sample(first + i) for i in range(count)])
