"""Preprocessing on a real Dask cluster (a `dask scheduler` and `dask worker` processes on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ulmfit
from ulmfit_core.manifests import file_sha256

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
