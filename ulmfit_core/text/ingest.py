"""Ingest: stream a source (`sources`) into Parquet shards of raw documents (id, split, label,
text). Documents that cannot be used (empty text, bytes that are not UTF-8) are skipped and
counted. A corpus without a labelled test split gets one: a seeded, stratified share of its
labelled train documents (`sampling.hold_out_test`).

Each file of a source is read on its own into shards of its own (`ingest_file`: the tasks that
read a dataset side by side), then `finish` joins what they read: the `--limit` sample across
files, the counts, the held-out test split. `ingest` does both in this process; the shards are
the same either way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import TEST_SHARE, Columns
from ..errors import DataError, check_stop
from ..run.layout import atomic_path
from ..run.storage import Location, opened
from .data import read_shard
from .sampling import doc_group, hold_out_test, keep_lowest, limit_per_group, limit_quotas, sample_draw
from .sources import Source, open_source, raw_records, usable_text

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


    @staticmethod
    def merged(logs: Iterable[dict]) -> dict:
        """One `to_dict` of several, their examples the first few in the order given."""
        skips = SkipLog()
        for log in logs:
            skips.counts.update(log["by_reason"])
            for reason, ids in log["examples"].items():
                skips.examples[reason] = (skips.examples[reason] + ids)[:5]
        return skips.to_dict()


@dataclass
class IngestResult:
    shards: list[str]
    docs: int
    groups: dict  # "split/label" -> documents
    skipped: dict
    test_split: dict  # where the test split comes from (`hold_out_test`)
    files: list[dict]  # per file of the source: its path, shards and documents


def iter_documents(path: Location, skips: SkipLog, columns: Columns = Columns(), id_prefix: str = "",
                   row_groups: tuple[int, ...] | None = None, first_row: int = 0) -> Iterator[dict]:
    """Yield usable documents of the file `path` (of a Parquet file's `row_groups`, the first
    of which starts at its row `first_row`) in their order; count the rest in `skips`."""
    for doc_id, split, label, raw in raw_records(path, columns, id_prefix, row_groups, first_row):
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


def write_raw_shards(docs: Iterable[dict], out_dir: Path, shard_docs: int,
                     prefix: str = "part-") -> list[Path]:
    """Write documents to `out_dir/{prefix}NNNNN.parquet`, `shard_docs` per shard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{prefix}{'[0-9]' * 5}.parquet"):
        stale.unlink()
    shards, buffer = [], []

    def flush():
        path = out_dir / f"{prefix}{len(shards):05d}.parquet"
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


@dataclass(frozen=True)
class Reading:
    """How a source's files are read into raw shards: at most `limit` documents per split and
    label (by seeded draw), `shard_docs` per shard, from `columns`; `test_share` of each label's
    train documents held out when there is no test split."""

    limit: int | None = None
    seed: int = 0
    shard_docs: int = 2000
    columns: Columns = Columns()
    test_share: float = TEST_SHARE


# A Parquet file of more rows than this is read in parts, each a run of its row groups.
PART_ROWS = 200_000


@dataclass(frozen=True)
class SourceFile:
    """One part of a source as its reader needs it (small: one goes to each task): a file, or a
    run of a Parquet file's row groups, whose first row is the file's row `first_row`."""

    path: Location
    prefix: str  # of its shards' names
    id_prefix: str  # of the ids of rows without an id column
    row_groups: tuple[int, ...] | None = None  # None: the whole file
    first_row: int = 0


def source_files(source: Source) -> list[SourceFile]:
    """The parts a source is read in, in order: each of its files, a Parquet file of more than
    PART_ROWS rows in runs of its row groups. Their shards are `part-NNNNN` when the source is
    one file read whole, else `part-PPPPP-NNNNN` (the part's place, then the shard's)."""
    pieces = [(path, *run) for path in source.files for run in row_group_runs(path)]
    many = source.dataset or len(pieces) > 1
    return [SourceFile(path, f"part-{p:05d}-" if many else "part-", source.id_prefix(path), groups,
                       first) for p, (path, groups, first) in enumerate(pieces)]


def row_group_runs(path: Location) -> list[tuple[tuple[int, ...] | None, int]]:
    """(row groups, first row) of each part of a file: one part, (None, 0), but for a Parquet file
    of more than PART_ROWS rows, read in runs of its row groups (a task each, in preprocessing
    and in scoring)."""
    if not path.name.lower().endswith(".parquet"):
        return [(None, 0)]
    try:
        with opened(path, random_access=True) as source:
            meta = pq.ParquetFile(source).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    runs, groups, rows, first = [], [], 0, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if groups and rows + n > PART_ROWS:
            runs.append((tuple(groups), first))
            first, groups, rows = first + rows, [], 0
        groups.append(g)
        rows += n
    return [*runs, (tuple(groups), first)] if runs else [(None, 0)]


