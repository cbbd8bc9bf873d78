"""Scores of a classification against the truth, for any number of classes: accuracy, the
confusion matrix, precision, recall and F1 per class, and macro-F1 (the mean of the per-class
F1s, which a skewed test split cannot hide behind the way accuracy can).

NumPy only: the NB-LR baseline and the classifier's evaluation score the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else 0.0


def classification_scores(pred: Sequence[int], truth: Sequence[int], labels: Sequence[str]) -> dict:
    """Scores of predicted class indices `pred` against true ones `truth`, over `labels`.

    Rows of the confusion matrix are the true label, columns the predicted one. A class never
    predicted has precision 0, one absent from the truth recall 0 (scikit-learn's
    `zero_division=0`). Macro-F1 averages the classes in the truth or the predictions, as
    scikit-learn's `f1_score(average="macro")` does: a class the test split lacks counts only
    where the model predicted it.
    """
    k = len(labels)
    pred, truth = np.asarray(pred, dtype=int), np.asarray(truth, dtype=int)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    per_class = []
    for i, label in enumerate(labels):
        hit, predicted, actual = int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum())
        precision, recall = _ratio(hit, predicted), _ratio(hit, actual)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append({"label": label, "precision": precision, "recall": recall, "f1": f1,
                          "support": actual, "predicted": predicted})
    n = int(len(truth))
    seen = [c["f1"] for c in per_class if c["support"] or c["predicted"]]
    return {"n": n, "accuracy": float((pred == truth).mean()) if n else None,
            "macro_f1": float(np.mean(seen)) if n else None,
            "labels": list(labels), "per_class": per_class if n else [],
            "confusion": confusion.tolist()}
