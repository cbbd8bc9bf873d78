"""Ingest: stream a source into Parquet shards of raw documents (id, split, label, text).

Sources: the aclImdb tarball (read as a stream, never extracted), an extracted aclImdb folder,
or a CSV / Parquet table with a text column and optional id, label and split columns (named by
`Columns`). Documents that cannot be used (empty text, bytes that are not UTF-8) are skipped and
counted. A corpus without a labelled test split gets one: a seeded, stratified share of its
labelled train documents (`hold_out_test`).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import tarfile
import zlib
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .config import TEST_SHARE, Columns
from .data import seeded_unit
from .errors import DataError, check_stop
from .manifests import file_sha256
from .progress import Bar
from .rundir import atomic_path

RAW_SCHEMA = pa.schema(
    [("id", pa.string()), ("split", pa.string()), ("label", pa.string()), ("text", pa.string())]
)
SPLITS = ("train", "test", "unsup")
IMDB_ENV = "ULMFIT_IMDB"
_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/([^/]+)\.txt$")


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


def source_digest(source: Path) -> str:
    """What identifies a source's content: a file's SHA-256; for a folder, the SHA-256 of each
    file's path, size and modification time (hashing 100,000 reviews would take longer than
    reading them)."""
    if source.is_file():
        return file_sha256(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(source).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def resolve_source(data: str) -> Path:
    """Turn `--data` into a path: "imdb" means $ULMFIT_IMDB, else fastai's IMDB download."""
    if data != "imdb":
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        return path
    if os.environ.get(IMDB_ENV):
        return resolve_source(os.environ[IMDB_ENV])
    from fastai.data.external import URLs, untar_data

    try:
        return Path(untar_data(URLs.IMDB))
    except Exception as exc:  # no network, interrupted download, ...
        raise DataError(
            f"--data imdb: {IMDB_ENV} is not set and downloading {URLs.IMDB} failed ({exc})"
        ) from exc


def check_source(source: Path, columns: Columns = Columns()) -> None:
    """Fail fast on a source that cannot work: wrong kind, unreadable, or without the columns
    it is asked to read.

    Reads only the start of the file; damage further in is found (and named) during ingest.
    """
    name = source.name.lower()
    table = name.endswith((".csv", ".parquet"))
    if not table and columns.named():
        field, column = next(iter(columns.named().items()))
        raise DataError(f"{source}: {columns.option(field)} {column} names a column of a CSV or "
                        "Parquet source; an aclImdb corpus has its own layout")
    try:
        if name.endswith(".csv"):  # every CSV value can be read as text
            first = next(csv_batches(source, _csv_types(columns)), None)
            if first is None:  # a header alone: ingest finds the corpus empty
                return
            schema = first.schema
        elif name.endswith(".parquet"):
            schema = pq.read_schema(source)
        else:
            next(_raw_records(source, columns), None)  # the first review, or an error naming the file
            return
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source}: cannot read ({exc})") from exc
    check_columns(source, schema, columns)


def _raw_records(source: Path, columns: Columns) -> Iterator[tuple]:
    """(id, split, label, text as str or bytes) for each record of `source`."""
    name = source.name.lower()
    if source.is_dir():
        return _iter_imdb_folder(source)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _iter_imdb_tarball(source)
    if name.endswith(".csv"):
        return _iter_table(source, csv_batches(source, _csv_types(columns)), columns)
    if name.endswith(".parquet"):
        return _iter_table(source, pq.ParquetFile(source).iter_batches(batch_size=4096), columns)
    raise DataError(
        f"{source}: unsupported source (expected an aclImdb .tar.gz or folder, .csv or .parquet)"
    )


def usable_text(raw: str | bytes | None) -> tuple[str | None, str | None]:
    """(text, None) for a usable document, else (None, why it is skipped: "not_utf8" or "empty").
    Preprocessing and prediction both go by this."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not_utf8"
    if raw is None or not raw.strip():
        return None, "empty"
    return raw, None


def check_text_column(path: Path, schema: pa.Schema, column: str = "text") -> None:
    """A table's text column must exist and hold text (strings, or bytes of a CSV)."""
    if column not in schema.names:
        option = "" if column == "text" else " (--text-column)"
        raise DataError(f"{path}: no '{column}' column{option} (columns: "
                        f"{', '.join(schema.names) or 'none'})")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise DataError(f"{path}: the '{column}' column holds {kind}, not text")


def check_columns(path: Path, schema: pa.Schema, columns: Columns) -> None:
    """The text column, and every column named otherwise than by default, are in the table."""
    check_text_column(path, schema, columns.text)
    for field, column in columns.named().items():
        if column not in schema.names:
            raise DataError(f"{path}: no '{column}' column ({columns.option(field)}; columns: "
                            f"{', '.join(schema.names)})")


