"""A run directory on object storage (`--out s3://bucket/runs/x`).

The stages read and write local files. Given a run on object storage, a task works in a fresh
local folder (under ULMFIT_SCRATCH, else the system's temporary folder): `local_copy` copies in
the run's files the task reads, the task runs there, and what it added, changed or removed is
then written back. A store has no rename, but an object appears only once its upload is
complete; the files a manifest names are written before the manifest, and the run's marks
(run.json, metrics.json, report.md, lineage.json) after everything else. A reader trusts a
stage's outputs only when their manifest is there and their hashes match it (`manifests`), so
a task cut off while writing back leaves work that is redone, never work that looks finished.

While a job runs, the run is held by a lease (`lease`), not an OS lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow.fs as pafs

from .layout import ENCODER, ENCODER_CONFIG, METRICS, MODEL, TEXT_ASSETS
from .lease import LEASE
from .storage import ObjectPath, check_bucket, is_url, reaching, s3

log = logging.getLogger("ulmfit")

SCRATCH = "ULMFIT_SCRATCH"
# The run's marks: a finished run's summary, and its status. Written back after everything else.
MARKS = ("lineage.json", "metrics.json", "report.md", "run.json")
# The local copies this process works on: folder -> (the run, what was copied in and written back).
_COPIES: dict[Path, tuple[str, dict[str, tuple[int, int]]]] = {}
# The files of a model folder a model is loaded from.
MODEL_FILES = (MODEL, METRICS, ENCODER, ENCODER_CONFIG, *TEXT_ASSETS)


def scratch() -> Path:
    """Where this process makes the local copies of runs on object storage."""
    root = Path(os.environ.get(SCRATCH) or tempfile.gettempdir()).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(out: str, rel: str = "") -> str:
    """bucket/prefix[/rel]: the run's key (of one of its files), as pyarrow names it."""
    root = ObjectPath(out).key
    return f"{root}/{rel}" if rel else root


def located(out: str, rel: str | Path) -> str:
    """Where a file of the run `out` is, as its user names it (`rel`: relative to the run)."""
    rel = PurePosixPath(rel).as_posix()
    return f"{out.rstrip('/')}/{rel}" if is_url(out) else str(Path(out) / rel)


def _listed(fs: pafs.S3FileSystem, out: str, pulls: Iterable[str]) -> list[str]:
    """The run's files under `pulls` (files or folders relative to the run; "" for all of it), as
    paths relative to the run, the lease left out."""
    found: list[str] = []
    root = _key(out)
    for rel in dict.fromkeys(pulls):
        info = fs.get_file_info(_key(out, rel))
        if info.type == pafs.FileType.File:
            infos = [info]
        else:
            infos = fs.get_file_info(pafs.FileSelector(_key(out, rel), recursive=True, allow_not_found=True))
        found += [i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File]
    return [rel for rel in dict.fromkeys(found) if rel != LEASE]


def pull(out: str, local: Path, pulls: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Copy the run's files under `pulls` into `local`; {path relative to the run: (size,
    mtime in ns) of the local copy}."""
    fs = s3()
    with reaching(out):
        check_bucket(fs, out)
        names = _listed(fs, out, pulls)

    def fetch(rel: str) -> None:
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with reaching(located(out, rel)), fs.open_input_stream(_key(out, rel)) as src, \
                open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, names))
    return {rel: _stat(local / rel) for rel in names}


def listing(out: str | Path) -> list[str]:
    """Every file under `out` (a folder, or a prefix on object storage), relative to it."""
    if not is_url(out):
        return sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("*") if p.is_file())
    with reaching(str(out)):
        return sorted(_listed(s3(), str(out), [""]))


def remove(out: str | Path, names: Iterable[str]) -> None:
    """Delete the files `names` (relative to `out`, a folder or a prefix on object storage)."""
    fs = None if not is_url(out) else s3()
    for rel in names:
        if fs is None:
            (Path(out) / rel).unlink(missing_ok=True)
        else:
            with reaching(located(str(out), rel)):
                _delete(fs, _key(str(out), rel))


def _delete(fs: pafs.S3FileSystem, key: str) -> None:
    """Delete an object; one already gone is fine."""
    try:
        fs.delete_file(key)
    except FileNotFoundError:
        pass


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _order(rel: str, local: Path) -> int:
    """When a file is written back: 0 the files manifests name, 1 manifests (`x.json` beside an
    `x.<other>`, or `x.manifest.json`), 2 the run's marks."""
    path = PurePosixPath(rel)
    if rel in MARKS:
        return 2
    if path.name.endswith(".manifest.json"):
        return 1
    if path.suffix == ".json" and any(p.stem == path.stem and p.suffix != ".json"
                                      for p in (local / rel).parent.iterdir()):
        return 1
    return 0


