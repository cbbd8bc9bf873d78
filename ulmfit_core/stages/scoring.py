"""Scoring a dataset with a trained classifier, one input file at a time (a large Parquet file
in parts): what `ulmfit score` runs on Dask workers. Each input file's predictions go to one
Parquet file of the output folder (its rows' ids, `pred`, a `p_<label>` per class, `skipped`),
written once (`made_once`): a rerun scores only the files not scored yet, changed since, or
scored by another model. `score.json`, written last, says what was scored, by which model (its
SHA-256), with what.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..progress import Bar
from ..run.layout import model_folder, write_json
from ..run.manifests import file_sha256, made_once, manifest_path, reusable
from ..run.storage import Location, is_url, location, sha256
from ..run.store import listing, located, model_copy, remove
from ..text.ingest import row_group_runs
from ..text.sources import dataset_files

SUMMARY = "score.json"
PARTS = ".parts"  # `<name>.parts/`: a large file's predictions part by part, until joined
_LOADED: dict[tuple[str, str], object] = {}  # (model file, its SHA-256) -> Classifier, per process
# The classifier's LSTM keeps its hidden state in the module: tasks that share a process (a Dask
# worker's threads) take turns with it.
_IN_USE = threading.Lock()


def list_inputs(data: str) -> list[tuple[Location, str]]:
    """The files of a dataset (`sources.dataset_files`), each with the name of its predictions
    file: its path under the dataset's folder, ending .parquet (`2024/reviews.csv` gives
    `2024/reviews.csv.parquet`)."""
    root, files = dataset_files(data)
    return [(p, _output_name(p.relative_to(root).as_posix())) for p in files]


def _output_name(relative: str) -> str:
    return relative if relative.lower().endswith(".parquet") else relative + ".parquet"


@dataclass(frozen=True)
class ScorePart:
    """What one scoring task classifies (small: one goes to each task): an input file whole, or
    part `part` of a large Parquet file, a run of its row groups whose first row is the file's
    row `first_row`."""

    source: str  # the input file: a path, or an object's URL
    name: str  # its predictions file, under the output folder
    part: int | None = None  # None: the whole file
    row_groups: tuple[int, ...] | None = None
    first_row: int = 0
    input_sha: str | None = None  # a part's: the whole file's SHA-256, taken once for its parts

    @property
    def target(self) -> str:
        """The file this task writes, under the output folder."""
        return self.name if self.part is None else f"{self.name}{PARTS}/part-{self.part:05d}.parquet"


def plan_scoring(files: list[tuple[Location, str]]) -> list[ScorePart]:
    """The tasks that score `files` (`list_inputs`): one a file, but for a Parquet file of more
    than `ingest.PART_ROWS` rows one for each run of its row groups (`ingest.row_group_runs`), so
    that the workers score a large file side by side; `join_parts_stage` then joins its parts.
    Such a file's SHA-256 is taken here, once for all its parts."""
    plan: list[ScorePart] = []
    for path, name in files:
        runs = row_group_runs(path)
        if len(runs) == 1:
            plan.append(ScorePart(str(path), name))
        else:
            digest = sha256(path)
            plan += [ScorePart(str(path), name, k, groups, first, digest)
                     for k, (groups, first) in enumerate(runs)]
    return plan


def prune_outputs(out: str | Path, names: list[str]) -> list[str]:
    """Remove predictions files this command wrote earlier (they have a manifest) for input
    files that are no longer in the dataset; returns their names. `out`: a folder, or a prefix
    on object storage."""
    found, keep = set(listing(out)), set(names)
    gone = sorted(n for n in found if n.endswith(".parquet") and n.split(PARTS + "/")[0] not in keep
                  and manifest_path(n).as_posix() in found)
    remove(out, [*gone, *(manifest_path(n).as_posix() for n in gone)])
    return [n for n in gone if PARTS + "/" not in n]


def scored_model(model: str) -> dict:
    """The classifier `model` names (a run directory or its classifier/ folder): its weights
    file and their SHA-256, which every output records."""
    with model_copy(model, "classifier") as local:
        folder = model_folder(local, "classifier")
        sha = file_sha256(folder.model)
        path = located(model, folder.model.relative_to(local)) if is_url(model) else str(folder.model.resolve())
    return {"path": path, "sha256": sha}


def _classifier(model: dict):
    key = (model["path"], model["sha256"])
    if key not in _LOADED:  # a worker loads the model once for all the files it scores
        from ..model.predict import Classifier

        _LOADED.clear()
        _LOADED[key] = Classifier.load(model["path"].rsplit("/", 1)[0] if is_url(model["path"])
                                       else Path(model["path"]).parent)
    return _LOADED[key]


