"""The classical baseline beside ULMFiT: NB-weighted logistic regression on binary uni+bigrams.

Wang & Manning's NBSVM idea with a logistic loss: each binary n-gram feature is scaled by its
naive-Bayes log-count ratio between a class and the rest, then a linear classifier is fitted.
Two classes make one such model; k > 2 make one per class (one-vs-rest, each on features scaled
by its own class's ratios), and the class whose model scores highest is predicted.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .metrics import classification_scores


def _log_count_ratio(x, is_class: np.ndarray) -> np.ndarray:
    """log((p / |p|) / (q / |q|)) of smoothed feature counts in the class (p) and outside it (q)."""
    p = np.asarray(x[is_class].sum(0)).ravel() + 1
    q = np.asarray(x[~is_class].sum(0)).ravel() + 1
    return np.log((p / p.sum()) / (q / q.sum()))


def nb_logistic_regression(train_texts: Sequence[str], train_labels: Sequence[str],
                           test_texts: Sequence[str], test_labels: Sequence[str]) -> dict:
    """Fit on train, score on test (labels of test must be among those of train)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.time()
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise ValueError(f"NB-LR baseline needs at least two labels, found {classes}")
    vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True, token_pattern=r"(?u)\b\w+\b|[!?]")
    x_train = vectorizer.fit_transform(train_texts)
    x_test = vectorizer.transform(test_texts)
    y = np.array([classes.index(label) for label in train_labels])
    positives = [1] if len(classes) == 2 else range(len(classes))
    scores = []
    for c in positives:  # two classes: one model, the second class against the first
        ratio = _log_count_ratio(x_train, y == c)
        model = LogisticRegression(C=0.1, max_iter=1000)
        model.fit(x_train.multiply(ratio).tocsr(), y == c)
        scores.append(model.decision_function(x_test.multiply(ratio).tocsr()))
    pred = (scores[0] > 0).astype(int) if len(classes) == 2 else np.argmax(np.stack(scores, 1), 1)
    truth = [classes.index(label) for label in test_labels]
    kind = "" if len(classes) == 2 else f", one-vs-rest over {len(classes)} classes"
    return {"model": f"NB-weighted logistic regression, binary uni+bigrams{kind}",
            **classification_scores(pred, truth, classes),
            "train_n": int(len(train_texts)), "seconds": time.time() - t0}
