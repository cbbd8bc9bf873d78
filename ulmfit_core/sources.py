"""Sources of documents: the aclImdb tarball (read as a stream, never extracted), an extracted
aclImdb folder, or a CSV / Parquet table with a text column and optional id, label and split
columns (named by `config.Columns`). Each yields raw records (id, split, label, text as read);
`ingest` turns them into raw shards.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .config import Columns
from .errors import DataError
from .manifests import file_sha256
from .progress import Bar

SPLITS = ("train", "test", "unsup")
IMDB_ENV = "ULMFIT_IMDB"
_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/([^/]+)\.txt$")


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
            next(raw_records(source, columns), None)  # the first review, or an error naming the file
            return
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source}: cannot read ({exc})") from exc
    check_columns(source, schema, columns)


def raw_records(source: Path, columns: Columns) -> Iterator[tuple]:
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
    fields = vars(columns)  # field -> its column
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
