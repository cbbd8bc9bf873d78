"""Data-parallel training on a real Dask cluster (a `dask scheduler` and `dask worker --resources
GPU=1` processes), two CPU ranks talking gloo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelBatchException, CancelValidException
from fastai.text.models.awdlstm import WeightDropout

from tasks.ranks import Ranks, run_ranks
from ulmfit_core.errors import RankFailed, RendezvousFailed
from conftest import Command, ulmfit
from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.model.weights import load_model_file
from ulmfit_core.rendezvous import free_port
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.text.vocab import Vocab
from ulmfit_core.training import classifier_learner, lm_learner
from ulmfit_core.training.parallel import process_group, unwrap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, preprocessed) -> RunDir:
    """The sample with a tiny LM and its encoder (one process), for the classifier's batches."""
    run = RunDir(tmp_path_factory.mktemp("parallel") / "run")
    shutil.copytree(preprocessed, run.root)
    stages.lm_stage(run, get_preset("tiny"), 0)
    stages.export_stage(run)
    return run


class Record(Callback):
    """Records the rows each training batch gives this rank; only the first batch trains (its
    gradients kept), the others are skipped, and so is validation."""

    order = 6  # after DataParallel has cut the batch

    def before_fit(self) -> None:
        self.batches, self.grads = [], None

    def before_batch(self) -> None:
        if self.training:
            self.batches.append((self.xb[0].clone(), self.yb[0].clone()))
            if self.grads is not None:
                raise CancelBatchException

    def after_backward(self) -> None:
        self.grads = {n: p.grad.clone() for n, p in unwrap(self.model).named_parameters()
                      if p.grad is not None}

    def before_validate(self) -> None:
        raise CancelValidException


def _plain_weights(m: WeightDropout) -> None:
    for layer in m.layer_names:
        setattr(m.module, layer, getattr(m, f"{layer}_raw").clone())


def one_epoch(kind: str, root: str, seed: int = 0) -> dict:
    """One epoch's batches (as this rank sees them) and the first step's gradients, with the
    tiny preset made deterministic (no dropout) and in fp32."""
    run = RunDir(root)
    tiny = get_preset("tiny")
    preset = replace(tiny, cpu_bf16=False, lm=replace(tiny.lm, drop_mult=0.0),
                     classifier=replace(tiny.classifier, drop_mult=0.0))
    cpu = torch.device("cpu")
    if kind == "lm":
        learn, *_ = lm_learner(stages.training_docs(run), len(Vocab.load(run.vocab)), preset, seed, cpu)
    else:
        encoder = load_model_file(run.export / "encoder.pth", "encoder")
        docs = stages.training_docs(run, splits=["train"], labelled=True)
        learn, *_ = classifier_learner(docs, encoder["state_dict"], encoder["vocab_size"], preset,
                                       seed, cpu)
    for m in learn.model.modules():
        if isinstance(m, WeightDropout):  # with p = 0, fastai's weight dropout registers the
            m._setweights = partial(_plain_weights, m)  # weights it sets as parameters
        elif isinstance(m, torch.nn.Dropout):  # the head's hidden layer keeps 0.1 at drop_mult 0
            m.p = 0.0
    record = Record()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[record])
    return {"batches": record.batches, "grads": record.grads}


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_two_ranks_see_each_batch_once_and_take_the_single_process_step(dask_cluster, trained, kind):
    cluster = dask_cluster(workers=2, resources={0: "GPU=1", 1: "GPU=1"})
    ranks = run_ranks(Ranks(2, cluster.address, "GPU"), one_epoch, kind, str(trained.root))
    alone = one_epoch(kind, str(trained.root))
    assert len(alone["batches"]) > 2
    for r in ranks:
        assert len(r["batches"]) == len(alone["batches"])
    for i, (x, y) in enumerate(alone["batches"]):
        # The two ranks' rows, put together, are the single process's batch: no row twice, none lost.
        assert torch.equal(torch.cat([r["batches"][i][0] for r in ranks]), x), f"batch {i}"
        assert torch.equal(torch.cat([r["batches"][i][1] for r in ranks]), y)
        assert all(len(r["batches"][i][0]) > 0 for r in ranks)
    assert alone["grads"].keys() == ranks[0]["grads"].keys()
    for name, grad in alone["grads"].items():
        for r in ranks:  # averaged over the ranks, the gradients are the whole batch's
            np.testing.assert_allclose(r["grads"][name], grad, atol=1e-5, err_msg=name)


