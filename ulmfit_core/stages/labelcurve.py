"""What labels buy: one classifier per number of labelled reviews on the run's language model
and encoder, each scored on the whole test split beside NB-LR trained on the same reviews
(ULMFiT's claim: with few labels, a fine-tuned LM beats a model that only sees the labels).

Each point lives in label-curve/n<N>/ (model, train-labels.json, test.json, baseline.json) and
is reused like any classifier; "all" is the run's own classifier/. The curve is written as
label-curve.json and label-curve.png.
"""

from __future__ import annotations

from ..config import Preset
from ..errors import DataError
from ..reporting.plots import plot_label_curve
from ..run.layout import RunDir, write_json
from .evaluating import baseline_stage, evaluate_stage
from .modelling import classifier_stage


def curve_point(run: RunDir, preset: Preset, seed: int, n: int | None, progress=None) -> dict:
    """Train (or reuse) the classifier on `n` labelled reviews, score it on the test split, and
    NB-LR on the same reviews."""
    at = run.label_curve_point(n)
    clas = classifier_stage(at, preset, seed, progress, train_labels=n)
    test = evaluate_stage(at)
    if test["accuracy"] is None:
        raise DataError(f"{run.root}: no labelled test split to score the label curve on")
    base = baseline_stage(at)
    return {"labels": clas["train_docs"] + clas["valid_docs"], "all": n is None,
            "train_docs": clas["train_docs"], "valid_docs": clas["valid_docs"],
            "folder": run.rel(at.classifier), "ulmfit": test["accuracy"], "nblr": base["accuracy"],
            "ulmfit_macro_f1": test["macro_f1"], "nblr_macro_f1": base["macro_f1"],
            "test_reviews": test["n"], "seconds": clas.get("seconds")}


def write_curve(run: RunDir, points: list[dict]) -> dict:
    """label-curve.json and its plot (test accuracy against labelled reviews, log x axis)."""
    curve = {"points": sorted(points, key=lambda p: p["labels"]), "plot": run.rel(run.label_curve_plot)}
    plot_label_curve(curve["points"], run.label_curve_plot)
    write_json(run.label_curve, curve)
    return curve
