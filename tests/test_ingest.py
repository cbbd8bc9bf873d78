from __future__ import annotations

import gzip
import tarfile

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import GROUPS, PER_GROUP, write_tarball
from ulmfit_core.errors import DataError
from ulmfit_core.text.ingest import SkipLog, ingest, iter_documents
from ulmfit_core.text.sampling import limit_per_group
from ulmfit_core.text.sources import open_source


def _read_shards(shards):
    return pa.concat_tables([pq.read_table(s) for s in shards]).to_pylist()


def test_tarball_streams_into_labelled_shards(sample_tarball, tmp_path, reviews):
    result = ingest(sample_tarball, tmp_path / "raw", shard_docs=70)
    rows = _read_shards(result.shards)
    assert result.docs == len(rows) == PER_GROUP * len(GROUPS)
    assert len(result.shards) == -(-result.docs // 70)
    assert result.groups == {"test/neg": PER_GROUP, "test/pos": PER_GROUP, "train/neg": PER_GROUP,
                             "train/pos": PER_GROUP, "unsup/-": PER_GROUP}
    by_id = {r["id"]: r for r in rows}
    name, data = reviews["train/pos"][0]
    row = by_id[f"train/pos/{name[:-4]}"]
    assert (row["split"], row["label"], row["text"]) == ("train", "pos", data.decode())
    unsup = next(r for r in rows if r["id"].startswith("train/unsup/"))
    assert (unsup["split"], unsup["label"]) == ("unsup", None)


def test_extracted_folder_gives_the_same_documents(sample_tarball, tmp_path):
    with tarfile.open(sample_tarball) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    from_tar = {d["id"]: d for d in iter_documents(sample_tarball, SkipLog())}
    from_dir = {d["id"]: d for d in iter_documents(tmp_path / "extracted", SkipLog())}
    assert from_dir == from_tar


def test_limit_keeps_a_balanced_seeded_sample(sample_tarball, tmp_path):
    docs = list(iter_documents(sample_tarball, SkipLog()))
    kept = limit_per_group(docs, 5, seed=1)
    groups = {(d["split"], d["label"]) for d in docs}
    for group in groups:
        assert sum((d["split"], d["label"]) == group for d in kept) == 5
    # The same seed picks the same documents whatever the source order; another seed differs.
    assert {d["id"] for d in limit_per_group(list(reversed(docs)), 5, 1)} == {d["id"] for d in kept}
    assert {d["id"] for d in limit_per_group(docs, 5, 2)} != {d["id"] for d in kept}
    positions = [docs.index(d) for d in kept]
    assert positions == sorted(positions)  # source order is kept


def test_empty_and_undecodable_reviews_are_counted_not_lost(tmp_path, reviews):
    bad = {"train/pos": [("1_8.txt", b"   \n "), ("2_9.txt", b"caf\xe9 au lait, \xff great")]
           + reviews["train/pos"][:3], "train/neg": reviews["train/neg"][:3]}
    tarball = write_tarball(tmp_path / "bad.tar.gz", bad)
    result = ingest(tarball, tmp_path / "raw")
    assert result.docs == 6
    assert result.skipped["total"] == 2
    assert result.skipped["by_reason"] == {"empty": 1, "not_utf8": 1}
    assert result.skipped["examples"] == {"empty": ["train/pos/1_8"], "not_utf8": ["train/pos/2_9"]}


def test_truncated_tarball_fails_clearly(sample_tarball, tmp_path):
    """Wherever a download is cut, inside a review or between two (which tarfile alone takes
    for the end of the archive), the tarball is refused, not read as a smaller corpus."""
    data = sample_tarball.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    for share in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(DataError, match=r"cut\.tar\.gz: unreadable or truncated archive"):
            ingest(cut, tmp_path / "raw")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(gzip.compress(b"not a tar file at all" * 10))
    with pytest.raises(DataError, match="garbage.tar.gz"):
        ingest(garbage, tmp_path / "raw2")


def test_csv_source_rows_labels_and_splits(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"text,label\n\"A great, great film.\",pos\nDreadful.,neg\nJust some text,\n\"\",pos\n")
    result = ingest(path, tmp_path / "raw")
    rows = _read_shards(result.shards)
    assert [(r["id"], r["split"], r["label"]) for r in rows] == [
        ("0", "train", "pos"), ("1", "train", "neg"), ("2", "unsup", None)]
    assert rows[0]["text"] == "A great, great film."
    assert result.skipped["by_reason"] == {"empty": 1} and result.skipped["examples"]["empty"] == ["3"]


def test_csv_undecodable_row_is_a_counted_skip(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"id,text,split,label\na,Fine film,test,pos\nb,Bad \xff bytes,test,neg\n")
    result = ingest(path, tmp_path / "raw")
    assert result.docs == 1 and result.skipped["examples"] == {"not_utf8": ["b"]}


def test_parquet_source(tmp_path):
    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"text": ["Loved it.", "Hated it."], "label": ["pos", "neg"],
                             "split": ["train", "test"]}), path)
    rows = _read_shards(ingest(path, tmp_path / "raw").shards)
    assert [(r["id"], r["split"], r["label"], r["text"]) for r in rows] == [
        ("0", "train", "pos", "Loved it."), ("1", "test", "neg", "Hated it.")]


def test_bad_sources_name_the_problem(tmp_path):
    no_text = tmp_path / "no_text.csv"
    pacsv.write_csv(pa.table({"review": ["x"], "label": ["pos"]}), no_text)
    with pytest.raises(DataError, match=r"no_text\.csv: no 'text' column \(columns: review, label\)"):
        ingest(no_text, tmp_path / "raw")
    bad_split = tmp_path / "bad_split.csv"
    pacsv.write_csv(pa.table({"text": ["x", "y"], "split": ["train", "dev"]}), bad_split)
    with pytest.raises(DataError, match=r"bad_split\.csv: row 1: split 'dev' is not one of"):
        ingest(bad_split, tmp_path / "raw")
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n\"\"\n  \n")
    with pytest.raises(DataError, match="empty corpus"):
        ingest(empty, tmp_path / "raw")
    with pytest.raises(DataError, match="no such file"):
        open_source(str(tmp_path / "missing.tar.gz"))
    odd = tmp_path / "reviews.json"
    odd.write_text("{}")
    with pytest.raises(DataError, match="unsupported source"):
        ingest(odd, tmp_path / "raw")


def test_imdb_means_the_environment_variable(monkeypatch, sample_tarball):
    monkeypatch.setenv("ULMFIT_IMDB", str(sample_tarball))
    assert open_source("imdb").files == (sample_tarball,)


def test_shards_are_replaced_not_mixed_on_rerun(sample_tarball, tmp_path):
    first = ingest(sample_tarball, tmp_path / "raw", shard_docs=20)
    second = ingest(sample_tarball, tmp_path / "raw", limit=2, shard_docs=20)
    assert len(first.shards) > 1 and len(second.shards) == 1
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.parquet")) == ["part-00000.parquet"]
