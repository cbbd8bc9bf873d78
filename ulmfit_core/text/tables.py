"""Read and write user tables (CSV or Parquet) by file extension."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import DataError
from ..run.layout import atomic_path
from ..run.storage import Location, opened
from .sources import check_text_column, csv_batches, usable_text


BATCH_ROWS = 4096  # a Parquet file's rows per batch; a CSV's come in blocks of about 1 MiB


def table_batches(path: Location, text_column: str = "text",
                  row_groups: tuple[int, ...] | None = None) -> Iterator[pa.RecordBatch]:
    """A CSV or Parquet file (local, or an object; of a Parquet file only its `row_groups`, if
    given) in record batches, read as they are used, so that a file of any size takes the memory
    of one batch; its text column is checked in the first, and a CSV's is read as bytes, to be
    decoded row by row. A file without rows gives one empty batch, which carries its columns."""
    if isinstance(path, Path) and not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"{path}: expected a .csv or .parquet file")
    types = pacsv.ConvertOptions(column_types={text_column: pa.binary()})
    try:
        with contextlib.ExitStack() as stack:
            if suffix == ".csv":
                batches, schema = csv_batches(path, types), None
            else:
                parquet = pq.ParquetFile(stack.enter_context(opened(path, random_access=True)))
                batches, schema = (parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups),
                                  parquet.schema_arrow)
            first = next(batches, None)
            if first is None:  # no rows: a CSV of a header alone, or an empty Parquet file
                if schema is None:
                    with opened(path) as source:
                        schema = pacsv.open_csv(source, convert_options=types).schema
                first = pa.RecordBatch.from_pylist([], schema=schema)
            check_text_column(path, first.schema, text_column)
            yield first
            yield from batches
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def table_rows(path: Location, row_groups: tuple[int, ...] | None = None) -> int | None:
    """A Parquet file's rows (of its `row_groups`, if given), from its footer; None for a CSV,
    whose rows are known once read, and for a file that cannot be read (which `table_batches`
    reports)."""
    if path.suffix.lower() != ".parquet":
        return None
    try:
        with opened(path, random_access=True) as source:
            meta = pq.ParquetFile(source).metadata
        return meta.num_rows if row_groups is None else sum(meta.row_group(g).num_rows for g in row_groups)
    except (pa.ArrowInvalid, OSError):
        return None


def texts_of(rows: pa.RecordBatch | pa.Table, text_column: str = "text") -> tuple:
    """The rows to classify, with their text column as strings (null where the bytes are not
    UTF-8), and their texts as read (bytes from a CSV, to be checked as preprocessing checks
    them)."""
    raw = rows.column(text_column).to_pylist()
    shown = [t if not isinstance(t, bytes) else None if usable_text(t)[1] == "not_utf8"
             else t.decode("utf-8") for t in raw]
    column = rows.schema.get_field_index(text_column)
    return rows.set_column(column, text_column, pa.array(shown, pa.string())), raw


def with_predictions(table: pa.Table | pa.RecordBatch, labels: list[str], probs,
                     skipped: list[str | None]) -> pa.Table | pa.RecordBatch:
    """`table` (or a batch of rows) with a classifier's predictions appended: `pred`, one `p_<label>` column per class
    and `skipped` (why a row got no label; its `pred` and `p_*` are null)."""
    keep = [why is None for why in skipped]
    table = table.append_column("pred", pa.array([labels[p.argmax()] if k else None
                                                  for p, k in zip(probs, keep)], pa.string()))
    for j, label in enumerate(labels):
        table = table.append_column(f"p_{label}", pa.array([float(p[j]) if k else None
                                                            for p, k in zip(probs, keep)], pa.float64()))
    return table.append_column("skipped", pa.array(skipped, pa.string()))


def check_output(path: Path) -> None:
    """Refuse an output file whose extension says neither CSV nor Parquet."""
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(f"{path}: expected a .csv or .parquet output file")


@contextlib.contextmanager
def table_writer(path: Path) -> Iterator[Callable[[pa.RecordBatch | pa.Table], None]]:
    """A function that appends rows to the CSV or Parquet file `path` (by its extension), all with
    the first rows' columns; the file appears, whole, only when the block ends without error."""
    check_output(path)
    kind = pacsv.CSVWriter if path.suffix.lower() == ".csv" else pq.ParquetWriter
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        writers = []

        def write(rows: pa.RecordBatch | pa.Table) -> None:
            if not writers:
                writers.append(stack.enter_context(kind(tmp, rows.schema)))
            writers[0].write(rows)

        yield write
