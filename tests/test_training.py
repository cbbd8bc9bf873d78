"""Training beyond one straight run: resume after a killed process, both directions, bf16 on CPU,
where each stage ran, a non-finite loss, running out of GPU memory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.text.learner import LMLearner
from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_split

from ulmfit_core import stages
from ulmfit_core.config import LMConfig, ModelConfig, Stage, get_preset
from ulmfit_core.errors import DamagedFile, DataError
from ulmfit_core.model.networks import build_language_model
from ulmfit_core.model.predict import Classifier, LanguageModel
from ulmfit_core.model.weights import load_checkpoint, save_checkpoint
from ulmfit_core.reporting import write_report
from ulmfit_core.run.layout import CHECKPOINT, RunDir, read_json
from ulmfit_core.text.data import classifier_split, load_docs
from ulmfit_core.training import LOSS_CHECK_EVERY, Checkpoint, ResumePoint, Schedule, fit_schedule, lm_dataloaders
from ulmfit_core.training.loaders import sample_tokens

# A stage of the tiny preset with more epochs, run in a process of its own so it can be killed.
STAGE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from dataclasses import replace
from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.run.layout import RunDir

tiny = get_preset("tiny")
preset = replace(tiny, lm=replace(tiny.lm, epochs=4))
run = RunDir(sys.argv[2])
if sys.argv[1] == "lm":
    stages.lm_stage(run, preset, seed=5)
else:
    stages.classifier_stage(run, preset, seed=5)
"""


def run_stage(stage: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, stage, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def with_encoder(tmp_path_factory, preprocessed) -> Path:
    """A preprocessed run with a (one-epoch) language model and its exported encoder."""
    run = RunDir(tmp_path_factory.mktemp("encoder") / "run")
    shutil.copytree(preprocessed, run.root)
    tiny = get_preset("tiny")
    stages.lm_stage(run, replace(tiny, lm=replace(tiny.lm, epochs=1)), seed=5)
    stages.export_stage(run)
    return run.root


def epochs_in(checkpoint: Path) -> int:
    """The finished epochs a checkpoint records, whatever data and settings made it."""
    fingerprint = torch.load(checkpoint, weights_only=True)["fingerprint"]
    return len(load_checkpoint(checkpoint, fingerprint)["history"])


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("stage,folder,epochs", [("lm", "lm", 4), ("classifier", "classifier", 5)])
def test_killed_training_resumes_where_it_stopped(tmp_path, with_encoder, stage, folder, epochs):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for copy in (straight, killed):
        shutil.copytree(with_encoder, copy)
        shutil.rmtree(copy / folder, ignore_errors=True)  # this stage has not run yet
    finish(run_stage(stage, straight))

    proc = run_stage(stage, killed)
    checkpoint = killed / folder / "checkpoint.pth"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (killed / folder / "model.pth").exists(), \
        "the process ended before it could be killed mid-training"
    done_before_kill = epochs_in(checkpoint)
    assert 1 <= done_before_kill < epochs

    log = finish(run_stage(stage, killed))
    assert "resuming from" in log
    metrics = read_json(killed / folder / "metrics.json")
    assert metrics["resumed"]["epochs_done"] >= done_before_kill
    assert not checkpoint.exists()  # finished: the model file replaces it
    reference = read_json(straight / folder / "metrics.json")
    history = metrics["history"] if stage == "lm" else [h for s in metrics["stages"] for h in s["history"]]
    expected = reference["history"] if stage == "lm" else [h for s in reference["stages"] for h in s["history"]]
    assert len(history) == len(expected) == epochs
    for got, want in zip(history, expected):  # the same steps as without the interruption
        assert got["phase"] == want["phase"]
        assert got["valid_loss"] == pytest.approx(want["valid_loss"], rel=1e-4)
    a, b = _weights(killed / folder / "model.pth"), _weights(straight / folder / "model.pth")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, "abc", phase=0, epoch=1, history=[{"epoch": 1, "valid_loss": np.float64(2.0)}],
                    model={"w": torch.ones(2)}, opt={"hypers": [{"lr": np.float32(0.1)}]})
    assert load_checkpoint(path, "other") is None
    state = load_checkpoint(path, "abc")  # weights-only: plain data
    assert state["epoch"] == 1 and state["history"][0]["valid_loss"] == 2.0
    assert isinstance(state["opt"]["hypers"][0]["lr"], float)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DamagedFile, match=r"checkpoint\.pth: damaged checkpoint \(unreadable"):
        load_checkpoint(path, "abc")
    torch.save({"format": "ulmfit-checkpoint/1", "state": torch.zeros(3)}, path)  # readable, other format
    with pytest.raises(DamagedFile, match=r"damaged checkpoint \(not a ulmfit-checkpoint/2 file\)"):
        load_checkpoint(path, "abc")


