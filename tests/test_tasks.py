"""Tasks and flows under Prefect's test harness (a temporary server in this process): which
failures are retried, the tasks' asset declarations, the preprocess flow on threads, and how
training chains are paced; no subprocess, no cluster."""

from __future__ import annotations

import logging
import time

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import MaterializingTask
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from flows.pipeline import preprocess_flow, train_lm_flow
from flows.runtime import Training, TrainingThreads
from tasks import preprocess as prep
from tasks import train
from tasks.common import for_run, retry_transient, task
from tasks.ranks import Ranks
from ulmfit_core import stages
from ulmfit_core.errors import DamagedFile, DataError, DiskFull, Stopped
from ulmfit_core.run.job import Job
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.storage import ObjectPath


@pytest.fixture(scope="module", autouse=True)
def harness():
    core = logging.getLogger("ulmfit")
    handlers = list(core.handlers)
    with prefect_test_harness(server_startup_timeout=120):
        yield
    core.handlers[:] = handlers  # tasks gave it Prefect's API handler; later tests run no flows


FAILURES = {"bad input": DataError("x.csv: row 3: no text"), "damaged file": DamagedFile("model.pth"),
            "diverged": FloatingPointError("nan"), "stopped": Stopped("stop"),
            "lost worker": OSError("connection reset"), "rank failed": RuntimeError("rank 1 died"),
            "disk full": DiskFull("lm/checkpoint.pth: no space left on its device")}


@pytest.mark.parametrize("failure, attempts", [("bad input", 1), ("damaged file", 1), ("diverged", 1),
                                               ("stopped", 1), ("lost worker", 3), ("rank failed", 3),
                                               ("disk full", 1)])
def test_only_transient_failures_are_retried(failure, attempts):
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def stage():
        calls.append(1)
        raise FAILURES[failure]

    @flow
    def job():
        state = stage(return_state=True)
        return state.is_failed(), state.result(raise_on_failure=False)

    failed, error = job()
    assert failed and type(error) is type(FAILURES[failure]) and len(calls) == attempts


def test_a_task_declares_the_files_it_reads_and_writes_as_assets_of_a_run(tmp_path):
    run = RunDir(tmp_path / "run", backwards=True)
    lm = for_run(train.train_lm, run)
    assert isinstance(lm, MaterializingTask)
    assert [a.key for a in lm.assets] == [f"file://{run.root}/lm-bwd/model.pth"]
    assert [a.key for a in lm.asset_deps] == [f"file://{run.root}/vocab.json", f"file://{run.root}/ids"]
    assert (lm.name, lm.task_run_name, lm.retries, lm.retry_delay_seconds, lm.retry_condition_fn) == (
        "train-language-model", train.train_lm.task_run_name, 1, 5, retry_transient)
    assert lm.fn is train.train_lm.fn  # the same function underneath
    ingest = for_run(prep.finish_ingest, RunDir(tmp_path / "run"), tmp_path / "corpus.csv")
    assert [a.key for a in ingest.asset_deps] == [f"file://{tmp_path}/corpus.csv"]
    assert [a.key for a in for_run(prep.finish_ingest, RunDir(tmp_path / "run"), ObjectPath("s3://b/corpus")).asset_deps] \
        == ["s3://b/corpus"]
    assert ingest.retries == 2 and ingest.retry_delay_seconds == [2, 10]
    on_store = for_run(train.train_lm, RunDir("s3://runs/x", backwards=True))  # keyed by the objects' URLs
    assert [a.key for a in on_store.assets] == ["s3://runs/x/lm-bwd/model.pth"]
    assert [a.key for a in on_store.asset_deps] == ["s3://runs/x/vocab.json", "s3://runs/x/ids"]


def test_a_run_directory_that_cannot_be_an_asset_key_keeps_the_task(tmp_path, caplog):
    odd = tmp_path / "runs with space"
    with caplog.at_level(logging.WARNING, logger="ulmfit"):
        assert for_run(prep.build_vocab, RunDir(odd)) is prep.build_vocab
    assert f"no Prefect assets for {odd}" in caplog.text


def test_the_preprocess_flow_writes_what_the_stage_functions_write(tmp_path, sample_tarball, preprocessed):
    """The flow on threads (no cluster) makes the shards and vocab of the stage functions called
    one after another, byte for byte; run again, it reuses every shard."""
    preprocess = preprocess_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    job = Job(out=str(tmp_path / "run"), data=str(sample_tarball), shard_docs=60)
    first, again = preprocess(job), preprocess(job)
    assert first["shards"] == 4 and first["reused_shards"] == {"tokens": 0, "ids": 0}
    assert again["reused_shards"] == {"tokens": 4, "ids": 4}
    run, made = RunDir(tmp_path / "run"), RunDir(preprocessed)
    for folder in ("raw", "tokens", "ids"):
        ours, theirs = run.shards(run.root / folder), made.shards(made.root / folder)
        assert [p.name for p in ours] == [p.name for p in theirs] and len(ours) == 4
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs)), folder
    assert run.vocab.read_bytes() == made.vocab.read_bytes()


def test_a_failed_encoder_export_fails_the_language_model_flow(tmp_path, monkeypatch):
    """The flow returns only once every task of its chains is done, and fails with any of them."""
    lm = {"valid_loss": 4.0, "accuracy": 0.2, "perplexity": 54.6, "host": "h", "device": "cpu",
          "precision": "fp32"}
    monkeypatch.setattr(stages, "lm_stage", lambda run, *args: lm)

    def damaged(run: RunDir) -> dict:
        raise DamagedFile(f"{run.lm.model}: damaged")

    monkeypatch.setattr(stages, "export_stage", damaged)
    train_lm = train_lm_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    with pytest.raises(DamagedFile, match="lm/model.pth: damaged"):
        train_lm(Job(out=str(tmp_path / "run")))


def test_training_chains_wait_in_turn_unless_they_run_side_by_side_on_workers():
    @task()
    def step(i: int) -> int:
        time.sleep(0.3)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def chains() -> list[bool]:
        finished = []
        for i in range(2):
            with Training().chain() as chain:
                submitted = chain(step.submit(i))
            finished.append(submitted.state.is_final())
        return finished

    assert chains() == [True, True]
    gpus = Training("tcp://scheduler:8786", "GPU")
    assert gpus.side_by_side and isinstance(gpus.task_runner(), DaskTaskRunner) and gpus.ranks is None
    ranks = Training("tcp://scheduler:8786", "GPU", workers=2)
    assert not ranks.side_by_side and isinstance(ranks.task_runner(), TrainingThreads)
    assert ranks.ranks == Ranks(2, "tcp://scheduler:8786", "GPU")
