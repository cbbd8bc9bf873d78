"""Few labels: the classifier on a seeded, class-balanced sample of N labelled reviews while the
LM learns from all the text, and the label curve against NB-LR on the same reviews."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from ulmfit_core import stages
from ulmfit_core.config import ClassifierConfig, get_preset
from ulmfit_core.errors import DataError
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.text.data import Docs, classifier_split
from ulmfit_core.training import FEW_LABEL_STEPS, few_label_settings


def _pool(pos: int, neg: int) -> Docs:
    labels = ["pos"] * pos + ["neg"] * neg
    ids = [f"train/{y}/{i}" for i, y in enumerate(labels)]
    return Docs(ids, [np.arange(5 + i % 7) for i in range(len(ids))], labels)


def _sample(docs: Docs, n: int, seed: int = 0):
    labels, train, valid = classifier_split(docs, 0.1, seed, train_labels=n)
    return labels, train, valid


def test_the_sample_is_balanced_seeded_and_nested():
    docs = _pool(300, 200)
    labels, train, valid = _sample(docs, 100)
    assert labels == ["neg", "pos"]
    for label in labels:  # 50 each: 5 validate (10%), 45 train
        assert train.labels.count(label) == 45 and valid.labels.count(label) == 5
    assert not set(train.doc_ids) & set(valid.doc_ids)
    again = _sample(docs, 100)
    assert again[1].doc_ids == train.doc_ids and again[2].doc_ids == valid.doc_ids
    other = _sample(docs, 100, seed=1)
    assert set(other[1].doc_ids) != set(train.doc_ids)
    smaller = _sample(docs, 40)  # the same seed's smaller sample lies inside the larger one
    assert set(smaller[1].doc_ids + smaller[2].doc_ids) <= set(train.doc_ids + valid.doc_ids)
    odd = _sample(docs, 5)  # 3 neg (sorted first), 2 pos; one of each validates
    assert sorted(odd[1].labels + odd[2].labels) == ["neg", "neg", "neg", "pos", "pos"]
    assert sorted(odd[2].labels) == ["neg", "pos"]


@pytest.mark.parametrize("n, message", [
    (3, "--train-labels 3: 2 labels need at least 4 reviews, one to train on and one to validate per label"),
    (600, "--train-labels 600: the corpus has 500 labelled train reviews"),
    (480, "--train-labels 480: a balanced sample takes 240 reviews labelled 'neg', and the corpus "
          "has 200; give at most 400"),
])
def test_a_sample_the_pool_cannot_give_is_refused(n, message):
    with pytest.raises(DataError) as error:
        _sample(_pool(300, 200), n)
    assert str(error.value) == message


def test_few_labels_get_small_batches_and_enough_steps():
    cfg = get_preset("cpu").classifier
    few = few_label_settings(cfg, 90)  # 100 labels: 90 train
    assert few.bs == 22 and 90 // few.bs == 4
    assert [s.epochs for s in few.stages] == [FEW_LABEL_STEPS // 4] * 4
    assert [s.lr for s in few.stages] == [s.lr for s in cfg.stages]
    assert few_label_settings(cfg, 22_485) == cfg  # the whole split keeps the preset
    tiny = few_label_settings(ClassifierConfig(bs=64), 3)
    assert tiny.bs == 2 and all(s.epochs == FEW_LABEL_STEPS for s in tiny.stages)


@pytest.mark.slow
def test_a_tiny_label_curve_end_to_end(tmp_path, preprocessed):
    run = RunDir(tmp_path / "run")
    shutil.copytree(preprocessed, run.root)
    preset = get_preset("tiny")
    stages.lm_stage(run, preset, 0)
    stages.export_stage(run)
    command = [sys.executable, "-m", "flows.cli", "label-curve", "--out", str(run.root),
               "--labels", "all", "20", "--preset", "tiny"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    curve = read_json(run.root / "label-curve.json")
    pool = len(stages.training_docs(run, splits=["train"], labelled=True))
    assert [(p["labels"], p["all"]) for p in curve["points"]] == [(20, False), (pool, True)]
    for point in curve["points"]:
        assert 0 <= point["ulmfit"] <= 1 and 0 <= point["nblr"] <= 1
        assert point["test_reviews"] == read_json(run.classifier / "test.json")["n"]
    few = run.with_classifier("label-curve/n20")
    sample = read_json(few.classifier / "train-labels.json")
    chosen = sample["train"] + sample["valid"]
    assert len(chosen) == 20 and sample["n"] == 20 and len(sample["valid"]) == 2
    labels = {doc_id.split("/")[1] for doc_id in chosen}  # ids are split/label/name
    assert labels == {"pos", "neg"} and sum("/pos/" in d for d in chosen) == 10
    assert read_json(few.classifier / "baseline.json")["train_n"] == 20  # NB-LR on the same 20
    assert read_json(run.classifier / "baseline.json")["train_n"] == pool
    metrics = read_json(few.classifier / "metrics.json")
    assert metrics["train_labels"] == 20 and metrics["bs"] == 4
    assert all(s["epochs"] == FEW_LABEL_STEPS // 4 for s in metrics["stages"])
    report = (run.root / "report.md").read_text()
    assert "## What labels buy" in report and "![label curve](label-curve.png)" in report
    assert (run.root / "label-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "20 labelled reviews: ULMFiT" in result.stderr + result.stdout

    made = (few.classifier / "model.pth").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (few.classifier / "model.pth").stat().st_mtime_ns == made  # each point is reused

    too_many = subprocess.run([*command[:7], "5000", "--preset", "tiny"], capture_output=True,
                              text=True, timeout=900)
    assert too_many.returncode == 2
    assert too_many.stderr.strip().splitlines()[-1] == (
        f"ulmfit: error: --train-labels 5000: the corpus has {pool} labelled train reviews")


def test_train_labels_below_two_is_refused_before_anything_starts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "train-classifier", "--out",
                             str(tmp_path / "run"), "--train-labels", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "ulmfit: error: --train-labels must be an integer >= 2, got 1")
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "label-curve", "--out",
                          str(tmp_path / "run"), "--labels", "100", "most"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "ulmfit: error: --labels: 'most' is not a number of labelled reviews (>= 2) or 'all'")
    assert not (tmp_path / "run").exists()