@pytest.fixture(scope="module")
def bidirectional(tmp_path_factory, preprocessed) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("bidir") / "run")
    shutil.copytree(preprocessed, run.root)
    preset = get_preset("tiny")
    for backwards in (False, True):
        directed = run.direction(backwards)
        stages.lm_stage(directed, preset, seed=2)
        stages.export_stage(directed)
        stages.classifier_stage(directed, preset, seed=2)
        stages.evaluate_stage(directed)
    stages.ensemble_stage(run)
    return run


def test_backward_models_read_text_reversed(bidirectional):
    fwd, bwd = bidirectional.direction(False), bidirectional.direction(True)
    for folder in ("lm-bwd", "export-bwd", "classifier-bwd"):
        assert (bidirectional.root / folder).is_dir()
    assert read_json(bwd.lm / "metrics.json")["backwards"] is True
    assert read_json(bwd.export / "config.json")["backwards"] is True
    with pytest.raises(ValueError, match="backward language model"):
        LanguageModel.load(bwd.lm)
    # The backward classifier reverses ids itself: texts give what the evaluation recorded.
    docs = load_docs(bidirectional.shards(bidirectional.ids), splits=["test"], labelled=True)
    classifier = Classifier.load(bwd.classifier)
    assert classifier.backwards
    recorded = pq.read_table(bwd.classifier.predictions)
    assert recorded.column("id").to_pylist() == docs.doc_ids
    probs = classifier.predict_ids(docs.ids[:10])
    np.testing.assert_allclose(probs[:, 1], recorded.column("p_pos").to_numpy()[:10], atol=1e-5)
    forward = Classifier.load(fwd.classifier).predict_ids(docs.ids[:10])
    assert not np.allclose(forward, probs, atol=1e-3)  # two different models


def test_ensemble_averages_both_directions(bidirectional):
    result = read_json(bidirectional.ensemble)
    assert set(result) == {"forward", "backward", "ensemble"}
    fwd = pq.read_table(bidirectional.direction(False).classifier.predictions)
    bwd = pq.read_table(bidirectional.direction(True).classifier.predictions)
    p = (fwd.column("p_pos").to_numpy() + bwd.column("p_pos").to_numpy()) / 2
    truth = np.array([y == "pos" for y in fwd.column("label").to_pylist()])
    assert result["ensemble"]["accuracy"] == pytest.approx(float(((p > 0.5) == truth).mean()))
    assert result["ensemble"]["n"] == result["forward"]["n"] == 80
    for name in ("forward", "backward"):
        test = read_json(bidirectional.direction(name == "backward").classifier / "test.json")
        assert result[name]["accuracy"] == test["accuracy"]


def test_cpu_training_uses_bf16_when_the_preset_asks(bidirectional):
    for backwards in (False, True):
        run = bidirectional.direction(backwards)
        assert read_json(run.lm / "metrics.json")["precision"] == "bf16"
        assert read_json(run.classifier / "metrics.json")["precision"] == "bf16"


def test_training_metrics_and_report_say_where_each_stage_ran(bidirectional):
    """On the CPU: no GPU name or memory; tokens/s of every stage, shown per stage in the report."""
    for backwards in (False, True):
        run = bidirectional.direction(backwards)
        lm, clas = read_json(run.lm / "metrics.json"), read_json(run.classifier / "metrics.json")
        for m in (lm, clas):
            assert m["gpu"] is None and m["peak_gpu_memory_mb"] is None and m["device"] == "cpu"
            assert m["tokens_per_s"] > 0
        tiny = get_preset("tiny")
        docs = load_docs(bidirectional.shards(bidirectional.ids), splits=["train"], labelled=True)
        train, _ = docs.split(tiny.classifier.valid_pct, 2, "classifier-valid")
        epochs = sum(s.epochs for s in tiny.classifier.stages)
        # The classifier reads every training review once an epoch; padding does not count.
        assert clas["tokens_per_s"] * clas["seconds"] == pytest.approx(epochs * train.n_tokens)
        # The LM predicts every token of the stream cut to bs rows: all but fewer than bs + 1.
        lm_tokens = round(lm["tokens_per_s"] * lm["seconds"] / tiny.lm.epochs)
        assert lm_tokens % tiny.lm.bs == 0
        assert lm["train_tokens"] - tiny.lm.bs <= lm_tokens < lm["train_tokens"]
    write_report(bidirectional, {"preset": "tiny", "seed": 2})
    report = bidirectional.report.read_text()
    table = report[report.index("## Training"):report.index("## Test set")]
    for stage in ("language model", "classifier", "language model (backward)", "classifier (backward)"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:4] == ["cpu", "—", "bf16"] and cells[5] == "—", row
        assert float(cells[4].replace(",", "")) > 0, row


