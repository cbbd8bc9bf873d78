"""The classical baseline beside ULMFiT: NB-weighted logistic regression on binary uni+bigrams.

Wang & Manning's NBSVM idea with a logistic loss: each binary n-gram feature is scaled by its
naive-Bayes log-count ratio between the two classes, then a linear classifier is fitted.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np


def nb_logistic_regression(train_texts: Sequence[str], train_labels: Sequence[str],
                           test_texts: Sequence[str], test_labels: Sequence[str]) -> dict:
    """Fit on train, score on test; labels must be two classes."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.time()
    classes = sorted(set(train_labels))
    if len(classes) != 2:
        raise ValueError(f"NB-LR baseline needs two labels, found {classes}")
    vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True, token_pattern=r"(?u)\b\w+\b|[!?]")
    x_train = vectorizer.fit_transform(train_texts)
    y = np.array([classes.index(label) for label in train_labels])
    p = np.asarray(x_train[y == 1].sum(0)).ravel() + 1  # smoothed feature counts per class
    q = np.asarray(x_train[y == 0].sum(0)).ravel() + 1
    ratio = np.log((p / p.sum()) / (q / q.sum()))
    model = LogisticRegression(C=0.1, max_iter=1000)
    model.fit(x_train.multiply(ratio).tocsr(), y)
    pred = model.predict(vectorizer.transform(test_texts).multiply(ratio).tocsr())
    truth = np.array([classes.index(label) for label in test_labels])
    return {"model": "NB-weighted logistic regression, binary uni+bigrams",
            "accuracy": float((pred == truth).mean()) if len(truth) else None,
            "n": int(len(truth)), "train_n": int(len(train_texts)), "seconds": time.time() - t0}
