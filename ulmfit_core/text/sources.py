"""Sources of documents, as `--data` names them: "imdb" (the aclImdb corpus: $ULMFIT_IMDB, else
fastai's download), an aclImdb tarball or extracted folder (`imdb`), one CSV / Parquet table, or
a dataset of tables: a folder of them or a glob (`corpus/*.parquet`, `'logs/**/*.csv'`). A table
has a text column and optional id, label and split columns (named by `config.Columns`).

Each file yields raw records (id, split, label, text as read); `ingest` turns them into raw
shards, a dataset's files each on their own (in parallel, on the Dask workers).
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..config import Columns
from ..errors import DataError
from ..run.manifests import file_sha256
from ..run.storage import Location, is_url, list_objects, opened, stat
from .imdb import iter_imdb_folder, iter_imdb_tarball

SPLITS = ("train", "test", "unsup")
IMDB_ENV = "ULMFIT_IMDB"
TABLES = (".csv", ".parquet")


@dataclass(frozen=True)
class Source:
    """What `--data` names, resolved: its `files` in a fixed order (the one file of a tarball, an
    aclImdb folder or a single table) and the folder `root` that a dataset's file names are
    relative to. A `dataset` (a folder or glob of tables) is read file by file; its rows without
    an id column are named by file and row (`2024/a.csv:17`), not by row alone."""

    name: str  # as given ("imdb" resolved): for messages and the run's records
    root: Location
    files: tuple[Location, ...]
    dataset: bool = False

    def relative(self, path: Location) -> str:
        return path.relative_to(self.root).as_posix()

    @property
    def location(self) -> Location:
        """The source as one path: its file (or aclImdb folder), or the dataset's folder."""
        return self.root if self.dataset else self.files[0]

    def id_prefix(self, path: Location) -> str:
        return f"{self.relative(path)}:" if self.dataset else ""

    def digest(self) -> str:
        """What identifies the content: a single file's SHA-256; for a folder or dataset, the
        SHA-256 of each file's path, size and modification time (hashing 100,000 reviews would
        take longer than reading them; an object store gives them without reading)."""
        if not self.dataset and self.files[0].is_file():
            return file_sha256(self.files[0])
        root = self.files[0] if not self.dataset else self.root
        files = self.files if self.dataset else sorted(p for p in root.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for path in files:
            size, mtime = stat(path)
            digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()


def open_source(data: str) -> Source:
    """Resolve `--data`: "imdb" means $ULMFIT_IMDB, else fastai's IMDB download; a folder with
    .csv/.parquet files under it, or a glob, is a dataset of those files, and so is anything on
    object storage (`s3://bucket/corpus/`, a glob there, or one object)."""
    if data == "imdb":
        return open_source(str(_imdb_path()))
    if is_url(data) or _is_glob(data) or Path(data).expanduser().is_dir():
        root, files = dataset_files(data, required=is_url(data) or _is_glob(data))
        if files:
            return Source(data, root, tuple(files), dataset=True)
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return Source(data, path if path.is_dir() else path.parent, (path,))


def dataset_files(data: str, required: bool = True) -> tuple[Location, list[Location]]:
    """The .csv/.parquet files a glob matches, those under a folder (or a prefix of object
    storage), or one such file, sorted by path, with the folder their names are relative to (the
    glob's fixed part). Other files (a `_SUCCESS` marker, a README) are left alone; finding none
    is an error if `required`."""
    path = Path(data).expanduser()
    if is_url(data):
        root, found = list_objects(data)  # objects only
    elif _is_glob(data):
        fixed = next(i for i, part in enumerate(path.parts) if _is_glob(part))
        root, found = Path(*path.parts[:fixed]), [Path(p) for p in glob.glob(str(path), recursive=True)]
    elif path.is_dir():
        root, found = path, list(path.rglob("*"))
    elif path.exists():
        root, found = path.parent, [path]
    else:
        raise DataError(f"{data}: no such file or folder")
    files = sorted((p for p in found if p.suffix.lower() in TABLES and (is_url(data) or p.is_file())),
                   key=lambda p: PurePosixPath(str(p)))  # by path part, local or not
    if required and not files:
        raise DataError(f"{data}: no .csv or .parquet {'object' if is_url(data) else 'file'} "
                        f"{'matches' if _is_glob(data) else 'here'}")
    return root, files


def _is_glob(data: str) -> bool:
    return any(c in data for c in "*?[")


def _imdb_path() -> Path:
    if os.environ.get(IMDB_ENV):
        return Path(os.environ[IMDB_ENV]).expanduser()
    from fastai.data.external import URLs, untar_data

    try:
        return Path(untar_data(URLs.IMDB))
    except Exception as exc:  # no network, interrupted download, ...
        raise DataError(
            f"--data imdb: {IMDB_ENV} is not set and downloading {URLs.IMDB} failed ({exc})"
        ) from exc


def check_source(source: Source, columns: Columns = Columns()) -> None:
    """Fail fast on a source that cannot work: wrong kind, unreadable, without the columns it is
    asked to read, or a dataset whose files differ in which of those columns they have.

    Reads only the start of each file; damage further in is found (and named) during ingest.
    """
    first = None  # (file, the fields it has) of the first table with a header
    for path in source.files:
        if not path.name.lower().endswith(TABLES):
            if columns.named():
                field, column = next(iter(columns.named().items()))
                raise DataError(f"{path}: {columns.option(field)} {column} names a column of a CSV "
                                "or Parquet source; an aclImdb corpus has its own layout")
            next(raw_records(path, columns), None)  # the first review, or an error naming the file
            continue
        schema = _schema(path, columns)
        if schema is None:  # a header alone: an empty file, or (alone) an empty corpus
            continue
        check_columns(path, schema, columns)
        fields = {f for f, c in vars(columns).items() if c in schema.names}
        if first is None:
            first = (path, fields)
        elif fields != first[1]:
            differ = ", ".join(f"'{getattr(columns, f)}'" for f in sorted(fields ^ first[1]))
            raise DataError(f"{path}: its columns differ from those of {first[0]} ({differ} in one "
                            "only); every file of a dataset needs the same columns")


def _schema(path: Location, columns: Columns) -> pa.Schema | None:
    try:
        if path.name.lower().endswith(".csv"):  # every CSV value can be read as text
            first = next(csv_batches(path, _csv_types(columns)), None)
            return None if first is None else first.schema
        with opened(path, random_access=True) as source:
            return pq.read_schema(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def raw_records(path: Location, columns: Columns, id_prefix: str = "",
                row_groups: tuple[int, ...] | None = None, first_row: int = 0) -> Iterator[tuple]:
    """(id, split, label, text as str or bytes) for each record of the file (or aclImdb folder)
    `path` (of a Parquet file's `row_groups` only, if given, the first at row `first_row`); a
    table's rows without an id column are named `id_prefix` + their row number."""
    name = path.name.lower()
    if path.is_dir():
        return iter_imdb_folder(path)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return iter_imdb_tarball(path)
    if name.endswith(".csv"):
        return _iter_table(path, csv_batches(path, _csv_types(columns)), columns, id_prefix)
    if name.endswith(".parquet"):
        return _iter_parquet(path, columns, id_prefix, row_groups, first_row)
    raise DataError(
        f"{path}: unsupported source (expected an aclImdb .tar.gz or folder, .csv or .parquet)"
    )


def _iter_parquet(path: Location, columns: Columns, id_prefix: str, row_groups, first_row: int):
    with opened(path, random_access=True) as source:
        batches = pq.ParquetFile(source).iter_batches(batch_size=4096, row_groups=row_groups)
        yield from _iter_table(path, batches, columns, id_prefix, first_row)


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


# Text is read as bytes so that one undecodable row is a counted skip, not a failed file.
def _csv_types(columns: Columns) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(column_types={columns.text: pa.binary(), columns.label: pa.string(),
                                              columns.split: pa.string(), columns.id: pa.string()})


# A blank line is a row whose values are all empty, not nothing: in a one-column CSV it is how a
# missing text is written (pyarrow and pandas both write a null so), and skipping it unseen would
# lose the row and shift every row number after it.
_ROWS = pacsv.ParseOptions(ignore_empty_lines=False)


def csv_batches(path: Location, convert: pacsv.ConvertOptions) -> Iterator[pa.RecordBatch]:
    """A CSV file's rows in record batches, blank lines included (as rows of empty values), read
    in blocks as large as its longest row needs: a row longer than a block (pyarrow's
    "straddling object") reopens the file with blocks eight times larger, from the first row not
    yet given."""
    block, given = 1 << 20, 0  # pyarrow's default block
    while True:
        try:
            seen = 0
            with opened(path) as source:
                for batch in pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=block),
                                            parse_options=_ROWS, convert_options=convert):
                    if seen + batch.num_rows > given:
                        fresh = batch.slice(max(0, given - seen))
                        given += fresh.num_rows
                        yield fresh
                    seen += batch.num_rows
            return
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block > stat(path)[0]:
                raise DataError(f"{path}: cannot parse CSV ({exc})") from exc
            block *= 8


_BLANK = (None, "", b"")


def _iter_table(path: Location, batches: Iterable[pa.RecordBatch], columns: Columns, id_prefix: str,
                first_row: int = 0):
    row = first_row
    fields = vars(columns)  # field -> its column
    for batch in batches:
        names = batch.schema.names
        if row == first_row:
            check_columns(path, batch.schema, columns)
        cols = {f: batch.column(c).to_pylist() for f, c in fields.items() if c in names}
        for i in range(batch.num_rows):
            if all(cols[f][i] in _BLANK for f in cols):  # a blank line: no text, counted as empty
                yield f"{id_prefix}{row}", "unsup", None, None
                row += 1
                continue
            label = cols["label"][i] if "label" in cols else None
            label = None if label is None or str(label).strip() == "" else str(label)
            doc_id = str(cols["id"][i]) if "id" in cols else f"{id_prefix}{row}"
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
