"""Read numericalized shards back as documents, and split them reproducibly.

Splits are decided per document by a seeded hash of its id, so they do not depend on shard
order, worker count or which other documents were kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError

if TYPE_CHECKING:
    from ..run.layout import RunDir


def read_shard(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet shard. `pq.read_table` would go through pyarrow.dataset, which loads pandas
    into every worker that reads a shard."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def seeded_unit(seed: int, doc_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by (seed, id, purpose): a document's draw for one decision.

    Each decision (sampling, the LM split, the classifier split) has its own `purpose`, so that
    documents kept by a sample are not, say, all drawn into the same split.
    """
    digest = hashlib.blake2b(f"{purpose}:{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class Docs:
    """Documents as id arrays, with their ids and labels (None when unlabelled)."""

    doc_ids: list[str]
    ids: list[np.ndarray]
    labels: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(sum(len(d) for d in self.ids))

    def subset(self, keep: Sequence[bool]) -> "Docs":
        pick = [i for i, k in enumerate(keep) if k]
        return Docs([self.doc_ids[i] for i in pick], [self.ids[i] for i in pick],
                    [self.labels[i] for i in pick])

    def reversed(self) -> "Docs":
        """Every document read backwards (last token first), for a backward model (fastai)."""
        return Docs(self.doc_ids, [d[::-1].copy() for d in self.ids], self.labels)

    def split(self, valid_pct: float, seed: int, purpose: str) -> tuple["Docs", "Docs"]:
        """(train, valid): a document is in valid when its seeded draw is below `valid_pct`."""
        in_valid = [seeded_unit(seed, d, purpose) < valid_pct for d in self.doc_ids]
        return self.subset([not v for v in in_valid]), self.subset(in_valid)


def classifier_split(docs: Docs, valid_pct: float, seed: int,
                     train_labels: int | None = None) -> tuple[list[str], Docs, Docs]:
    """(labels, train, valid) of labelled reviews, refusing what the classifier cannot train on:
    fewer than two labels, or an empty training or validation split. With `train_labels`, a
    seeded, class-balanced sample of that many reviews (`label_sample`)."""
    labels = sorted({y for y in docs.labels if y is not None})
    if len(labels) < 2:
        raise DataError(f"classifier: need labelled train reviews of at least two labels, found "
                        f"{labels or 'none'}; add labelled train rows to the corpus")
    if train_labels is not None:
        return (labels, *label_sample(docs, labels, train_labels, valid_pct, seed))
    train, valid = docs.split(valid_pct, seed, "classifier-valid")
    if len(valid) == 0 or len(train) == 0:
        raise DataError(f"classifier: {len(docs)} labelled train reviews leave an empty "
                        f"{'validation' if len(valid) == 0 else 'training'} split "
                        f"({valid_pct:.0%} are held out); use more labelled documents")
    return labels, train, valid


def label_sample(docs: Docs, labels: list[str], n: int, valid_pct: float,
                 seed: int) -> tuple[Docs, Docs]:
    """(train, valid): a seeded, class-balanced sample of `n` labelled reviews, for a classifier
    with few labels. Each label gets n // k of them (k labels; the first n % k labels in sorted
    order one more): those with the lowest seeded draws, so a larger sample of the same seed
    contains a smaller one. Of each label's share, round(valid_pct x share) validate (at least
    one) and the rest train (at least one)."""
    k = len(labels)
    if n < 2 * k:
        raise DataError(f"--train-labels {n}: {k} labels need at least {2 * k} reviews, one to "
                        "train on and one to validate per label")
    if n > len(docs):
        raise DataError(f"--train-labels {n}: the corpus has {len(docs)} labelled train reviews")
    in_train, in_valid = [False] * len(docs), [False] * len(docs)
    for j, label in enumerate(labels):
        share = n // k + (j < n % k)
        pool = sorted((i for i, y in enumerate(docs.labels) if y == label),
                      key=lambda i: seeded_unit(seed, docs.doc_ids[i], "label-sample"))
        if len(pool) < share:
            raise DataError(f"--train-labels {n}: a balanced sample takes {share} reviews labelled "
                            f"'{label}', and the corpus has {len(pool)}; give at most "
                            f"{len(pool) * k}")
        n_valid = min(share - 1, max(1, round(valid_pct * share)))
        for rank, i in enumerate(pool[:share]):
            (in_valid if rank < n_valid else in_train)[i] = True
    return docs.subset(in_train), docs.subset(in_valid)


def _dataset(paths: Sequence[str | Path]):
    # Imported here: pyarrow.dataset pulls in pandas (about 50 MB), which the preprocessing
    # workers, importing this module through the stages, never need.
    import pyarrow.dataset as ds

    return ds.dataset([str(p) for p in paths], format="parquet")


def _split_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for chunk in column.chunks:
        if len(chunk):
            offsets = chunk.offsets.to_numpy()
            out.extend(np.split(chunk.flatten().to_numpy(), offsets[1:-1] - offsets[0]))
    return out


def load_docs(id_shards: Sequence[str | Path], splits: Sequence[str] | None = None,
              labelled: bool = False) -> Docs:
    """Documents of the id shards whose split is in `splits` (all when None)."""
    dataset = _dataset(id_shards)
    expr = None
    if splits is not None:
        expr = pc.field("split").isin(list(splits))
    if labelled:
        labelled_expr = pc.field("label").is_valid()
        expr = labelled_expr if expr is None else expr & labelled_expr
    table = dataset.to_table(columns=["id", "label", "ids"], filter=expr)
    return Docs(table.column("id").to_pylist(), _split_lists(table.column("ids")),
                table.column("label").to_pylist())


def training_docs(run: RunDir, **kwargs) -> Docs:
    """The documents of a run's id shards as its direction trains on them (reversed for
    backward); `kwargs` as `load_docs`'s."""
    docs = load_docs(run.shards(run.ids), **kwargs)
    return docs.reversed() if run.backwards else docs


def iter_raw_texts(raw_shards: Sequence[str | Path], splits: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(id, text) of the raw documents whose split is in `splits`, one shard in memory at a time."""
    for shard in raw_shards:
        table = _dataset([shard]).to_table(
            columns=["id", "text"], filter=pc.field("split").isin(list(splits)))
        yield from zip(table.column("id").to_pylist(), table.column("text").to_pylist())


def load_raw_labelled(raw_shards: Sequence[str | Path], split: str) -> tuple[list[str], list[str], list[str]]:
    """(ids, texts, labels) of the labelled raw documents of one split."""
    table = _dataset(raw_shards).to_table(
        columns=["id", "text", "label"], filter=(pc.field("split") == split) & pc.field("label").is_valid())
    return (table.column("id").to_pylist(), table.column("text").to_pylist(),
            table.column("label").to_pylist())
