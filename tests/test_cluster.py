"""Preprocessing on a real Dask cluster (a `dask scheduler` and `dask worker` processes on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ulmfit, write_table
from ulmfit_core import stages
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.run.manifests import file_sha256

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(dask_cluster):
    return dask_cluster(workers=2)


def outputs(run: Path) -> dict:
    files = sorted(run.glob("tokens/*.parquet")) + sorted(run.glob("ids/*.parquet")) + [run / "vocab.json"]
    return {str(p.relative_to(run)): file_sha256(p) for p in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_tarball) -> dict:
    """The same preprocessing on a LocalCluster, undisturbed."""
    out = tmp_path_factory.mktemp("local") / "run"
    result = ulmfit("preprocess", "--data", sample_tarball, "--out", out, "--shard-docs", 10, "--workers", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return outputs(out)


def test_existing_scheduler_gives_the_same_shards_and_vocab(cluster, tmp_path, sample_tarball, reference):
    out = tmp_path / "run"
    result = ulmfit("preprocess", "--data", sample_tarball, "--out", out, "--shard-docs", 10,
                    "--dask-address", cluster.address)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(reference) == 3 * 20 + 1  # token, count and id shards, and the vocab
    assert outputs(out) == reference


def test_killing_a_worker_mid_tokenization_changes_nothing(cluster, tmp_path, sample_tarball, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "preprocess", "--data", str(sample_tarball), "--out",
         str(out), "--shard-docs", "10", "--dask-address", cluster.address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ})
    # Kill one worker as soon as the first token shards are finished, while others are pending.
    cluster.wait_for(lambda: len(list((out / "tokens").glob("part-*.json"))) >= 2 or proc.poll() is not None,
              300, "first token shards")
    victim = cluster.workers[0]
    victim.kill()
    victim.wait()
    finished_before_kill = len(list((out / "tokens").glob("part-*.json")))
    assert finished_before_kill < 20, "tokenization ended before the worker was killed"
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    done = len(list((out / "tokens").glob("part-*.json")))
    assert done == 20
    assert outputs(out) == reference


def test_training_is_routed_to_the_worker_with_the_resource(dask_cluster, tmp_path, preprocessed):
    """Tokenization may run on any worker; training only where `--resources GPU=1` was declared."""
    cluster = dask_cluster(workers=2, resources={1: "GPU=1"})
    out = tmp_path / "run"
    shutil.copytree(preprocessed, out)
    result = ulmfit("train-lm", "--out", out, "--dask-address", cluster.address,
                    "--train-resource", "GPU", "--seed", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "lm" / "metrics.json").read_text())
    assert metrics["pid"] == cluster.workers[1].pid != cluster.workers[0].pid
    assert (out / "export" / "encoder.pth").exists()


@pytest.mark.usefixtures("own_prefect_server")
def test_two_runs_side_by_side_do_not_interfere(tmp_path, sample_tarball, reference):
    """Each run has its own directory, Prefect server and LocalCluster: same results as alone."""
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", "preprocess", "--data", str(sample_tarball),
                               "--out", str(out), "--shard-docs", "10", "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for out in outs]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    for out in outs:
        assert outputs(out) == reference


def test_killing_a_worker_mid_ingest_changes_nothing(cluster, tmp_path, table_rows):
    """A dataset of 40 Parquet files read by ingest tasks on two workers, one killed once the
    first files are read: its files are read again elsewhere, and the raw shards are those of
    reading the files in turn (`--limit` keeps the rest of the run short; every row is read)."""
    data = tmp_path / "reviews"
    rows = [{**r, "text": (r["text"] + " ") * 2} for r in table_rows if r["text"].strip()]
    for f in range(40):
        write_table(data / f"part-{f:02d}.parquet",
                    [{**r, "id": f"{r['id']}~{f}~{k}"} for k in range(5) for r in rows])
    reference = RunDir(tmp_path / "in-turn")
    stages.ingest_stage(reference, str(data), 20, 0)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "preprocess", "--data", str(data), "--out", str(out),
         "--limit", "20", "--dask-address", cluster.address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ})
    partial = out / ".raw.partial"
    cluster.wait_for(lambda: len(list(partial.glob("part-*.parquet"))) >= 2 or proc.poll() is not None,
                     300, "the first files read")
    victim = cluster.workers[0]
    victim.kill()
    victim.wait()
    assert len(list(partial.glob("part-*.parquet"))) < 40, "ingest ended before the worker was killed"
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    summary = read_json(RunDir(out).ingest_summary)
    assert summary == {**read_json(reference.ingest_summary), "source": str(data), "seconds": summary["seconds"]}
    for shard in summary["shards"]:
        assert (out / shard).read_bytes() == reference.path(shard).read_bytes(), shard