class BreakLoss(Callback):
    """Makes the recorded loss of one training batch NaN (the step itself stays finite) and
    counts the training batches that finished."""

    order = 60  # before ProgressLog reads the loss

    def __init__(self, epoch: int, batch: int) -> None:
        self.at, self.finished = (epoch, batch), 0

    def after_loss(self) -> None:
        if self.training and (self.epoch, self.iter) == self.at:
            self.learn.loss = torch.tensor(float("nan"))

    def after_batch(self) -> None:
        if self.training:
            self.finished += 1


@pytest.fixture(scope="module")
def tiny_lm(preprocessed):
    docs = load_docs(RunDir(preprocessed).shards(RunDir(preprocessed).ids))
    vocab_size = len(read_json(RunDir(preprocessed).vocab))
    train, valid = docs.split(0.1, 0, "lm-valid")
    # About 100 batches an epoch, whether the sample is real reviews or the short stand-ins.
    cfg = LMConfig(bs=8, seq_len=max(4, train.n_tokens // 800), epochs=2, lr=1e-3)

    def learner():
        dls = lm_dataloaders(train, valid, cfg, torch.device("cpu"), seed=0)
        model = build_language_model(vocab_size, ModelConfig(emb_sz=16, n_hid=32, n_layers=1), 0.1)
        return LMLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_lm_split)
    return learner


def test_a_schedule_moves_stage_by_stage_with_its_rates():
    """The resume point after each epoch, and the learning rates of each stage: discriminative
    ones spread over the layer groups (ULMFiT's lr / 2.6 per group) except when only the top
    group trains; the LM never spreads them."""
    classifier = (Stage("freeze", -1, 2, 2e-2), Stage("unfreeze", None, 1, 1e-3))
    schedule = Schedule(classifier, ResumePoint())
    points = []
    for _ in range(3):
        schedule.epoch_done()
        points.append(schedule.point)
    assert points == [ResumePoint(0, 1), ResumePoint(1, 0), ResumePoint(2, 0)]
    assert classifier[0].rates(discriminative=True) == 2e-2
    assert classifier[1].rates(discriminative=True) == slice(1e-3 / 2.6**4, 1e-3)
    assert classifier[1].rates(discriminative=False) == 1e-3
    lm = get_preset("tiny").lm
    assert [(s.freeze_to, s.epochs, s.lr) for s in lm.schedule(pretrained=False)] == [(None, 3, 1e-2)]
    assert [(s.freeze_to, s.epochs, s.lr) for s in lm.schedule(pretrained=True)] == [
        (-1, 1, 1e-2), (None, 3, 1e-3)]


@pytest.mark.parametrize("epoch,batch", [(1, 6), (0, -1)])
def test_non_finite_loss_names_its_epoch_and_batch(tiny_lm, tmp_path, epoch, batch):
    """The loss is read on the host only every few batches, yet the error names the exact batch,
    comes within those few batches, and an epoch with a non-finite loss is never checkpointed."""
    learn = tiny_lm()
    n_batches = len(learn.dls.train)
    batch = batch % n_batches  # -1: the epoch's last batch, after the last periodic check
    assert n_batches > LOSS_CHECK_EVERY + 6  # batch 7's break is not left to the epoch's end
    breaker = BreakLoss(epoch, batch)
    learn.add_cb(breaker)
    checkpoint = tmp_path / "checkpoint.pth"
    with pytest.raises(FloatingPointError) as error:
        fit_schedule(learn, [Stage("fit", None, 2, 1e-3)], "lm", Checkpoint(checkpoint, "fp"))
    assert f"non-finite loss (nan) at epoch {epoch + 1}, batch {batch + 1}:" in str(error.value)
    late = breaker.finished - epoch * n_batches - (batch + 1)  # batches run after the broken one
    assert 0 <= late < LOSS_CHECK_EVERY  # found at the next check (or the epoch's end)
    history = load_checkpoint(checkpoint, "fp")["history"] if checkpoint.exists() else []
    assert len(history) == epoch  # the epochs before the broken one, not the broken one


@pytest.mark.parametrize("stage", ["lm", "classifier"])
def test_out_of_gpu_memory_names_the_batch_size_and_keeps_the_checkpoint(
        tmp_path, with_encoder, monkeypatch, stage):
    run = RunDir(tmp_path / "run")
    shutil.copytree(with_encoder, run.root)
    shutil.rmtree(run.root / stage, ignore_errors=True)  # this stage has not run yet
    tiny = get_preset("tiny")
    preset = replace(tiny, lm=replace(tiny.lm, epochs=2), classifier=replace(
        tiny.classifier, stages=(Stage("freeze", -1, 1, 2e-2), Stage("unfreeze", None, 1, 2e-3))))
    checkpoint = (run.lm if stage == "lm" else run.classifier) / CHECKPOINT
    forward = AWD_LSTM.forward

    def forward_until_an_epoch_is_saved(self, *args, **kwargs):
        if self.training and checkpoint.exists():  # the second epoch runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(AWD_LSTM, "forward", forward_until_an_epoch_is_saved)
    train = stages.lm_stage if stage == "lm" else stages.classifier_stage
    with pytest.raises(DataError) as error:
        train(run, preset, seed=5)
    message = str(error.value)
    bs = preset.lm.bs if stage == "lm" else preset.classifier.bs
    assert "\n" not in message and isinstance(error.value.__cause__, torch.OutOfMemoryError)
    assert message.startswith(f"{stage}: out of memory on cpu with preset 'tiny' at batch size {bs}: "
                              f"lower {stage}.bs of preset 'tiny'")
    assert (f"the checkpoint of the last finished epoch (1 epoch(s) done) was kept at {checkpoint}"
            in message)
    assert epochs_in(checkpoint) == 1
    assert not (checkpoint.parent / "model.pth").exists()
    assert not torch.is_autocast_enabled("cpu")  # the failed batch's bf16 autocast was left

    monkeypatch.setattr(AWD_LSTM, "forward", forward)  # memory to spare: the rerun resumes
    metrics = train(run, preset, seed=5)
    assert metrics["resumed"]["epochs_done"] == 1


def test_a_last_batch_of_one_review_is_left_for_the_next_epoch(tmp_path, with_encoder):
    """The head's BatchNorm cannot train on one row: with one review more than a multiple of
    the batch size, the classifier drops that last batch instead of failing."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(with_encoder, run.root)
    docs = stages.training_docs(run, splits=["train"], labelled=True)
    tiny = get_preset("tiny")
    _, train, _ = classifier_split(docs, tiny.classifier.valid_pct, 5)
    bs = (len(train) - 1) // 2  # two full batches and one of a single review
    assert len(train) % bs == 1 and bs > 1
    preset = replace(tiny, classifier=replace(tiny.classifier, bs=bs, stages=(Stage("freeze", -1, 1, 2e-2),)))
    metrics = stages.classifier_stage(run, preset, seed=5)
    assert metrics["train_docs"] == len(train) and len(metrics["stages"][0]["history"]) == 1
    assert metrics["left_out_per_epoch"] == 1


def test_sample_tokens_keeps_whole_documents_up_to_the_budget(preprocessed):
    """The cpu preset's LM trains on such a sample: seeded, whole documents, about the budget."""
    docs = load_docs(RunDir(preprocessed).shards(RunDir(preprocessed).ids))
    budget = docs.n_tokens // 3
    sample = sample_tokens(docs, budget, seed=0)
    assert sample.doc_ids == sample_tokens(docs, budget, seed=0).doc_ids
    assert sample.doc_ids != sample_tokens(docs, budget, seed=1).doc_ids
    assert budget <= sample.n_tokens < budget + max(len(d) for d in docs.ids)  # stops once reached
    whole = dict(zip(docs.doc_ids, docs.ids))
    assert all(np.array_equal(ids, whole[i]) for i, ids in zip(sample.doc_ids, sample.ids))
    order = {i: n for n, i in enumerate(docs.doc_ids)}
    assert [order[i] for i in sample.doc_ids] == sorted(order[i] for i in sample.doc_ids)  # corpus order
    assert sample_tokens(docs, None, 0) is docs and sample_tokens(docs, docs.n_tokens, 0) is docs
