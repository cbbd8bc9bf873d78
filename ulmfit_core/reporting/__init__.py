"""The run's summary: `metrics.json` for machines, `report.md` for people, the training curves
and lineage.json. Written last, from what the stages wrote and nothing else.

    summary     metrics.json from the stage summaries, and the headline figures
    markdown    report.md, a function per section
    plots       the training curves, and the label curve
    show        what the models see and say: a run's first batch decoded, the previews
"""

from __future__ import annotations

from ..run.layout import RunDir, read_json, write_json, write_text
from ..run.lineage import write_lineage
from .markdown import render_report
from .plots import plot_curves
from .summary import collect_metrics, headline_figures

__all__ = ["collect_metrics", "headline_figures", "plot_curves", "render_report", "write_report"]


def _previews(run: RunDir) -> dict[str, dict]:
    """What the forward direction's stages left for the report, for each model trained: the
    preview of its training, and the language model's samples ({} for a model not trained)."""
    forward, previews = run.direction(False), {}
    for kind, folder in (("lm", forward.lm), ("classifier", forward.classifier)):
        if folder.model.exists():
            previews[kind] = read_json(folder.preview) if folder.preview.exists() else {}
    if "lm" in previews and run.samples.exists():
        previews["lm"]["samples"] = read_json(run.samples)
    return previews


def write_report(run: RunDir, params: dict) -> dict:
    """metrics.json, curves.png, report.md and lineage.json of the run as it stands."""
    metrics = collect_metrics(run, params)
    previews = _previews(run)
    metrics["samples"] = previews.get("lm", {}).get("samples", {}).get("samples", [])
    if metrics["lm"].get("history"):
        plot_curves(metrics, run.curves)
    write_json(run.metrics, metrics)
    write_text(run.report, render_report(metrics, previews))
    write_lineage(run, params.get("out"))
    return metrics
