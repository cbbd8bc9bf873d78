"""Scoring a dataset with a trained classifier, one input file at a time: what `ulmfit score`
runs on Dask workers. Each input file's predictions go to one Parquet file of the output folder
(its rows' ids, `pred`, a `p_<label>` per class, `skipped`), written once (`made_once`): a rerun
scores only the files not scored yet, changed since, or scored by another model. `score.json`,
written last, says what was scored, by which model (its SHA-256), with what.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..progress import Bar
from ..run.layout import model_folder, write_json
from ..run.manifests import file_sha256, made_once, manifest_path
from ..run.storage import Location, is_url, location, sha256
from ..run.store import listing, located, model_copy, remove
from ..text.sources import dataset_files

SUMMARY = "score.json"
_LOADED: dict[tuple[str, str], object] = {}  # (model file, its SHA-256) -> Classifier, per process


def list_inputs(data: str) -> list[tuple[Location, str]]:
    """The files of a dataset (`sources.dataset_files`), each with the name of its predictions
    file: its path under the dataset's folder, ending .parquet (`2024/reviews.csv` gives
    `2024/reviews.csv.parquet`)."""
    root, files = dataset_files(data)
    return [(p, _output_name(p.relative_to(root).as_posix())) for p in files]


def _output_name(relative: str) -> str:
    return relative if relative.lower().endswith(".parquet") else relative + ".parquet"


def prune_outputs(out: str | Path, names: list[str]) -> list[str]:
    """Remove predictions files this command wrote earlier (they have a manifest) for input
    files that are no longer in the dataset; returns their names. `out`: a folder, or a prefix
    on object storage."""
    found, keep = set(listing(out)), set(names)
    gone = sorted(n for n in found if n.endswith(".parquet") and n not in keep
                  and manifest_path(n).as_posix() in found)
    remove(out, [*gone, *(manifest_path(n).as_posix() for n in gone)])
    return gone


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
                 id_column: str | None = None) -> tuple[int, Counter]:
    """Classify every row of the CSV or Parquet file `source` into the file `target`, one batch of
    rows at a time, so that a file of any size takes the memory of one batch: the rows as read
    with their predictions (`predict --input`), or, given `id_column`, their ids (that column,
    else the row number) with their predictions (`score`). Returns the rows read and the skipped
    ones by reason."""
    import pyarrow as pa

    from ..text.tables import table_batches, table_rows, table_writer, texts_of, with_predictions

    rows, skips = 0, Counter()
    with table_writer(target) as write, Bar(f"scoring {source.name}", table_rows(source)) as bar:
        for batch in table_batches(source, text_column):
            shown, texts = texts_of(batch, text_column)
            probs, skipped = classifier.predict_raw(texts, bs)
            if id_column is not None:
                ids = (batch.column(id_column).cast(pa.string()) if id_column in batch.schema.names
                       else pa.array([str(i) for i in range(rows, rows + batch.num_rows)], pa.string()))
                shown = pa.record_batch({"id": ids})
            write(with_predictions(shown, classifier.labels, probs, skipped))
            rows += batch.num_rows
            skips.update(why for why in skipped if why)
            bar.update(completed=rows)
    return rows, skips


def score_file_stage(out: str | Path, source: str, name: str, model: dict,
                     text_column: str = "text", id_column: str = "id", bs: int = 64) -> dict:
    """Predict every row of the input file `source` (a path or an object's URL) into the output
    folder's file `name` (`predict_file`): the id column (or the row number, when the file has
    none) and the predictions. Reused when the file, the model and the settings are those it was
    scored with."""
    source, target = location(source), Path(out) / name
    inputs = {"input": sha256(source), "model": model["sha256"]}
    settings = {"text_column": text_column, "id_column": id_column}

    def score():
        t0 = time.time()
        classifier = _classifier(model)
        rows, skips = predict_file(classifier, source, target, text_column, bs, id_column)
        return {"input": str(source), "output": name, "rows": rows,
                "scored": rows - sum(skips.values()), "skipped": dict(skips),
                "labels": classifier.labels, "seconds": time.time() - t0}, [target]

    return made_once(target, inputs, settings, score)


def summarize_scores(out: str | Path, data: str, model: dict, results: list[dict],
                     seconds: float) -> dict:
    """score.json: the model, and per input file its output, rows scored and skipped."""
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r["skipped"])
    summary = {"data": data, "model": model, "labels": results[0]["labels"],
               "files": [{k: r[k] for k in ("input", "output", "rows", "scored", "skipped", "reused")}
                         for r in results],
               "rows": sum(r["rows"] for r in results), "scored": sum(r["scored"] for r in results),
               "skipped": dict(skipped), "reused_files": sum(r["reused"] for r in results),
               "seconds": seconds}
    write_json(Path(out) / SUMMARY, summary)
    return summary
