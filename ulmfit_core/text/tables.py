"""Read and write user tables (CSV or Parquet) by file extension."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import DataError
from ..run.layout import atomic_path
from ..run.storage import Location, opened
from .sources import check_text_column, csv_batches, usable_text


def read_table(path: Location, text_column: str = "text") -> pa.Table:
    """A CSV or Parquet file (local, or an object); a CSV's text column is read as bytes, to be
    decoded row by row."""
    if isinstance(path, Path) and not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            types = pacsv.ConvertOptions(column_types={text_column: pa.binary()})
            batches = list(csv_batches(path, types))
            if not batches:  # a header alone
                with opened(path) as source:
                    return pacsv.open_csv(source, convert_options=types).read_all()
            return pa.Table.from_batches(batches)
        if suffix == ".parquet":
            with opened(path, random_access=True) as source:
                return pq.read_table(source)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    raise DataError(f"{path}: expected a .csv or .parquet file")


def read_texts_table(path: Location, text_column: str = "text") -> tuple[pa.Table, list[str | bytes | None]]:
    """A table to classify and its texts as read (bytes from a CSV, to be checked as
    preprocessing checks them); the table's text column comes back as strings, null where the
    bytes are not UTF-8."""
    table = read_table(path, text_column)
    check_text_column(path, table.schema, text_column)
    raw = table.column(text_column).to_pylist()
    shown = [t if not isinstance(t, bytes) else None if usable_text(t)[1] == "not_utf8"
             else t.decode("utf-8") for t in raw]
    column = table.schema.get_field_index(text_column)
    table = table.set_column(column, text_column, pa.array(shown, pa.string()))
    return table, raw


def with_predictions(table: pa.Table, labels: list[str], probs, skipped: list[str | None]) -> pa.Table:
    """`table` with a classifier's predictions appended: `pred`, one `p_<label>` column per class
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


def write_table(table: pa.Table, path: Path) -> None:
    check_output(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
