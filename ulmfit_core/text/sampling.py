"""Which documents a run keeps and which it holds out, each decided by a seeded draw of the
document's id (`data.seeded_unit`), so that neither the order of the source, nor how it is cut
into files and shards, nor which worker reads what changes the choice: the `--limit` sample
(per file as it is read, then across files) and the held-out test split.
"""

from __future__ import annotations

import heapq
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import check_stop
from ..run.layout import atomic_path
from .data import read_shard, seeded_unit


def doc_group(doc: dict) -> str:
    """"split/label" ("-" for none): what the sample and the counts go by."""
    return f"{doc['split']}/{doc['label'] or '-'}"


def sample_draw(seed: int, doc: dict) -> float:
    return seeded_unit(seed, doc["id"], "sample")


def limit_per_group(docs: Iterable[dict], limit: int, seed: int) -> list[dict]:
    """Keep at most `limit` documents per (split, label), chosen by a seeded hash of the id.

    The choice does not depend on the order of the source; the kept documents stay in source
    order. Memory holds `limit` documents per group, never the corpus.
    """
    heaps: dict[tuple, list] = defaultdict(list)
    for order, doc in enumerate(docs):
        # A heap of the `limit` smallest draws: store negated draws so heap[0] is the largest.
        item = (-sample_draw(seed, doc), order, doc)
        heap = heaps[(doc["split"], doc["label"])]
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    kept = [item for heap in heaps.values() for item in heap]
    return [doc for _, _, doc in sorted(kept, key=lambda item: item[1])]


def limit_quotas(draws: list[dict[str, list[float]]], limit: int) -> Counter:
    """How many documents of each group each file keeps ({(file, group): n}), given the draws
    of the documents each kept of its own (`limit_per_group`): the `limit` lowest draws of a
    group across files, ties to the earlier file."""
    quota: Counter = Counter()
    for group in {g for file in draws for g in file}:
        ranked = sorted((d, i) for i, file in enumerate(draws) for d in file.get(group, []))
        for _, i in ranked[:limit]:
            quota[i, group] += 1
    return quota


def keep_lowest(docs: list[dict], quota: dict[str, int], seed: int) -> list[dict]:
    """Of each group, the `quota[group]` documents of lowest draws, in their order in `docs`."""
    keep = set()
    for group, n in quota.items():
        ranked = sorted((sample_draw(seed, d), j) for j, d in enumerate(docs) if doc_group(d) == group)
        keep.update(j for _, j in ranked[:n])
    return [d for j, d in enumerate(docs) if j in keep]


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
