"""Preprocessing on a real Dask cluster (a `dask scheduler` and `dask worker` processes on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_flow import ulmfit
from ulmfit_core.shards import file_sha256

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


class Cluster:
    """A scheduler and single-threaded worker processes, each its own OS process."""

    def __init__(self, tmp: Path, workers: int, resources: dict[int, str] | None = None) -> None:
        resources = resources or {}
        self.file = tmp / "scheduler.json"
        self.procs = [subprocess.Popen(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", self.file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        _wait_for(self.file.exists, 60, "scheduler file")
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [subprocess.Popen(
            [BIN / "dask", "worker", self.address, "--nthreads", "1", "--no-nanny",
             "--host", "127.0.0.1", "--name", f"w{i}",
             *(["--resources", resources[i]] if i in resources else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
        self.procs += self.workers
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, workers=2)
    yield c
    c.close()


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
    _wait_for(lambda: len(list((out / "tokens").glob("part-*.json"))) >= 2 or proc.poll() is not None,
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


def test_training_is_routed_to_the_worker_with_the_resource(tmp_path, preprocessed):
    """Tokenization may run on any worker; training only where `--resources GPU=1` was declared."""
    cluster = Cluster(tmp_path, workers=2, resources={1: "GPU=1"})
    try:
        out = tmp_path / "run"
        shutil.copytree(preprocessed, out)
        result = ulmfit("train-lm", "--out", out, "--dask-address", cluster.address,
                        "--train-resource", "GPU", "--seed", 1)
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((out / "lm" / "metrics.json").read_text())
        assert metrics["pid"] == cluster.workers[1].pid != cluster.workers[0].pid
        assert (out / "export" / "encoder.pth").exists()
    finally:
        cluster.close()


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
