"""Training beyond one straight run: resume after a killed process, both directions, bf16 on CPU."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ulmfit_core import stages
from ulmfit_core.checkpoint import load_checkpoint, save_checkpoint
from ulmfit_core.config import get_preset
from ulmfit_core.data import load_docs
from ulmfit_core.predict import Classifier, LanguageModel
from ulmfit_core.rundir import RunDir, read_json

# A stage of the tiny preset with more epochs, run in a process of its own so it can be killed.
STAGE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from dataclasses import replace
from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.rundir import RunDir

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
    from dataclasses import replace

    stages.lm_stage(run, replace(tiny, lm=replace(tiny.lm, epochs=1)), seed=5)
    stages.export_stage(run)
    return run.root


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
    done_before_kill = len(torch.load(checkpoint, weights_only=True)["history"])
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
    with pytest.raises(Exception):
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
    recorded = pq.read_table(bwd.classifier / stages.PREDICTIONS)
    assert recorded.column("id").to_pylist() == docs.doc_ids
    probs = classifier.predict_ids(docs.ids[:10])
    np.testing.assert_allclose(probs[:, 1], recorded.column("p_pos").to_numpy()[:10], atol=1e-5)
    forward = Classifier.load(fwd.classifier).predict_ids(docs.ids[:10])
    assert not np.allclose(forward, probs, atol=1e-3)  # two different models


def test_ensemble_averages_both_directions(bidirectional):
    result = read_json(bidirectional.ensemble)
    assert set(result) == {"forward", "backward", "ensemble"}
    fwd = pq.read_table(bidirectional.direction(False).classifier / stages.PREDICTIONS)
    bwd = pq.read_table(bidirectional.direction(True).classifier / stages.PREDICTIONS)
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
