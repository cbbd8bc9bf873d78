"""Where a source's files are: a local path, or an object of S3-compatible storage
(`s3://bucket/prefix/file.parquet`: AWS, MinIO, SeaweedFS, Ceph, R2), read through pyarrow's
filesystems.

Credentials come from the standard AWS variables and files (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws), the region from AWS_REGION or
AWS_DEFAULT_REGION, and the endpoint of a store other than AWS from AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (which pyarrow does not read itself). Each process (a Dask worker too) reads
them from its own environment: credentials never travel with a task.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ..errors import DataError
from .manifests import file_sha256, stream_sha256

SCHEME = "s3://"


def is_url(location: str | os.PathLike) -> bool:
    return str(location).startswith(SCHEME)


@dataclass(frozen=True)
class ObjectPath:
    """An object (or a prefix) on S3-compatible storage, with what the readers ask of a path;
    an object found by listing keeps the size and modification time the listing gave."""

    url: str
    listed: tuple[int, int] | None = field(default=None, compare=False)  # (size, mtime in ns)

    @property
    def key(self) -> str:
        """bucket/key, as pyarrow's S3 filesystem names it."""
        return self.url[len(SCHEME):].rstrip("/")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def relative_to(self, root: "ObjectPath") -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(root.key)

    def is_dir(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.url


Location = Path | ObjectPath


def s3() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem as the environment configures it."""
    options = {}
    if endpoint():
        parsed = urlparse(endpoint())
        options = {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return pafs.S3FileSystem(region=region, connect_timeout=5, request_timeout=30,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2), **options)


def endpoint() -> str | None:
    """The endpoint of a store other than AWS S3, from the environment."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def failure(url: str, exc: Exception) -> DataError:
    """One line for what went wrong reaching `url` (pyarrow's OSError, or boto3's error)."""
    text = str(exc)
    if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
        why = f"no such bucket '{url[len(SCHEME):].split('/', 1)[0]}'"
    elif any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                                       "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")):
        why = "access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    elif "NETWORK_CONNECTION" in text or "curlCode" in text or "connect" in text.lower():
        why = f"cannot reach {endpoint() or 'AWS S3'} (AWS_ENDPOINT_URL)"
    else:
        why = f"cannot read ({text.splitlines()[0] if text else type(exc).__name__})"
    return DataError(f"{url}: {why}")


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise failure(url, exc) from exc


def check_bucket(fs: pafs.S3FileSystem, url: str) -> None:
    """Refuse a URL whose bucket does not exist (some stores would make it on a first write)."""
    bucket = ObjectPath(url).key.split("/", 1)[0]
    if not bucket or fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise DataError(f"{url}: no such bucket '{bucket}'")


def list_objects(url: str) -> tuple[ObjectPath, list[ObjectPath]]:
    """The objects under a prefix (`s3://bucket/corpus/`), those a glob matches
    (`s3://bucket/corpus/*/*.parquet`, `**` for any depth), or one object; with the prefix their
    names are relative to."""
    key = url[len(SCHEME):]
    glob = any(c in key for c in "*?[")
    fixed = key.split("/")
    if glob:
        fixed = fixed[:next(i for i, part in enumerate(fixed) if any(c in part for c in "*?["))]
    root = "/".join(fixed).rstrip("/")
    fs = s3()
    with reaching(url):
        check_bucket(fs, url)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File and not glob:
            return ObjectPath(SCHEME + root.rsplit("/", 1)[0]), [_listed(info)]
        found = [] if info.type == pafs.FileType.NotFound else \
            fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    found = [f for f in found if f.type == pafs.FileType.File]
    if glob:
        found = [f for f in found if _matches(f.path.split("/"), key.split("/"))]
    return ObjectPath(SCHEME + root), [_listed(f) for f in found]


def _listed(info: pafs.FileInfo) -> ObjectPath:
    return ObjectPath(SCHEME + info.path, (info.size, info.mtime_ns or 0))


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """A key's parts against a glob's, as a local glob matches: `*` within a part, `**` any
    number of parts."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def location(path: str | os.PathLike) -> Location:
    """A path or URL as given (a task's parameter) as the location it names."""
    return ObjectPath(str(path)) if is_url(path) else Path(path)


def sha256(path: Location) -> str:
    """The SHA-256 of a file's bytes, local or an object."""
    if not isinstance(path, ObjectPath):
        return file_sha256(path)
    with opened(path) as stream:
        return stream_sha256(stream)


def stat(path: Location) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file (of an object: as listed, if it was)."""
    if isinstance(path, ObjectPath):
        if path.listed is not None:
            return path.listed
        with reaching(path.url):
            info = s3().get_file_info(path.key)
        return info.size, info.mtime_ns or 0
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def opened(path: Location, random_access: bool = False):
    """What pyarrow's readers take for `path`: a local path as it is, an object as a stream (a
    random-access file for Parquet, whose footer is read first)."""
    if not isinstance(path, ObjectPath):
        yield str(path)
        return
    with reaching(path.url):
        fs = s3()
        handle = fs.open_input_file(path.key) if random_access else fs.open_input_stream(path.key)
    with handle:
        with reaching(path.url):
            yield handle