def predict_file(classifier, source: Location, target: Path, text_column: str = "text", bs: int = 64,
                 id_column: str | None = None, row_groups: tuple[int, ...] | None = None,
                 first_row: int = 0) -> tuple[int, Counter]:
    """Classify every row of the CSV or Parquet file `source` (of its `row_groups` only, if given,
    the first being the file's row `first_row`) into the file `target`, one batch of rows at a
    time, so that a file of any size takes the memory of one batch: the rows as read with their
    predictions (`predict --input`), or, given `id_column`, their ids (that column, else the row
    number) with their predictions (`score`). Returns the rows read and the skipped ones by
    reason."""
    import pyarrow as pa

    from ..text.tables import table_batches, table_rows, table_writer, texts_of, with_predictions

    rows, skips = 0, Counter()
    with table_writer(target) as write, \
            Bar(f"scoring {source.name}", table_rows(source, row_groups)) as bar:
        for batch in table_batches(source, text_column, row_groups):
            shown, texts = texts_of(batch, text_column)
            probs, skipped = classifier.predict_raw(texts, bs)
            if id_column is not None:
                start = first_row + rows
                ids = (batch.column(id_column).cast(pa.string()) if id_column in batch.schema.names
                       else pa.array([str(i) for i in range(start, start + batch.num_rows)], pa.string()))
                shown = pa.record_batch({"id": ids})
            write(with_predictions(shown, classifier.labels, probs, skipped))
            rows += batch.num_rows
            skips.update(why for why in skipped if why)
            bar.update(completed=rows)
    return rows, skips


def score_file_stage(out: str | Path, part: ScorePart, model: dict, text_column: str = "text",
                     id_column: str = "id", bs: int = 64) -> dict:
    """Predict every row of an input file, or of one part of it (`ScorePart`), into the output
    folder (`predict_file`): the id column (or the row number, when the file has none) and the
    predictions. Reused when the file, the model and the settings are those it was scored with;
    a part also when its file's predictions were joined from the same."""
    source, settings = location(part.source), {"text_column": text_column, "id_column": id_column}
    if part.part is None:
        inputs = {"input": sha256(source), "model": model["sha256"]}
    else:
        inputs = {"input": part.input_sha, "model": model["sha256"]}
        joined = reusable(Path(out) / part.name, inputs, settings)
        if joined is not None:  # the file was scored, and its parts joined, by an earlier run
            return {**joined, "part": part.part, "reused": True}
        settings = {**settings, "row_groups": list(part.row_groups), "first_row": part.first_row}
    target = Path(out) / part.target

    def score():
        t0 = time.time()
        with _IN_USE:
            classifier = _classifier(model)
            rows, skips = predict_file(classifier, source, target, text_column, bs, id_column,
                                       part.row_groups, part.first_row)
        return {"input": str(source), "output": part.name, "part": part.part, "rows": rows,
                "scored": rows - sum(skips.values()), "skipped": dict(skips),
                "labels": classifier.labels, "seconds": time.time() - t0}, [target]

    return made_once(target, inputs, settings, score)


def join_parts_stage(out: str | Path, parts: list[ScorePart], model: dict, results: list[dict],
                     text_column: str = "text", id_column: str = "id") -> dict:
    """A large file's predictions: its parts' (`score_file_stage` `results`, in order) joined,
    batch by batch, into the one file it gets, as if it had been scored whole; the parts are
    removed once it is written."""
    import pyarrow.parquet as pq

    from ..text.tables import table_writer

    final = Path(out) / parts[0].name
    inputs = {"input": parts[0].input_sha, "model": model["sha256"]}

    def join():
        with table_writer(final) as write:
            for part in parts:
                for batch in pq.ParquetFile(Path(out) / part.target).iter_batches():
                    write(batch)
        return {"input": parts[0].source, "output": parts[0].name, "part": None, **_totals(results),
                "labels": results[0]["labels"], "seconds": sum(r["seconds"] for r in results)}, [final]

    summary = made_once(final, inputs, {"text_column": text_column, "id_column": id_column}, join)
    shutil.rmtree(Path(out) / (parts[0].name + PARTS), ignore_errors=True)
    return summary


def _totals(results: list[dict]) -> dict:
    """Rows, rows scored and skips by reason, added up over scoring `results` (files or parts)."""
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r["skipped"])
    return {"rows": sum(r["rows"] for r in results), "scored": sum(r["scored"] for r in results),
            "skipped": dict(skipped)}


def summarize_scores(out: str | Path, data: str, model: dict, results: list[dict],
                     seconds: float) -> dict:
    """score.json: the model, and per input file its output, rows scored and skipped."""
    summary = {"data": data, "model": model, "labels": results[0]["labels"],
               "files": [{k: r[k] for k in ("input", "output", "rows", "scored", "skipped", "reused")}
                         for r in results],
               **_totals(results), "reused_files": sum(r["reused"] for r in results),
               "seconds": seconds}
    write_json(Path(out) / SUMMARY, summary)
    return summary
