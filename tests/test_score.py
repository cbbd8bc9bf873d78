"""`ulmfit score`: a dataset (a folder or glob of CSV/Parquet files) classified on Dask workers,
one task per file, into one predictions file each; a rerun scores only what changed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import error_line, ulmfit
from ulmfit_core.model.predict import Classifier
from ulmfit_core.run.layout import read_json
from ulmfit_core.run.manifests import file_sha256


def test_a_folder_is_scored_file_by_file_as_predict_scores_it_and_a_rerun_resumes(tmp_path, trained,
                                                                                    sample_texts):
    data = tmp_path / "reviews"
    (data / "2024").mkdir(parents=True)
    texts = sample_texts[:60]
    pq.write_table(pa.table({"review_id": [f"r{i}" for i in range(30)], "body": texts[:30]}),
                   data / "a.parquet")
    pacsv.write_csv(pa.table({"body": texts[30:58] + ["", None], "stars": list(range(30))}),
                    data / "2024" / "b.csv")
    (data / "_SUCCESS").write_text("")  # not a table: left alone
    out = tmp_path / "scored"
    command = ["score", "--model", trained.root, "--data", data, "--out", out, "--workers", 2,
               "--text-column", "body", "--id-column", "review_id"]
    result = ulmfit(*command)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = read_json(out / "score.json")
    assert summary["model"] == {"path": str(trained.classifier.model),
                                "sha256": file_sha256(trained.classifier.model)}
    assert [(f["output"], f["rows"], f["scored"]) for f in summary["files"]] == [
        ("2024/b.csv.parquet", 30, 28), ("a.parquet", 30, 30)]
    assert (summary["rows"], summary["scored"], summary["skipped"]) == (60, 58, {"empty": 2})
    classifier = Classifier.load(trained.root)
    labels = classifier.labels
    for name, ids, rows in (("a.parquet", [f"r{i}" for i in range(30)], texts[:30]),
                            ("2024/b.csv.parquet", [str(i) for i in range(30)], texts[30:58] + ["", None])):
        table = pq.read_table(out / name)
        assert table.column_names == ["id", "pred", *[f"p_{y}" for y in labels], "skipped"]
        assert table.column("id").to_pylist() == ids
        probs, skipped = classifier.predict_raw(rows)
        got = np.array([table.column(f"p_{y}").to_pylist() for y in labels], dtype=float).T
        assert np.allclose(got, probs, atol=1e-5, equal_nan=True)  # what `predict` gives
        assert table.column("skipped").to_pylist() == skipped

    # A rerun scores only the new file, and drops the predictions of a file that left.
    made = (out / "a.parquet").stat().st_mtime_ns
    pq.write_table(pa.table({"body": texts[:5]}), data / "2024" / "c.parquet")
    (data / "2024" / "b.csv").unlink()
    again = ulmfit(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = read_json(out / "score.json")
    assert [(f["output"], f["reused"]) for f in summary["files"]] == [("2024/c.parquet", False),
                                                                     ("a.parquet", True)]
    assert (out / "a.parquet").stat().st_mtime_ns == made
    assert not (out / "2024" / "b.csv.parquet").exists()
    assert "removed the predictions of 1 files no longer in" in again.stdout + again.stderr


def test_a_dataset_or_model_that_is_not_there_is_one_line(tmp_path, trained):
    (tmp_path / "empty").mkdir()
    for data, message in ((tmp_path / "empty", f"{tmp_path / 'empty'}: no .csv or .parquet file here"),
                          (f"{tmp_path}/none-*.parquet", f"{tmp_path}/none-*.parquet: no .csv or .parquet file matches")):
        result = ulmfit("score", "--model", trained.root, "--data", data, "--out", tmp_path / "o")
        assert error_line(result) == f"ulmfit: error: {message}"
    result = ulmfit("score", "--model", tmp_path, "--data", trained.root, "--out", tmp_path / "o")
    assert error_line(result).startswith(f"ulmfit: error: {tmp_path}: no classifier model here")
    assert not (tmp_path / "o").exists()


def test_a_file_is_scored_batch_by_batch_as_if_whole(tmp_path, trained, sample_texts, monkeypatch):
    """A file is read, classified and written one batch of rows at a time, so that scoring takes
    the memory of a batch whatever the file's size: the same rows, row numbers and probabilities
    as classifying it whole."""
    from ulmfit_core.stages.scoring import predict_file
    from ulmfit_core.text import tables

    monkeypatch.setattr(tables, "BATCH_ROWS", 7)
    classifier = Classifier.load(trained.root)
    texts = sample_texts[:30]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet", row_group_size=10)
    rows, skips = predict_file(classifier, tmp_path / "in.parquet", tmp_path / "ids.parquet", id_column="id")
    assert (rows, sum(skips.values())) == (30, 0)
    assert pq.ParquetFile(tmp_path / "ids.parquet").metadata.num_row_groups >= 30 // 7  # a batch each
    table = pq.read_table(tmp_path / "ids.parquet")
    assert table.column("id").to_pylist() == [str(i) for i in range(30)]
    got = np.array([table.column(f"p_{y}").to_pylist() for y in classifier.labels], dtype=float).T
    assert np.allclose(got, classifier.predict_raw(texts)[0], atol=1e-5)


def test_a_blank_line_of_a_one_column_csv_keeps_its_row_in_the_predictions(tmp_path, trained, sample_texts):
    """A one-column CSV writes a missing text as a blank line: `predict` gives that row no label
    and says so, rather than dropping it and shifting the rows after it."""
    src = tmp_path / "one.csv"
    pacsv.write_csv(pa.table({"text": [sample_texts[0], None, sample_texts[1]]}), src)
    result = ulmfit("predict", "--model", trained.root, "--input", src, "--output", tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 of 3 rows (empty: 1)" in result.stderr and "wrote 3 rows, 2 predictions" in result.stdout
    out = pacsv.read_csv(tmp_path / "out.csv", convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    assert out.column("skipped").to_pylist() == [None, "empty", None]
    assert out.column("text").to_pylist() == [sample_texts[0], None, sample_texts[1]]
    assert out.column("pred").null_count == 1


@pytest.mark.parametrize("where", ["folder", "object storage"])
def test_a_large_parquet_file_is_scored_in_parts_side_by_side_and_joined_as_if_whole(
        tmp_path, trained, sample_texts, monkeypatch, request, where):
    """A Parquet file of more than PART_ROWS rows is scored in runs of its row groups, a task
    each, then joined into its one predictions file: the same rows, row numbers and
    probabilities as scoring it whole, and no parts left (in a folder, or on object storage); a
    run stopped before the join resumes from its parts, and a rerun reuses the joined file."""
    from prefect.logging.handlers import APILogHandler
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.pipeline import score_flow
    from ulmfit_core.run.job import ScoreJob
    from ulmfit_core.run.storage import location, opened
    from ulmfit_core.run.store import listing
    from ulmfit_core.stages import scoring
    from ulmfit_core.text import ingest

    monkeypatch.setattr(ingest, "PART_ROWS", 25)
    texts = sample_texts[:58] + ["", None]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"text": texts}), data / "big.parquet", row_group_size=10)
    pq.write_table(pa.table({"text": texts[:3]}), data / "small.parquet")
    plan = scoring.plan_scoring(scoring.list_inputs(str(data)))
    assert [(p.target, p.row_groups, p.first_row) for p in plan] == [
        ("big.parquet.parts/part-00000.parquet", (0, 1), 0), ("big.parquet.parts/part-00001.parquet", (2, 3), 20),
        ("big.parquet.parts/part-00002.parquet", (4, 5), 40), ("small.parquet", None, 0)]
    out = str(tmp_path / "scored")
    if where == "object storage":
        store = request.getfixturevalue("object_store")
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("ULMFIT_SCRATCH", str(tmp_path / "scratch"))
        store.filesystem().create_dir("runs")  # the bucket the other tests use: each costs the store volumes
        out = "s3://runs/scored-in-parts"
    flow = score_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    job = ScoreJob(model=str(trained.root), data=str(data), out=out)
    join, predict, classified = scoring.join_parts_stage, scoring.predict_file, []

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped before the join")

    monkeypatch.setattr(scoring, "join_parts_stage", stopped)
    with pytest.raises(RuntimeError, match="stopped before the join"):
        flow(job)
    assert [n for n in listing(out) if n.endswith(".parquet")] == [p.target for p in plan]
    monkeypatch.setattr(scoring, "join_parts_stage", join)
    monkeypatch.setattr(scoring, "predict_file", lambda *a, **k: classified.append(a[1]) or predict(*a, **k))
    summary = flow(job)  # the run again: its parts and files are kept, none classified again
    assert classified == []
    assert [(f["output"], f["rows"], f["scored"], f["reused"]) for f in summary["files"]] == [
        ("big.parquet", 60, 58, False), ("small.parquet", 3, 3, True)]
    assert summary["skipped"] == {"empty": 2}
    assert listing(out) == ["big.json", "big.parquet", "score.json", "small.json", "small.parquet"]
    with opened(location(f"{out}/big.parquet"), random_access=True) as source:
        table = pq.read_table(source)
    classifier = Classifier.load(trained.root)
    assert table.column("id").to_pylist() == [str(i) for i in range(60)]
    probs, skipped = classifier.predict_raw(texts)
    got = np.array([table.column(f"p_{y}").to_pylist() for y in classifier.labels], dtype=float).T
    assert np.allclose(got, probs, atol=1e-5, equal_nan=True) and table.column("skipped").to_pylist() == skipped

    again = flow(job)
    assert [f["reused"] for f in again["files"]] == [True, True]
    assert listing(out) == ["big.json", "big.parquet", "score.json", "small.json", "small.parquet"]
    APILogHandler().flush()  # this process's flow-run logs sent while the server is up
