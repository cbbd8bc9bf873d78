"""Ingest: stream a source (`sources`) into Parquet shards of raw documents (id, split, label,
text). Documents that cannot be used (empty text, bytes that are not UTF-8) are skipped and
counted. A corpus without a labelled test split gets one: a seeded, stratified share of its
labelled train documents (`hold_out_test`).
"""

from __future__ import annotations

import heapq
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .config import TEST_SHARE, Columns
from .data import read_shard, seeded_unit
from .errors import DataError, check_stop
from .rundir import atomic_path
from .sources import raw_records, usable_text

RAW_SCHEMA = pa.schema(
    [("id", pa.string()), ("split", pa.string()), ("label", pa.string()), ("text", pa.string())]
)


@dataclass
class SkipLog:
    """Documents left out, by reason, with the first few ids of each for the report."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, doc_id: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(doc_id)

    def to_dict(self) -> dict:
        return {"total": sum(self.counts.values()), "by_reason": dict(self.counts),
                "examples": {k: list(v) for k, v in self.examples.items()}}


@dataclass
class IngestResult:
    shards: list[str]
    docs: int
    groups: dict  # "split/label" -> documents
    skipped: dict
    test_split: dict  # where the test split comes from (`hold_out_test`)


def iter_documents(source: Path, skips: SkipLog, columns: Columns = Columns()) -> Iterator[dict]:
    """Yield usable documents of `source` in its natural order; count the rest in `skips`."""
    for doc_id, split, label, raw in raw_records(source, columns):
        text, why = usable_text(raw)
        if why:
            skips.add(why, doc_id)
            continue
        yield {"id": doc_id, "split": split, "label": label, "text": text}


# Fewer training documents of a class than this draw a warning (the run's output, its report).
FEW_PER_CLASS = 5


def label_counts(groups: dict[str, int]) -> dict[str, dict[str, int]]:
    """{split: {label: documents}} of the labelled documents, from an ingest's "split/label"
    counts."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for group, n in groups.items():
        split, label = group.split("/", 1)
        if label != "-" and n:
            counts[split][label] = n
    return dict(counts)


def limit_per_group(docs: Iterable[dict], limit: int, seed: int) -> list[dict]:
    """Keep at most `limit` documents per (split, label), chosen by a seeded hash of the id.

    The choice does not depend on the order of the source; the kept documents stay in source
    order. Memory holds `limit` documents per group, never the corpus.
    """
    heaps: dict[tuple, list] = defaultdict(list)
    for order, doc in enumerate(docs):
        # A heap of the `limit` smallest draws: store negated draws so heap[0] is the largest.
        item = (-seeded_unit(seed, doc["id"], "sample"), order, doc)
        heap = heaps[(doc["split"], doc["label"])]
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    kept = [item for heap in heaps.values() for item in heap]
    return [doc for _, _, doc in sorted(kept, key=lambda item: item[1])]


def write_raw_shards(docs: Iterable[dict], out_dir: Path, shard_docs: int) -> list[Path]:
    """Write documents to `out_dir/part-NNNNN.parquet`, `shard_docs` per shard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("part-*.parquet"):
        stale.unlink()
    shards, buffer = [], []

    def flush():
        path = out_dir / f"part-{len(shards):05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(buffer, schema=RAW_SCHEMA), tmp)
        shards.append(path)
        buffer.clear()

    for doc in docs:
        check_stop("ingest")
        buffer.append(doc)
        if len(buffer) >= shard_docs:
            flush()
    if buffer:
        flush()
    return shards


def hold_out_test(shards: list[Path], share: float, seed: int) -> dict:
    """Give a corpus without labelled test documents a test split: of each label's train
    documents, the `share` (rounded, at least one kept for training) with the lowest seeded
    draws move to test, rewritten in place in the raw shards; the draws, not the shards or
    the order of the source, decide. No classifier trains on them. Returns what was held out,
    per label."""
    draws: dict[str, tuple[array, array]] = defaultdict(lambda: (array("d"), array("q")))
    for s, shard in enumerate(shards):
        table = read_shard(shard, ["id", "split", "label"])
        for row, (doc_id, split, label) in enumerate(zip(*(c.to_pylist() for c in table.columns))):
            if split == "train" and label is not None:
                draw, where = draws[label]
                draw.append(seeded_unit(seed, doc_id, "test-holdout"))
                where.append(s << 32 | row)
    held: dict[int, list[int]] = defaultdict(list)  # shard -> rows moved to test
    per_label = {}
    for label, (draw, where) in sorted(draws.items()):
        n = min(len(draw) - 1, int(share * len(draw) + 0.5))
        order = sorted(range(len(draw)), key=draw.__getitem__)[:n]
        for i in order:
            held[where[i] >> 32].append(where[i] & 0xFFFFFFFF)
        per_label[label] = n
    for s, rows in sorted(held.items()):
        check_stop("ingest")
        table = read_shard(shards[s])
        split = table.column("split").to_pylist()
        for row in rows:
            split[row] = "test"
        with atomic_path(shards[s]) as tmp:
            column = table.schema.get_field_index("split")
            pq.write_table(table.set_column(column, "split", pa.array(split, pa.string())), tmp)
    return {"from": "held out", "share": share, "seed": seed, "docs": per_label}


def ingest(source: Path, out_dir: Path, *, limit: int | None = None, seed: int = 0,
           shard_docs: int = 2000, columns: Columns = Columns(),
           test_share: float = TEST_SHARE) -> IngestResult:
    """Read `source` into raw shards under `out_dir`, holding out a test split when it has no
    labelled one; fail clearly when nothing usable is left."""
    skips = SkipLog()
    docs = iter_documents(source, skips, columns)
    if limit is not None:
        docs = limit_per_group(docs, limit, seed)
    groups: Counter = Counter()

    def counted(stream):
        for doc in stream:
            groups[f"{doc['split']}/{doc['label'] or '-'}"] += 1
            yield doc

    shards = write_raw_shards(counted(docs), out_dir, shard_docs)
    n_docs = sum(groups.values())
    if n_docs == 0:
        raise DataError(f"{source}: empty corpus (no usable documents; skipped: {dict(skips.counts)})")
    labelled = label_counts(groups)
    test_split = {"from": "corpus"}
    if "train" in labelled and "test" not in labelled:
        test_split = hold_out_test(shards, test_share, seed)
        for label, n in test_split["docs"].items():
            if n:
                groups[f"train/{label}"] -= n
                groups[f"test/{label}"] += n
    return IngestResult([str(p) for p in shards], n_docs, dict(sorted(groups.items())),
                        skips.to_dict(), test_split)
