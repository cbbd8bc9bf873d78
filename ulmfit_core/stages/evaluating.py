"""The evaluation stages as functions of a run directory: the classifier on the labelled test
split (accuracy, per-class scores, the reviews it got most wrong, per-review probabilities), the
forward + backward ensemble, and the NB-LR baseline on the same reviews; `tasks/train.py` wraps
them. Each is reused while what it read is unchanged (`manifests.made_once`).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..run.layout import RunDir, atomic_path, read_json, write_json
from ..run.manifests import file_inputs, made_once
from ..text.data import load_docs, load_raw_labelled


def evaluate_stage(run: RunDir, progress=None) -> dict:
    """Accuracy on the labelled test split; per-review probabilities go to a Parquet file."""
    from ..model.predict import Classifier, evaluate

    t0 = time.time()
    model_path = run.require(run.classifier.model, "train-classifier")
    inputs = file_inputs(run, [model_path, *run.shards(run.ids)])

    def score():
        docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
        classifier = Classifier.load(run.classifier)  # reverses the ids itself if it reads backwards
        unknown = sorted(set(docs.labels) - set(classifier.labels))
        if unknown:
            raise ValueError(f"test split has labels {unknown} that the classifier never saw")
        outputs = [run.classifier.test_scores]
        if len(docs):
            probs = classifier.predict_ids(docs.ids, progress=progress)
            result = evaluate(probs, classifier.labels, docs.labels)
            result["top_losses"] = _top_losses(run, docs, probs, classifier.labels)
            outputs.append(write_predictions(run.classifier.predictions, docs, probs, classifier.labels))
        else:
            result = {"n": 0, "accuracy": None, "macro_f1": None, "labels": classifier.labels,
                      "per_class": [], "confusion": None}
        result["label_counts"] = dict(Counter(docs.labels))
        result["backwards"] = run.backwards
        result["seconds"] = time.time() - t0
        write_json(run.classifier.test_scores, result)
        return result, outputs

    return made_once(run.classifier.test_scores, inputs, {}, score)


def write_predictions(path: Path, docs, probs, labels: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": docs.doc_ids, "label": docs.labels,
                      **{f"p_{y}": probs[:, i] for i, y in enumerate(labels)}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def ensemble_stage(run: RunDir) -> dict:
    """The forward and backward classifiers' averaged probabilities on the test split."""
    import numpy as np
    import pyarrow.parquet as pq

    from ..model.predict import evaluate

    fwd, bwd = (pq.read_table(run.direction(b).require(run.direction(b).classifier.predictions,
                                                       "evaluate")) for b in (False, True))
    if fwd.column("id").to_pylist() != bwd.column("id").to_pylist():
        raise ValueError("forward and backward test predictions cover different reviews")
    columns = [c for c in fwd.column_names if c.startswith("p_")]
    labels = [c[2:] for c in columns]
    probs = {name: np.stack([t.column(c).to_numpy() for c in columns], axis=1)
             for name, t in (("forward", fwd), ("backward", bwd))}
    probs["ensemble"] = (probs["forward"] + probs["backward"]) / 2
    truth = fwd.column("label").to_pylist()
    result = {name: evaluate(p, labels, truth) for name, p in probs.items()}
    write_json(run.ensemble, result)
    return result


def _top_losses(run: RunDir, docs, probs, labels: list[str], k: int = 5) -> list[dict]:
    """The k test reviews the classifier got most confidently wrong (or least right)."""
    truth = [labels.index(y) for y in docs.labels]
    p_true = probs[range(len(truth)), truth]
    worst = [int(i) for i in p_true.argsort()[:k]]
    ids, texts, _ = load_raw_labelled(run.shards(run.raw), "test")
    text_of = dict(zip(ids, texts))
    return [{"id": docs.doc_ids[i], "label": docs.labels[i], "predicted": labels[int(probs[i].argmax())],
             "p_label": float(p_true[i]), "text": text_of.get(docs.doc_ids[i], "")[:400]}
            for i in worst]


def baseline_stage(run: RunDir) -> dict:
    """The classical NB-LR baseline on the same train and test reviews as the classifier (its
    sample, when it was trained on one); reused while those are unchanged."""
    from ..model.baseline import nb_logistic_regression

    raw = run.shards(run.raw)
    sample = run.classifier.label_sample
    inputs = file_inputs(run, [*raw, *([sample] if sample.exists() else [])])

    def fit():
        train_ids, train_texts, train_labels = load_raw_labelled(raw, "train")
        if sample.exists():
            chosen = read_json(sample)
            keep = set(chosen["train"]) | set(chosen["valid"])
            picked = [i for i, doc_id in enumerate(train_ids) if doc_id in keep]
            train_texts, train_labels = [train_texts[i] for i in picked], [train_labels[i] for i in picked]
        _, test_texts, test_labels = load_raw_labelled(raw, "test")
        result = nb_logistic_regression(train_texts, train_labels, test_texts, test_labels)
        write_json(run.classifier.baseline, result)
        return result, [run.classifier.baseline]

    return made_once(run.classifier.baseline, inputs, {}, fit)
