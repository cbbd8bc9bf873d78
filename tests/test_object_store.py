"""A corpus on S3-compatible object storage: a real SeaweedFS server on loopback (started by the
`object_store` fixture), read through pyarrow's S3 filesystem (its preprocessing into a run on
the store: `test_object_runs`), and scored by `ulmfit score --data s3://…` as its local copy is;
a missing bucket, wrong credentials, an unreachable endpoint and a prefix without tables are one
line each, before any work."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from ulmfit_core.errors import DataError
from ulmfit_core.run.layout import read_json
from ulmfit_core.run.storage import ObjectPath
from ulmfit_core.text.sources import check_source, open_source

from conftest import error_line, ulmfit, write_dataset


@pytest.fixture
def uploaded(object_store, monkeypatch, tmp_path, table_rows):
    """The three-file dataset of `write_dataset`, locally and under s3://corpus/reviews/, with
    this process's AWS variables set for the store (the commands it starts inherit them)."""
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "reviews"
    files = write_dataset(local, table_rows)
    object_store.filesystem().create_dir("corpus")
    for path in [*files, local / "README.txt"]:
        object_store.put(f"corpus/reviews/{path.relative_to(local).as_posix()}", path.read_bytes())
    return local


def test_a_prefix_a_glob_or_an_object_names_the_tables_there(uploaded):
    names = ["2024/a.csv", "2024/b.parquet", "2025/c.csv"]
    for url, expected in (("s3://corpus/reviews/", names), ("s3://corpus/reviews", names),
                          ("s3://corpus/reviews/**/*.csv", ["2024/a.csv", "2025/c.csv"]),
                          ("s3://corpus/reviews/*/b.parquet", ["2024/b.parquet"]),
                          ("s3://corpus/reviews/2025/c.csv", ["c.csv"])):
        source = open_source(url)
        assert source.dataset and [source.relative(f) for f in source.files] == expected, url
        check_source(source)
    assert open_source("s3://corpus/reviews/").files[0] == ObjectPath("s3://corpus/reviews/2024/a.csv")


def test_bad_object_storage_is_one_line_before_any_work(uploaded, monkeypatch, tmp_path):
    with pytest.raises(DataError, match=r"^s3://nowhere/reviews/: no such bucket 'nowhere'$"):
        open_source("s3://nowhere/reviews/")
    with pytest.raises(DataError, match=r"^s3://corpus/none/: no \.csv or \.parquet object here$"):
        open_source("s3://corpus/none/")
    with pytest.raises(DataError, match=r"^s3://corpus/reviews/\*\.json: no \.csv or \.parquet object matches$"):
        open_source("s3://corpus/reviews/*.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    line = error_line(ulmfit("preprocess", "--data", "s3://corpus/reviews/", "--out", tmp_path / "run"))
    assert line == ("ulmfit: error: s3://corpus/reviews/: access denied (check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY)")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    line = error_line(ulmfit("preprocess", "--data", "s3://corpus/reviews/", "--out", tmp_path / "run"))
    assert line == "ulmfit: error: s3://corpus/reviews/: cannot reach http://127.0.0.1:9 (AWS_ENDPOINT_URL)"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_dataset_on_object_storage_is_scored_as_its_local_copy(uploaded, trained, tmp_path):
    """`ulmfit score --data s3://…` on the Dask workers writes the predictions of the local
    copy, file for file; a rerun finds every object scored by this model and reuses it."""
    scored = {}
    for where, data in (("local", uploaded), ("store", "s3://corpus/reviews/")):
        out = tmp_path / f"scored-{where}"
        result = ulmfit("score", "--model", trained.root, "--data", data, "--out", out, "--workers", 2)
        assert result.returncode == 0, result.stderr[-3000:]
        scored[where] = out
    names = ["2024/a.csv.parquet", "2024/b.parquet", "2025/c.csv.parquet"]
    summary = read_json(scored["store"] / "score.json")
    assert [f["output"] for f in summary["files"]] == names
    assert summary["files"][0]["input"] == "s3://corpus/reviews/2024/a.csv"
    for name in names:
        assert pq.read_table(scored["store"] / name).equals(pq.read_table(scored["local"] / name)), name
    again = ulmfit("score", "--model", trained.root, "--data", "s3://corpus/reviews/", "--out",
                   scored["store"], "--workers", 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_json(scored["store"] / "score.json")["reused_files"] == 3
