"""Partitioned datasets: `--data` as a folder or glob of CSV and Parquet files, each file read by
a task of its own (on the Dask workers under Prefect), giving the same raw shards, tokens and
vocab as reading the files one after another; `--limit` and the held-out test split chosen
across files as from one file; files whose columns differ refused before any work."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.errors import DataError
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.text.data import read_shard
from ulmfit_core.text.sources import check_source, open_source

from conftest import error_line, ulmfit, write_dataset, write_table


def _docs(run: RunDir) -> list[dict]:
    return pa.concat_tables(read_shard(run.path(p)) for p in read_json(run.ingest_summary)["shards"]).to_pylist()


def test_each_file_of_a_dataset_is_read_into_shards_of_its_own(tmp_path, table_rows):
    files = write_dataset(tmp_path / "data", table_rows)
    for data in (str(tmp_path / "data"), f"{tmp_path}/data/**/*.*"):
        source = open_source(data)
        assert source.dataset and list(source.files) == files
    run = RunDir(tmp_path / "run")
    summary = stages.ingest_stage(run, str(tmp_path / "data"), None, 0, shard_docs=50)
    assert [f["file"] for f in summary["files"]] == [str(f) for f in files]
    names = [name for f in summary["files"] for name in f["shards"]]
    assert names[0] == "part-00000-00000.parquet" and names[-1].startswith("part-00002-")
    assert [run.rel(run.raw / n) for n in names] == summary["shards"]
    assert [f["docs"] for f in summary["files"]] == [len(pq.read_table(f) if f.suffix == ".parquet"
                                                         else pacsv.read_csv(f)) - (f.name == "a.csv")
                                                     for f in files]
    kept = [r for r in table_rows if r["text"].strip()]
    assert [(d["id"], d["split"], d["label"], d["text"]) for d in _docs(run)] == \
        [(r["id"], r["split"], r["label"], r["text"]) for r in kept]
    assert summary["skipped"] == {"total": 1, "by_reason": {"empty": 1}, "examples": {"empty": [table_rows[7]["id"]]}}
    assert summary["groups"]["train/pos"] == sum(r["split"] == "train" and r["label"] == "pos" for r in kept)
    again = stages.ingest_stage(run, str(tmp_path / "data"), None, 0, shard_docs=50)
    assert again["reused"] and again["shards"] == summary["shards"]


def test_rows_without_ids_are_named_by_file_and_row(tmp_path, table_rows):
    plain = [{"text": r["text"], "label": r["label"]} for r in table_rows[:30]]
    write_table(tmp_path / "d" / "x.csv", plain[:10])
    write_table(tmp_path / "d" / "y.parquet", plain[10:])
    run = RunDir(tmp_path / "run")
    stages.ingest_stage(run, str(tmp_path / "d"), None, 0)
    ids = [d["id"] for d in _docs(run)]
    assert ids[:2] == ["x.csv:0", "x.csv:1"] and ids[-1] == "y.parquet:19"
    assert len(ids) == len(set(ids)) == 29 and "x.csv:7" not in ids  # row 7 is blank: skipped


def test_a_blank_line_is_a_row_counted_as_skipped_not_a_row_lost(tmp_path, sample_texts):
    """pyarrow and pandas write a missing text of a one-column CSV as a blank line: it is read as
    a row (skipped as empty, and counted), so no row is lost and the rows after it keep their
    numbers; a blank line between the rows of a wider file is counted the same way."""
    one = tmp_path / "one.csv"
    pacsv.write_csv(pa.table({"text": [sample_texts[0], None, sample_texts[1], None]}), one)
    assert one.read_text().count("\n\n") == 2 and len(pacsv.read_csv(one)) == 2  # pyarrow's default
    wide = tmp_path / "wide.csv"
    pacsv.write_csv(pa.table({"text": sample_texts[2:4], "label": ["pos", "neg"]}), wide)
    header, first, second = wide.read_bytes().splitlines(keepends=True)
    wide.write_bytes(header + first + b"\n" + second)
    for path, kept, skipped in ((one, ["0", "2"], ["1", "3"]), (wide, ["0", "2"], ["1"])):
        run = RunDir(tmp_path / f"run-{path.stem}")
        summary = stages.ingest_stage(run, str(path), None, 0)
        assert [d["id"] for d in _docs(run)] == kept
        assert summary["skipped"] == {"total": len(skipped), "by_reason": {"empty": len(skipped)},
                                      "examples": {"empty": skipped}}


def test_limit_and_held_out_test_across_files_are_those_of_one_file(tmp_path, table_rows):
    """The same rows in one file and in three: the same documents kept by --limit, in the same
    order, and the same ones held out as test when the corpus has no test split."""
    train = [{**r, "split": "train" if r["label"] else "unsup"} for r in table_rows]
    write_table(tmp_path / "one" / "all.parquet", train)
    write_dataset(tmp_path / "three", train)
    chosen = {}
    for name in ("one", "three"):
        run = RunDir(tmp_path / f"run-{name}")
        summary = stages.ingest_stage(run, str(tmp_path / name), 9, 3, shard_docs=4, test_share=0.25)
        docs = _docs(run)
        chosen[name] = [(d["id"], d["split"]) for d in docs], summary["groups"], summary["test_split"]
        assert all(len(read_shard(run.path(p))) <= 4 for p in summary["shards"])
    assert chosen["one"] == chosen["three"]
    ids, groups, test_split = chosen["three"]
    assert groups == {"test/neg": 2, "test/pos": 2, "train/neg": 7, "train/pos": 7, "unsup/-": 9}
    assert test_split["docs"] == {"neg": 2, "pos": 2}


def test_a_large_parquet_file_is_read_in_runs_of_row_groups_as_if_whole(tmp_path, table_rows, monkeypatch):
    """A Parquet file of more than PART_ROWS rows is read in parts, each a run of row groups (a
    task each under Prefect): the same documents, ids (its row numbers), --limit sample and
    held-out test split as reading it whole, in shards named by part."""
    from ulmfit_core.text import ingest

    rows = [{"text": r["text"], "label": r["label"]} for r in table_rows]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=10)
    chosen = {}
    for part_rows in (10**9, 45):
        monkeypatch.setattr(ingest, "PART_ROWS", part_rows)
        run = RunDir(tmp_path / f"run-{part_rows}")
        summary = stages.ingest_stage(run, str(tmp_path / "big.parquet"), 30, 1, shard_docs=20)
        chosen[part_rows] = [(d["id"], d["split"], d["text"]) for d in _docs(run)], summary["groups"]
        if part_rows == 45:
            assert [f["row_groups"] for f in summary["files"]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                                                   [12, 13, 14, 15], [16, 17, 18, 19]]
            assert summary["shards"][0] == "raw/part-00000-00000.parquet"
        else:
            assert summary["shards"][0] == "raw/part-00000.parquet" and len(summary["files"]) == 1
    assert chosen[45] == chosen[10**9]
    ids = [doc_id for doc_id, _, _ in chosen[45][0]]
    assert all(rows[int(i)]["text"] == text for i, _, text in chosen[45][0]) and len(ids) == len(set(ids))


def test_a_dataset_whose_files_differ_in_columns_is_refused_before_any_work(tmp_path, table_rows):
    write_table(tmp_path / "d" / "a.csv", [{"text": r["text"], "label": r["label"]} for r in table_rows[:5]])
    write_table(tmp_path / "d" / "b.csv", [{"text": r["text"]} for r in table_rows[5:9]])
    with pytest.raises(DataError, match=r"b\.csv: its columns differ from those of .*a\.csv \('label' in one only\)"):
        check_source(open_source(str(tmp_path / "d")))
    write_table(tmp_path / "e" / "a.parquet", [{"body": r["text"]} for r in table_rows[:5]])
    result = ulmfit("preprocess", "--data", f"{tmp_path}/e/*.parquet", "--out", tmp_path / "run",
                    "--text-column", "body")
    assert result.returncode == 0, result.stderr[-3000:]
    write_table(tmp_path / "e" / "b.parquet", [{"text": r["text"]} for r in table_rows[5:9]])
    line = error_line(ulmfit("preprocess", "--data", f"{tmp_path}/e/*.parquet", "--out", tmp_path / "run",
                             "--text-column", "body"))
    assert line == f"ulmfit: error: {tmp_path}/e/b.parquet: no 'body' column (--text-column) (columns: text)"
    assert read_json(RunDir(tmp_path / "run").ingest_summary)["docs"] == 5  # the earlier run as it was


@pytest.mark.slow
def test_a_dataset_read_in_parallel_gives_the_shards_read_in_turn(tmp_path, table_rows):
    """`ulmfit preprocess` on a glob, its files read by tasks on two Dask workers, gives byte for
    byte the raw shards, token shards and vocab of the stage functions reading them in turn."""
    write_dataset(tmp_path / "data", table_rows)
    data = f"{tmp_path}/data/**/*.*"
    turn = RunDir(tmp_path / "in-turn")
    stages.preprocess_in_process(turn, data, get_preset("tiny"), limit=25, seed=2, shard_docs=30)
    out = tmp_path / "parallel"
    result = ulmfit("preprocess", "--data", data, "--out", out, "--preset", "tiny", "--limit", 25,
                    "--seed", 2, "--shard-docs", 30, "--workers", 2)
    assert result.returncode == 0, result.stderr[-5000:]
    for name in ("2024/a.csv", "2024/b.parquet", "2025/c.csv"):  # a task each, on the workers
        assert f"Task run 'ingest {name}' - Finished in state Completed()" in result.stderr
    parallel = RunDir(out)
    summary = read_json(parallel.ingest_summary)
    assert (f"ingested {summary['docs']} documents from 3 files into {len(summary['shards'])} shards "
            "(skipped 1)") in result.stderr
    assert summary["shards"] == read_json(turn.ingest_summary)["shards"]
    assert len(summary["files"]) == 3 and summary["docs"] == 25 * 5
    for rel in [*summary["shards"], *(s.replace("raw/", "tokens/") for s in summary["shards"]),
                *(s.replace("raw/", "ids/") for s in summary["shards"]), "vocab.json"]:
        assert parallel.path(rel).read_bytes() == turn.path(rel).read_bytes(), rel