def test_lm_and_classifier_train_on_two_ranks_through_the_command(dask_cluster, tmp_path, preprocessed):
    cluster = dask_cluster(workers=2, resources={0: "GPU=1", 1: "GPU=1"})
    out = tmp_path / "run"
    shutil.copytree(preprocessed, out)
    common = ["--out", out, "--dask-address", cluster.address, "--train-resource", "GPU",
              "--train-workers", 2]
    # The ranks' lines come back to the command (and so to the Prefect UI): rank 0's epochs,
    # rank 1's arrival in the group, and nothing else of rank 1's (it only warns).
    for command, last_epoch in (("train-lm", "lm: fit epoch 3/3 done"),
                                ("train-classifier", "classifier: unfreeze epoch 2/2 done")):
        result = ulmfit(command, *common)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "training on 2 ranks" in result.stderr and last_epoch in result.stderr
        assert "rank 1 of 2 joined the group" in result.stderr and "rank 1:" not in result.stderr
        assert last_epoch in (out / "logs" / "ulmfit.log").read_text()
    worker_pids = {w.pid for w in cluster.workers}
    for folder in ("lm", "classifier"):
        metrics = read_json(out / folder / "metrics.json")
        ranks = metrics["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert {r["pid"] for r in ranks} == worker_pids  # one rank on each worker
        assert metrics["pid"] == ranks[0]["pid"]  # rank 0 wrote the model and metrics
        assert not (out / folder / "checkpoint.pth").exists()
    lm = read_json(out / "lm" / "metrics.json")["history"]
    assert lm[-1]["valid_loss"] < lm[0]["valid_loss"]
    clas = read_json(out / "classifier" / "metrics.json")
    assert clas["stages"][-1]["history"][-1]["train_loss"] < clas["stages"][0]["history"][0]["train_loss"]
    assert read_json(out / "classifier" / "test.json")["accuracy"] is not None


def test_a_rank_whose_worker_dies_is_named_and_the_retry_resumes(dask_cluster, tmp_path, long_texts_run):
    cluster = dask_cluster(workers=2, resources={0: "GPU=1", 1: "GPU=1"}, nanny=True)
    out = tmp_path / "run"
    shutil.copytree(long_texts_run, out)
    checkpoint = out / "lm" / "checkpoint.pth"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "train-lm", "--out", str(out), "--dask-address",
         cluster.address, "--train-resource", "GPU", "--train-workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    cluster.wait_for(lambda: checkpoint.exists() or proc.poll() is not None, 300, "first checkpoint")
    assert checkpoint.exists(), proc.communicate()[1][-3000:]
    from distributed import Client

    with Client(cluster.address) as client:  # the worker processes under the nannies
        pids = client.run(os.getpid)
    victim = sorted(pids)[1]
    os.kill(pids[victim], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"died with its worker {victim}" in stderr
    metrics = read_json(out / "lm" / "metrics.json")
    assert metrics["resumed"] is not None and metrics["resumed"]["epochs_done"] >= 1
    assert [e["epoch"] for e in metrics["history"]] == [1, 2, 3]
    assert pids[victim] not in {r["pid"] for r in metrics["ranks"]}  # the nanny's new worker


def test_a_rendezvous_with_a_rank_missing_fails_within_its_timeout():
    started = time.time()
    with pytest.raises(RendezvousFailed, match=r"rank 0 of 2: the ranks did not all meet .* within 3 s"):
        with process_group(0, 2, "127.0.0.1", free_port(), timeout_s=3):
            pass
    assert time.time() - started < 30


def test_too_few_workers_for_the_ranks_fail_within_the_timeout(dask_cluster):
    cluster = dask_cluster(workers=1, resources={0: "GPU=1"})
    with pytest.raises(RankFailed, match=r"--train-workers 2 needs 2 Dask workers declaring "
                                         r"resource GPU; the cluster had 1 after 2 s"):
        run_ranks(Ranks(2, cluster.address, "GPU", timeout_s=2), json.dumps, {})


def test_ranks_on_a_local_cluster_stop_on_a_signal_and_a_rerun_resumes(tmp_path, long_texts_run):
    """Without --dask-address the command starts N local workers; Ctrl-C in its terminal (the
    whole process group, the workers too) stops every rank."""
    out = tmp_path / "run"
    shutil.copytree(long_texts_run, out)
    checkpoint = out / "lm" / "checkpoint.pth"
    command = Command("train-lm", "--out", out, "--train-workers", 2)
    command.wait_for(checkpoint.exists)
    signalled = command.signal_group(signal.SIGINT)
    assert command.finish() == 130, command.output[-3000:]
    assert time.time() - signalled < 30, command.output[-3000:]
    assert "Traceback" not in command.output
    assert command.leftovers() == []
    assert read_json(out / "run.json")["status"] == "stopped"
    assert not (out / "lm" / "model.pth").exists()

    result = ulmfit("train-lm", "--out", out, "--train-workers", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_json(out / "lm" / "metrics.json")
    assert metrics["resumed"]["epochs_done"] >= 1
    assert [e["epoch"] for e in metrics["history"]] == [1, 2, 3]
    assert len({r["pid"] for r in metrics["ranks"]}) == 2 and os.getpid() not in {r["pid"] for r in metrics["ranks"]}
