"""The ingest stage: the source's files into raw shards, in three steps so that a dataset's
files (and a large Parquet file's runs of row groups) can be read side by side (one Dask task
each) and one process joins them:

    ingest_plan        resolve `--data`; reuse the raw shards there if made from the same
                       content and settings
    ingest_file_stage  one file (or part) into shards of its own, in a folder beside raw/
    finish_ingest      the sample across files, the held-out test split, then that folder
                       replaces raw/ and the summary (raw/_ingest.json) and its manifest are
                       written last

`ingest_stage` runs the three in this process; the shards are the same either way. A failed
ingest leaves the earlier raw/ as it was, never raw shards of two sources side by side.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..config import TEST_SHARE, Columns
from ..run.layout import RunDir, write_json
from ..run.manifests import reusable, write_manifest
from ..text.ingest import Reading, SourceFile, finish, ingest_file, source_files
from ..text.sources import Source, open_source


@dataclass(frozen=True)
class IngestPlan:
    """What an ingest reads, how; `done`: the summary of the raw shards already there when they
    were made from the same content (`digest`) and settings."""

    source: Source
    digest: str
    reading: Reading
    done: dict | None = None
    started: float = field(default_factory=time.time)

    @property
    def settings(self) -> dict:
        return asdict(self.reading)

    def files(self) -> list[SourceFile]:
        """The parts the source is read in (`ingest.source_files`)."""
        return source_files(self.source)


# The folder beside raw/ that the files' shards are written to until the ingest finishes.
PARTIAL = ".raw.partial"


def _partial(run: RunDir) -> Path:
    return run.root / PARTIAL


def ingest_plan(run: RunDir, data: str, limit: int | None, seed: int, shard_docs: int = 2000,
                columns: Columns = Columns(), test_share: float = TEST_SHARE) -> IngestPlan:
    source = open_source(data)
    plan = IngestPlan(source, source.digest(), Reading(limit, seed, shard_docs, columns, test_share))
    done = reusable(run.ingest_summary, {"source": plan.digest}, plan.settings)
    if done is not None:
        return replace(plan, done={**done, "reused": True})
    shutil.rmtree(_partial(run), ignore_errors=True)
    return plan


def ingest_file_stage(run: RunDir, file: SourceFile, reading: Reading) -> dict:
    """One file into raw shards in the folder that replaces raw/ once all files are read."""
    return ingest_file(file, _partial(run), reading)


def finish_ingest(run: RunDir, plan: IngestPlan, parts: list[dict]) -> dict:
    partial, old = _partial(run), run.root / ".raw.old"
    try:
        result = finish(plan.source, parts, partial, plan.reading)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if run.raw.exists():
        run.raw.rename(old)
    partial.rename(run.raw)
    shutil.rmtree(old, ignore_errors=True)
    shards = [run.raw / Path(p).name for p in result.shards]
    _prune_stale(run, {p.stem for p in shards})
    reading = plan.reading
    summary = {"source": plan.source.name, "limit": reading.limit, "seed": reading.seed,
               "shards": [run.rel(p) for p in shards], "files": result.files,
               "docs": result.docs, "groups": result.groups, "skipped": result.skipped,
               "columns": vars(reading.columns), "test_split": result.test_split,
               "seconds": time.time() - plan.started}
    write_json(run.ingest_summary, summary)
    write_manifest(run.ingest_summary, [run.ingest_summary, *shards], {"source": plan.digest},
                   plan.settings, summary)
    return {**summary, "reused": False}


def ingest_stage(run: RunDir, data: str, limit: int | None, seed: int,
                 shard_docs: int = 2000, columns: Columns = Columns(),
                 test_share: float = TEST_SHARE) -> dict:
    """Read the source (its `columns`, for a table) into raw shards, holding out `test_share` of
    the labelled train documents as test when it has no test split; reused when the source's
    content and the settings are those of the raw shards already there."""
    plan = ingest_plan(run, data, limit, seed, shard_docs, columns, test_share)
    if plan.done is not None:
        return plan.done
    try:
        parts = [ingest_file_stage(run, file, plan.reading) for file in plan.files()]
    except BaseException:
        shutil.rmtree(_partial(run), ignore_errors=True)
        raise
    return finish_ingest(run, plan, parts)


def _prune_stale(run: RunDir, stems: set[str]) -> None:
    """Remove token and id shards (and their side files) left from raw shards that are gone."""
    for folder in (run.tokens, run.ids):
        for path in folder.glob("*-*.*") if folder.exists() else []:
            if "part-" + path.stem.split("-", 1)[1] not in stems:
                path.unlink()
