"""Run directories on S3-compatible object storage (`--out s3://…`), against a real SeaweedFS
server on loopback (the `object_store` fixture): a run read from and written to the store by a
real Dask cluster whose workers share no folder; predict and score from the stored model; a
stage cut off between writing its files and their manifest is redone, never reused; the lease
that holds a run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.errors import RunInUse
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.run.lease import LEASE, Lease
from ulmfit_core.run.manifests import file_sha256
from ulmfit_core.run.store import local_copy, written

from conftest import error_line, ulmfit, write_dataset


@pytest.fixture
def store(object_store, monkeypatch, tmp_path, table_rows):
    """The store, with this process's AWS variables set for it (the commands and clusters it
    starts inherit them), the three-file dataset of `write_dataset` under s3://corpus/reviews/
    (and locally), a bucket for runs, and this process's local copies under tmp_path/driver."""
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ULMFIT_SCRATCH", str(tmp_path / "driver"))
    local = tmp_path / "reviews"
    files = write_dataset(local, table_rows)
    fs = object_store.filesystem()
    for bucket in ("corpus", "runs"):
        fs.create_dir(bucket)
    for path in files:
        object_store.put(f"corpus/reviews/{path.relative_to(local).as_posix()}", path.read_bytes())
    object_store.local = local
    return object_store


def objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`, by its name relative to it."""
    found = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    out = {}
    for info in found:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(prefix) + 1:]] = f.read()
    return out


@pytest.mark.slow
def test_a_run_on_object_storage_is_the_run_of_a_local_folder(store, dask_cluster, tmp_path, table_rows):
    """`ulmfit run --data s3://… --out s3://…` on a real cluster of two workers in folders of
    their own (no run folder shared; training on the one with the GPU resource): raw, token and
    id shards and vocab are byte for byte those of a local run of the same files; the run is
    complete, its report and lineage name the run's URL and no local copy; the workers' local
    copies are gone; a rerun reuses everything; predict and score read the stored model."""
    cluster = dask_cluster(workers=2, resources={1: "GPU=1"}, env={"ULMFIT_SCRATCH": "{worker}/scratch"})
    command = ("run", "--data", "s3://corpus/reviews/", "--out", "s3://runs/x", "--preset", "tiny",
               "--limit", 20, "--dask-address", cluster.address, "--train-resource", "GPU")
    result = ulmfit(*command)
    assert result.returncode == 0, result.stderr[-5000:]

    local = RunDir(tmp_path / "local")
    stages.preprocess_in_process(local, str(store.local), get_preset("tiny"), limit=20)
    fs = store.filesystem()
    stored = objects(fs, "runs/x")
    shards = read_json(local.ingest_summary)["shards"]
    compared = [*shards, *(s.replace("raw/", "tokens/") for s in shards),
                *(s.replace("raw/", "ids/") for s in shards), "vocab.json"]
    for rel in compared:
        assert stored[rel] == local.path(rel).read_bytes(), rel
    summary = json.loads(stored["raw/_ingest.json"])
    assert summary["source"] == "s3://corpus/reviews/"
    assert [f["file"] for f in summary["files"]] == [f"s3://corpus/reviews/{n}" for n in
                                                     ("2024/a.csv", "2024/b.parquet", "2025/c.csv")]
    status = json.loads(stored["run.json"])
    assert status["status"] == "complete" and status["params"]["out"] == "s3://runs/x"
    assert json.loads(stored["lineage.json"])["run"] == "s3://runs/x"
    assert {"classifier/model.pth", "export/encoder.pth", "lm/model.pth", "report.md",
            "metrics.json", "logs/ulmfit.log"} <= set(stored)
    assert LEASE not in stored and not any(name.startswith(".raw.partial") for name in stored)
    scratch = str(tmp_path / "driver")
    for name, data in stored.items():
        if name.endswith((".json", ".md", ".log")):
            assert scratch not in data.decode() and "ulmfit-run-" not in data.decode(), name
    for folder in cluster.folders:  # each worker worked on local copies, all of them gone
        assert [p.name for p in folder.iterdir()] == ["scratch"]
        assert list((folder / "scratch").iterdir()) == []
    assert list((tmp_path / "driver").iterdir()) == []

    again = ulmfit(*command)
    assert again.returncode == 0, again.stderr[-5000:]
    rerun = objects(fs, "runs/x")
    for rel in [*compared, "lm/model.pth", "classifier/model.pth"]:
        assert rerun[rel] == stored[rel], rel
    assert json.loads(rerun["preprocess.json"])["reused_shards"]["ids"] == len(shards)
    assert json.loads(rerun["raw/_ingest.json"])["seconds"] == summary["seconds"]  # not read again

    predicted = {}
    copy = tmp_path / "copy"
    for name, data in stored.items():
        if name.startswith("classifier/"):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(data)
    for model in ("s3://runs/x", copy):
        result = ulmfit("predict", "--model", model, "a wonderful film, I loved it", "dull and boring")
        assert result.returncode == 0, result.stderr[-3000:]
        predicted[str(model)] = result.stdout
    assert predicted["s3://runs/x"] == predicted[str(copy)] and len(predicted[str(copy)].splitlines()) == 2

    result = ulmfit("score", "--model", "s3://runs/x", "--data", "s3://corpus/reviews/", "--out",
                    "s3://runs/scored", "--dask-address", cluster.address)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = objects(fs, "runs/scored")
    summary = json.loads(scored["score.json"])
    assert summary["model"] == {"path": "s3://runs/x/classifier/model.pth",
                                "sha256": file_sha256(copy / "classifier" / "model.pth")}
    assert summary["rows"] == len(table_rows) and summary["reused_files"] == 0
    assert {"2024/a.csv.parquet", "2024/b.parquet", "2025/c.csv.parquet"} <= set(scored)
    table = pq.read_table(fs.open_input_file("runs/scored/2024/b.parquet"))
    assert table.num_rows > 0 and "pred" in table.column_names


@pytest.mark.slow
def test_a_stage_cut_off_before_its_manifest_is_redone(store, tmp_path):
    """The files of a stage are written back before their manifest: a token shard whose manifest
    never arrived, and an id shard whose bytes differ from what its manifest records, are made
    again by the next run (not reused), which ends with the objects of an uncut run."""
    command = ("preprocess", "--data", "s3://corpus/reviews/", "--out", "s3://runs/cut", "--preset",
               "tiny", "--limit", 20, "--shard-docs", 20, "--workers", 2)
    first = ulmfit(*command)
    assert first.returncode == 0, first.stderr[-5000:]
    fs = store.filesystem()
    made = objects(fs, "runs/cut")
    shards = json.loads(made["raw/_ingest.json"])["shards"]
    assert len(shards) >= 2
    first_stem, second = shards[0][len("raw/"):-len(".parquet")], shards[1].replace("raw/", "ids/")
    fs.delete_file(f"runs/cut/tokens/{first_stem}.json")
    store.put(f"runs/cut/{second}", made[second][: len(made[second]) // 2])
    again = ulmfit(*command)
    assert again.returncode == 0, again.stderr[-5000:]
    # The remade token shard has the bytes it had: its id shard is reused, the damaged one remade.
    assert json.loads(objects(fs, "runs/cut")["preprocess.json"])["reused_shards"] == {
        "tokens": len(shards) - 1, "ids": len(shards) - 1}
    remade = objects(fs, "runs/cut")
    for name in made:
        if name.endswith(".parquet") or name == "vocab.json":  # manifests record each making's time
            assert remade[name] == made[name], name


def test_a_file_written_back_at_once_is_on_the_store_before_its_task_ends(store):
    """`written` (a training's checkpoint after each epoch) puts one file of a local copy on the
    store at once, and its removal too; the rest waits for the end of the task's copy."""
    with local_copy("s3://runs/ckpt", ["lm"]) as local:
        checkpoint, other = Path(local) / "lm" / "checkpoint.pth", Path(local) / "lm" / "model.pth"
        checkpoint.parent.mkdir()
        checkpoint.write_bytes(b"epoch 1")
        other.write_bytes(b"model")
        written(checkpoint)
        assert objects(store.filesystem(), "runs/ckpt") == {"lm/checkpoint.pth": b"epoch 1"}
        checkpoint.unlink()
        written(checkpoint)
        assert objects(store.filesystem(), "runs/ckpt") == {}
    assert objects(store.filesystem(), "runs/ckpt") == {"lm/model.pth": b"model"}


def test_the_lease_holds_a_run_on_object_storage_for_one_process(store, monkeypatch):
    """A held lease refuses a second holder, which takes it once it is released; a lease whose
    holder stopped renewing it (a crashed run) is taken over once it has lapsed."""
    first, second = Lease("s3://runs/held"), Lease("s3://runs/held")
    first.take()
    with pytest.raises(RunInUse, match=r"^s3://runs/held is in use by a run still going \(pid \d+ on "):
        second.take()
    first.release()
    second.take()
    second._stop.set()  # the holder dies: its lease is no longer renewed
    body = {"holder": "pid 1 on elsewhere", "token": "gone", "expires": time.time() - 1}
    store.put("runs/held/.lock", json.dumps(body).encode())
    third = Lease("s3://runs/held")
    third.take()
    assert json.loads(objects(store.filesystem(), "runs/held")[".lock"])["token"] == third.token
    third.release()
    assert ".lock" not in objects(store.filesystem(), "runs/held")


def test_a_run_on_a_missing_bucket_is_one_line_before_any_work(store, tmp_path):
    line = error_line(ulmfit("preprocess", "--data", store.local, "--out", "s3://nowhere/run"))
    assert line == "ulmfit: error: s3://nowhere/run: no such bucket 'nowhere'"
    assert store.filesystem().get_file_info("nowhere").type == pafs.FileType.NotFound