def push(out: str, local: Path, pulled: dict[str, tuple[int, int]]) -> list[str]:
    """Write back what changed in `local` since `pulled`: removed files are deleted (marks and
    manifests first), added and changed ones uploaded (manifests after the files they name, the
    marks last). Returns the paths written or deleted, relative to the run."""
    now = {p.relative_to(local).as_posix(): p for p in local.rglob("*")
           if p.is_file() and not p.name.endswith(".tmp")}
    changed = [rel for rel, p in now.items() if pulled.get(rel) != _stat(p)]
    gone = sorted((rel for rel in pulled if rel not in now),
                  key=lambda rel: rel not in MARKS and not rel.endswith(".json"))
    fs = s3()
    with reaching(out):
        for rel in gone:
            _delete(fs, _key(out, rel))

    def upload(rel: str) -> None:
        _upload(fs, out, rel, now[rel])

    waves: dict[int, list[str]] = {}
    for rel in changed:
        waves.setdefault(_order(rel, local), []).append(rel)
    with ThreadPoolExecutor(8) as pool:
        for wave in sorted(waves):
            list(pool.map(upload, sorted(waves[wave])))
    return gone + changed


@contextmanager
def local_copy(out: str, pulls: Iterable[str] = ("",), write_back: bool = True) -> Iterator[str]:
    """The run `out` as a local folder: `out` itself when it is local; for a run on object
    storage, a fresh folder holding the run's files under `pulls` (paths relative to the run,
    "" for all), whose changes are written back when the block ends (`write_back`), also when it
    fails or is stopped, so that finished shards and epochs are kept as they are locally. An
    error that names the local folder names the run instead."""
    if not is_url(out):
        yield out
        return
    local = Path(tempfile.mkdtemp(prefix="ulmfit-run-", dir=scratch()))
    try:
        pulled = pull(out, local, pulls)
        _COPIES[local] = (out, pulled)
        try:
            yield str(local)
        except BaseException as exc:
            if write_back:
                try:
                    push(out, local, pulled)
                except Exception as failed:
                    log.error("%s: could not write back the work done before the error: %s", out, failed)
            raise _renamed(exc, str(local), out.rstrip("/"))
        if write_back:
            push(out, local, pulled)
    finally:
        _COPIES.pop(local, None)
        shutil.rmtree(local, ignore_errors=True)


def written(path: str | Path) -> None:
    """Write one file of a local copy (`local_copy`) back now, not when its task ends: a
    training's checkpoint after each epoch, so that a retry on another worker resumes from it.
    Nothing to do for a file of a local run."""
    path = Path(path).absolute()
    for local, (out, pulled) in list(_COPIES.items()):
        if local in path.parents:
            publish(out, local, path)
            rel = path.relative_to(local).as_posix()
            if path.exists():
                pulled[rel] = _stat(path)
            else:
                pulled.pop(rel, None)


@contextmanager
def model_copy(path: str | Path, sub: str) -> Iterator[str | Path]:
    """A run directory or model folder (what `layout.model_folder` takes) as a local path: `path`
    itself, or for one on object storage a copy of the run's model folder `sub`, else of the
    model folder's own files."""
    if not is_url(path):
        yield path
        return
    with local_copy(str(path), [sub], write_back=False) as local:
        if any(Path(local).iterdir()):
            yield local
            return
    with local_copy(str(path), MODEL_FILES, write_back=False) as local:
        yield local


def _renamed(exc: BaseException, local: str, out: str) -> BaseException:
    """`exc` with the local folder's path in its message replaced by the run's URL (an error of
    one message whose class takes it back; any other as it is)."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str) or local not in exc.args[0]:
        return exc
    try:
        renamed = type(exc)(exc.args[0].replace(local, out))
    except Exception:
        return exc
    renamed.__cause__, renamed.__traceback__ = exc.__cause__, exc.__traceback__
    return renamed


def publish(out: str, local: Path, *paths: Path) -> None:
    """Write `paths` (files of the local copy `local`) back at once: uploaded, or deleted when gone."""
    fs = s3()
    for path in paths:
        rel = path.relative_to(local).as_posix()
        if path.exists():
            _upload(fs, out, rel, path)
        else:
            with reaching(located(out, rel)):
                _delete(fs, _key(out, rel))


def _upload(fs: pafs.S3FileSystem, out: str, rel: str, path: Path) -> None:
    """The local file `path` as the run's file `rel`."""
    with reaching(located(out, rel)), open(path, "rb") as src, fs.open_output_stream(_key(out, rel)) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
