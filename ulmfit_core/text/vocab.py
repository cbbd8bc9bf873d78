"""Vocabulary: merge per-shard counts, build fastai's vocab, encode token shards to ids.

The vocab is fastai's `make_vocab` (written out here so that building it does not load torch):
tokens seen at least `min_freq` times, most frequent first (ties in first-occurrence order), at
most `max_vocab`, special tokens first, padded with "xxfake" to a multiple of 8. It is stored as
a JSON list in index order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..run.layout import atomic_path, read_json, write_json
from .data import read_shard
from .rules import SPECIAL_TOKENS

UNK_ID, PAD_ID = 0, 1
FAKE = "xxfake"


def merge_counts(count_paths: Iterable[str | Path]) -> Counter:
    """Sum per-shard count tables, in shard order (which keeps fastai's tie order)."""
    total: Counter = Counter()
    for path in count_paths:
        table = read_shard(path)
        total.update(dict(zip(table.column("token").to_pylist(), table.column("count").to_pylist())))
    return total


class Vocab:
    """Index <-> token maps; unknown tokens (and the "xxfake" padding) map to xxunk."""

    def __init__(self, itos: Sequence[str]) -> None:
        if list(itos[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with fastai's special tokens {SPECIAL_TOKENS}")
        self.itos = list(itos)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if tok in self.stoi:
                raise ValueError(f"vocab lists {tok!r} twice (at {self.stoi[tok]} and {i})")
            if tok != FAKE:
                self.stoi[tok] = i

    @classmethod
    def from_counts(cls, counts: Counter, max_vocab: int = 60_000, min_freq: int = 3) -> "Vocab":
        frequent = [t for t, c in counts.most_common(max_vocab) if c >= min_freq]
        special = set(SPECIAL_TOKENS)
        itos = (SPECIAL_TOKENS + [t for t in frequent if t not in special])[:max_vocab]
        return cls(itos + [FAKE] * (8 - len(itos) % 8))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        get = self.stoi.get
        return np.fromiter((get(t, UNK_ID) for t in tokens), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.itos)

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        itos = read_json(path)
        if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
            raise ValueError(f"{path}: a vocab file must be a JSON list of strings")
        return cls(itos)


def numericalize_shard(token_path: str | Path, vocab: Vocab, out_path: str | Path) -> dict:
    """Replace the `tokens` column of a token shard by `ids` (list<int32>), in Arrow: the
    tokens are looked up in the vocab without becoming Python strings."""
    table = read_shard(token_path)
    tokens = table.column("tokens").combine_chunks()
    # "xxfake" padding is left out of the lookup, so a "xxfake" in the text is unknown, as
    # in `Vocab.encode` and fastai's Numericalize.
    known = pa.array([None if t == FAKE else t for t in vocab.itos], pa.string())
    flat = pc.fill_null(pc.index_in(tokens.flatten(), value_set=known), UNK_ID).cast(pa.int32())
    offsets = pc.subtract(tokens.offsets, tokens.offsets[0])
    out = table.drop_columns(["tokens"]).append_column("ids", pa.ListArray.from_arrays(offsets, flat))
    with atomic_path(out_path) as tmp:
        pq.write_table(out, tmp)
    unknown = pc.sum(pc.equal(flat, UNK_ID)).as_py() or 0
    return {"docs": table.num_rows, "tokens": len(flat), "unknown": unknown}
