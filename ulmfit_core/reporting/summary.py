"""metrics.json: the stage summaries a run's folders hold, merged into one document, and its
headline figures (the Prefect UI's table).
"""

from __future__ import annotations

from pathlib import Path

from ..run.layout import RunDir, read_json


def _read(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def _direction(run: RunDir) -> dict | None:
    """LM, classifier and test summaries of one direction, or None if it was not trained."""
    lm = _read(run.lm.metrics)
    if lm is None:
        return None
    clas = _read(run.classifier.metrics) or {}
    test = _read(run.classifier.test_scores) or {}
    return {
        "lm": {k: lm.get(k) for k in ("valid_loss", "accuracy", "perplexity", "train_loss", "epochs",
                                      "train_tokens", "tokens_per_s", "history", "device", "gpu",
                                      "peak_gpu_memory_mb", "precision", "resumed", "pretrained",
                                      "seconds")},
        "classifier": {"stages": [{k: s[k] for k in ("name", "epochs", "lr", "valid_loss", "accuracy",
                                                     "seconds", "history")} for s in clas.get("stages", [])],
                       **{k: clas.get(k) for k in ("labels", "train_labels", "train_docs", "valid_docs",
                                                   "device", "gpu", "peak_gpu_memory_mb",
                                                   "precision", "tokens_per_s", "resumed", "seconds")}},
        "test": {k: test.get(k) for k in ("accuracy", "macro_f1", "n", "labels", "per_class",
                                          "confusion", "top_losses", "seconds")},
    }


def collect_metrics(run: RunDir, params: dict) -> dict:
    """Merge the stage summaries under `run` into one metrics document.

    The top-level lm/classifier/test are the forward model's (the backward one's when only that
    was trained); `backward` and `ensemble` appear for a bidirectional run.
    """
    pre = _read(run.preprocess_metrics) or {}
    fwd, bwd = _direction(run.direction(False)), _direction(run.direction(True))
    main = fwd or bwd or {"lm": {}, "classifier": {"stages": []}, "test": {}}
    baseline = _read(run.direction(main is bwd).classifier.baseline)
    ensemble = _read(run.ensemble) if fwd and bwd else None
    seconds = {"preprocess": pre.get("seconds")}
    for name, d in (("forward", fwd), ("backward", bwd)):
        if d:
            seconds.update({f"lm {name}": d["lm"]["seconds"], f"classifier {name}": d["classifier"]["seconds"],
                            f"evaluate {name}": d["test"]["seconds"]})
    return {
        "run": params,
        "device": main["lm"].get("device") or main["classifier"].get("device"),
        "precision": main["lm"].get("precision"),
        "direction": "bidirectional" if ensemble else ("backward" if main is bwd else "forward"),
        "preprocess": {k: pre.get(k) for k in ("docs", "tokens", "skipped", "skipped_by_reason",
                                               "groups", "shards", "unknown_tokens", "source",
                                               "columns", "test_split")},
        "vocab": {"size": pre.get("vocab_size"), "distinct_tokens": pre.get("distinct_tokens")},
        **main,
        "backward": bwd if fwd and bwd else None,
        "ensemble": ensemble,
        "baseline": baseline,
        "label_curve": _read(run.label_curve),
        "seconds": {**seconds, "total": sum(v for v in seconds.values() if v)},
    }


def headline_figures(metrics: dict) -> list[dict]:
    """The run's headline figures as rows {figure, value}: what a glance at a run should show
    (the Prefect UI's table artifact)."""
    test, lm, base = metrics["test"], metrics["lm"], metrics.get("baseline") or {}
    rows = [("test accuracy", test.get("accuracy")), ("test macro-F1", test.get("macro_f1")),
            *[(f"test F1: {c['label']}", c["f1"]) for c in test.get("per_class") or []],
            ("test reviews", test.get("n")),
            ("NB-LR baseline accuracy", base.get("accuracy")),
            ("NB-LR baseline macro-F1", base.get("macro_f1")),
            ("LM valid loss", lm.get("valid_loss")), ("LM accuracy", lm.get("accuracy")),
            ("LM perplexity", lm.get("perplexity")), ("vocab size", metrics["vocab"]["size"]),
            ("documents", metrics["preprocess"].get("docs")),
            ("tokens", metrics["preprocess"].get("tokens")),
            ("skipped documents", metrics["preprocess"].get("skipped"))]
    if metrics.get("ensemble"):
        ensemble = metrics["ensemble"]["ensemble"]
        rows[:0] = [("ensemble test accuracy", ensemble["accuracy"]),
                    ("ensemble test macro-F1", ensemble.get("macro_f1"))]
    rows += [(f"seconds: {k}", v) for k, v in metrics["seconds"].items()]
    return [{"figure": k, "value": v} for k, v in rows if v is not None]