def iter_documents(source: Path, skips: SkipLog, columns: Columns = Columns()) -> Iterator[dict]:
    """Yield usable documents of `source` in its natural order; count the rest in `skips`."""
    for doc_id, split, label, raw in _raw_records(source, columns):
        text, why = usable_text(raw)
        if why:
            skips.add(why, doc_id)
            continue
        yield {"id": doc_id, "split": split, "label": label, "text": text}


def _imdb_fields(member: str):
    match = _IMDB_MEMBER.search(member)
    if not match:
        return None
    split, label, stem = match.groups()
    if label == "unsup":
        return f"{split}/{label}/{stem}", "unsup", None
    return f"{split}/{label}/{stem}", split, label


def _iter_imdb_tarball(path: Path):
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar, \
                Bar(f"reading {path.name} (MB)", max(1, path.stat().st_size >> 20)) as bar:
            for member in tar:
                fields = member.isfile() and _imdb_fields(member.name)
                if fields:
                    yield (*fields, tar.extractfile(member).read())
                    bar.update(completed=raw.tell() >> 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: unreadable or truncated archive ({exc})") from exc


def _iter_imdb_folder(path: Path):
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    files = sorted(root.glob("*/*/*.txt"))
    found = 0
    with Bar(f"reading {path.name} (files)", len(files)) as bar:
        for i, file in enumerate(files, 1):
            fields = _imdb_fields(file.relative_to(root).as_posix())
            if fields:
                found += 1
                yield (*fields, file.read_bytes())
            bar.update(completed=i)
    if not found:
        raise DataError(f"{path}: no aclImdb reviews found (expected train|test/pos|neg|unsup/*.txt)")


# Text is read as bytes so that one undecodable row is a counted skip, not a failed file.
def _csv_types(columns: Columns) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(column_types={columns.text: pa.binary(), columns.label: pa.string(),
                                              columns.split: pa.string(), columns.id: pa.string()})


def csv_batches(path: Path, convert: pacsv.ConvertOptions) -> Iterator[pa.RecordBatch]:
    """A CSV file's rows in record batches, read in blocks as large as its longest row needs:
    a row longer than a block (pyarrow's "straddling object") reopens the file with blocks
    eight times larger, from the first row not yet given."""
    block, given = 1 << 20, 0  # pyarrow's default block
    while True:
        try:
            seen = 0
            for batch in pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                                        convert_options=convert):
                if seen + batch.num_rows > given:
                    fresh = batch.slice(max(0, given - seen))
                    given += fresh.num_rows
                    yield fresh
                seen += batch.num_rows
            return
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block > path.stat().st_size:
                raise DataError(f"{path}: cannot parse CSV ({exc})") from exc
            block *= 8


def _iter_table(path: Path, batches: Iterable[pa.RecordBatch], columns: Columns):
    row = 0
    fields = {"id": columns.id, "split": columns.split, "label": columns.label, "text": columns.text}
    for batch in batches:
        names = batch.schema.names
        if row == 0:
            check_columns(path, batch.schema, columns)
        cols = {f: batch.column(c).to_pylist() for f, c in fields.items() if c in names}
        for i in range(batch.num_rows):
            label = cols["label"][i] if "label" in cols else None
            label = None if label is None or str(label).strip() == "" else str(label)
            doc_id = str(cols["id"][i]) if "id" in cols else str(row)
            if "split" in cols:
                split = cols["split"][i]
                if split not in SPLITS:
                    raise DataError(f"{path}: row {row}: split {split!r} is not one of "
                                    f"{', '.join(SPLITS)} (column '{columns.split}')")
                if label is None and split != "unsup" and "label" in cols:
                    raise DataError(f"{path}: row {row}: empty value in the label column "
                                    f"'{columns.label}' of a {split} row (give text without a "
                                    "label the split 'unsup')")
            else:
                split = "train" if label is not None else "unsup"
            yield doc_id, split, label, cols["text"][i]
            row += 1


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
        table = pq.read_table(shard, columns=["id", "split", "label"])
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
        table = pq.read_table(shards[s])
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
    labelled = {g for g in groups if not g.endswith("/-")}
    test_split = {"from": "corpus"}
    if any(g.startswith("train/") for g in labelled) and not any(g.startswith("test/") for g in labelled):
        test_split = hold_out_test(shards, test_share, seed)
        for label, n in test_split["docs"].items():
            if n:
                groups[f"train/{label}"] -= n
                groups[f"test/{label}"] += n
    return IngestResult([str(p) for p in shards], n_docs, dict(sorted(groups.items())),
                        skips.to_dict(), test_split)
