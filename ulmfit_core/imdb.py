"""The aclImdb corpus (Maas et al. 2011) as a source: its tarball, read as a stream and never
extracted, or its extracted folder. Each review is a record (id, split, label, bytes), its id
the member's path without `.txt` (`train/pos/0_9`); `unsup` reviews have no label."""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

from .errors import DataError
from .progress import Bar

_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/([^/]+)\.txt$")


def _imdb_fields(member: str):
    """(id, split, label) of an aclImdb review's path, or None for any other file."""
    match = _IMDB_MEMBER.search(member)
    if not match:
        return None
    split, label, stem = match.groups()
    if label == "unsup":
        return f"{split}/{label}/{stem}", "unsup", None
    return f"{split}/{label}/{stem}", split, label


def iter_imdb_tarball(path: Path):
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


def iter_imdb_folder(path: Path):
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
        raise DataError(f"{path}: neither aclImdb reviews (train|test/pos|neg|unsup/*.txt) nor "
                        ".csv or .parquet files here")
