"""Task logic under Prefect's test harness (a temporary server in this process): which failures
are retried, and the tasks' asset declarations; no subprocess, no cluster."""

from __future__ import annotations

import logging

import pytest
from prefect import flow
from prefect.tasks import MaterializingTask
from prefect.testing.utilities import prefect_test_harness

from tasks.common import materializing, retry_transient, task
from ulmfit_core.errors import DamagedFile, DataError, Stopped


@pytest.fixture(scope="module", autouse=True)
def harness():
    core = logging.getLogger("ulmfit")
    handlers = list(core.handlers)
    with prefect_test_harness(server_startup_timeout=120):
        yield
    core.handlers[:] = handlers  # tasks gave it Prefect's API handler; later tests run no flows


FAILURES = {"bad input": DataError("x.csv: row 3: no text"), "damaged file": DamagedFile("model.pth"),
            "diverged": FloatingPointError("nan"), "stopped": Stopped("stop"),
            "lost worker": OSError("connection reset"), "rank failed": RuntimeError("rank 1 died")}


@pytest.mark.parametrize("failure, attempts", [("bad input", 1), ("damaged file", 1), ("diverged", 1),
                                               ("stopped", 1), ("lost worker", 3), ("rank failed", 3)])
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


def test_a_task_declares_what_it_reads_and_writes_as_assets(tmp_path):
    @task(name="train-language-model", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)
    def train(out: str) -> str:
        return out

    lm = materializing(train, str(tmp_path), ["lm/model.pth"], ["vocab.json", "ids"])
    assert isinstance(lm, MaterializingTask)
    assert [a.key for a in lm.assets] == [f"file://{tmp_path}/lm/model.pth"]
    assert [a.key for a in lm.asset_deps] == [f"file://{tmp_path}/vocab.json", f"file://{tmp_path}/ids"]
    assert (lm.name, lm.retries, lm.retry_delay_seconds, lm.retry_condition_fn) == (
        "train-language-model", 1, 5, retry_transient)
    assert lm.fn(str(tmp_path)) == str(tmp_path)  # the same function underneath


def test_a_run_directory_that_cannot_be_an_asset_key_keeps_the_task(tmp_path, caplog):
    @task(name="vocab")
    def vocab(out: str) -> str:
        return out

    odd = tmp_path / "runs with space"
    with caplog.at_level(logging.WARNING, logger="ulmfit"):
        assert materializing(vocab, str(odd), ["vocab.json"]) is vocab
    assert f"no Prefect assets for {odd}" in caplog.text
    assert vocab.fn("x") == "x"