def ingest_file(file: SourceFile, out_dir: Path, reading: Reading = Reading()) -> dict:
    """Read one file into raw shards of its own under `out_dir`. Returns its shards, documents
    per "split/label", skips and, under a limit, each group's draws kept (for `finish`)."""
    skips, groups, draws, limit = SkipLog(), Counter(), defaultdict(list), reading.limit
    docs = iter_documents(file.path, skips, reading.columns, file.id_prefix, file.row_groups,
                          file.first_row)
    if limit is not None:
        docs = limit_per_group(docs, limit, reading.seed)

    def counted(stream):
        for doc in stream:
            groups[doc_group(doc)] += 1
            if limit is not None:
                draws[doc_group(doc)].append(sample_draw(reading.seed, doc))
            yield doc

    shards = write_raw_shards(counted(docs), out_dir, reading.shard_docs, file.prefix)
    part = {"file": str(file.path), "prefix": file.prefix, "shards": [p.name for p in shards],
            "groups": dict(groups), "skipped": skips.to_dict()}
    if file.row_groups is not None:
        part["row_groups"] = list(file.row_groups)
    if limit is not None:  # for `finish` to sample across parts
        part["draws"] = dict(draws)
    return part


def _cut_to_limit(parts: list[dict], out_dir: Path, reading: Reading) -> None:
    """Each file kept up to `limit` documents per group; keep, across files, the `limit` with
    the lowest draws (`limit_quotas`), rewriting the shards of the files that lose some, their
    documents in source order."""
    quota = limit_quotas([part["draws"] for part in parts], reading.limit)
    for i, part in enumerate(parts):
        if all(quota[i, g] == n for g, n in part["groups"].items()):
            continue
        docs = pa.concat_tables(read_shard(out_dir / name) for name in part["shards"]).to_pylist()
        kept = keep_lowest(docs, {g: quota[i, g] for g in part["groups"]}, reading.seed)
        shards = write_raw_shards(kept, out_dir, reading.shard_docs, part["prefix"])
        part["shards"] = [p.name for p in shards]
        part["groups"] = {g: quota[i, g] for g in part["groups"] if quota[i, g]}


def finish(source: Source, parts: list[dict], out_dir: Path, reading: Reading = Reading()) -> IngestResult:
    """Join what `ingest_file` read of each file of `source` (in the files' order): the limit's
    sample across files, a held-out test split when the corpus has no labelled one; fail
    clearly when nothing usable is left."""
    if reading.limit is not None and len(parts) > 1:
        _cut_to_limit(parts, out_dir, reading)
    groups: Counter = Counter()
    for part in parts:
        groups.update(part["groups"])
    skipped = SkipLog.merged(part["skipped"] for part in parts)
    n_docs = sum(groups.values())
    if n_docs == 0:
        raise DataError(f"{source.name}: empty corpus (no usable documents; skipped: "
                        f"{skipped['by_reason']})")
    shards = [out_dir / name for part in parts for name in part["shards"]]
    labelled = label_counts(groups)
    test_split = {"from": "corpus"}
    if "train" in labelled and "test" not in labelled:
        test_split = hold_out_test(shards, reading.test_share, reading.seed)
        for label, n in test_split["docs"].items():
            if n:
                groups[f"train/{label}"] -= n
                groups[f"test/{label}"] += n
    files = [{"file": part["file"], **({"row_groups": part["row_groups"]} if "row_groups" in part else {}),
              "shards": part["shards"], "docs": sum(part["groups"].values())} for part in parts]
    return IngestResult([str(p) for p in shards], n_docs, dict(sorted(groups.items())),
                        skipped, test_split, files)


def ingest(source: str | Path | Source, out_dir: Path, **reading) -> IngestResult:
    """Read every file of `source` (a `Source`, or what `--data` takes) into raw shards under
    `out_dir`, one after another, and join them (`finish`); `reading`: `Reading`'s fields."""
    source = source if isinstance(source, Source) else open_source(str(source))
    how = Reading(**reading)
    parts = [ingest_file(file, out_dir, how) for file in source_files(source)]
    return finish(source, parts, out_dir, how)
