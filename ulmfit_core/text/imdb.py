"""The aclImdb corpus (Maas et al. 2011) as a source: its tarball, read as a stream and never
extracted, or its extracted folder. Each review is a record (id, split, label, bytes), its id
the member's path without `.txt` (`train/pos/0_9`); `unsup` reviews have no label."""

from __future__ import annotations

import contextlib
import gzip
import re
import tarfile
import zlib
from pathlib import Path

from ..errors import DataError
from ..progress import Bar

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
    """The reviews of a tarball, as a stream. A gzipped one is read to its end, where gzip's
    trailer is checked: tarfile takes a cut that falls between two members for the end of the
    archive, which would give fewer reviews without a word."""
    try:
        with open(path, "rb") as raw, _decompressed(path, raw) as stream, \
                tarfile.open(fileobj=stream, mode="r|" if stream is not raw else "r|*") as tar, \
                Bar(f"reading {path.name} (MB)", max(1, path.stat().st_size >> 20)) as bar:
            for member in tar:
                fields = member.isfile() and _imdb_fields(member.name)
                if fields:
                    yield (*fields, tar.extractfile(member).read())
                    bar.update(completed=raw.tell() >> 20)
            while stream.read(1 << 20):  # the archive's padding, then gzip's end-of-stream check
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(f"{path}: unreadable or truncated archive ({exc})") from exc


def _decompressed(path: Path, raw):
    """A gzipped tarball's decompressed stream (a cut one fails as it ends); else `raw` as it is."""
    if path.name.lower().endswith((".tar.gz", ".tgz")):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return contextlib.nullcontext(raw)


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
