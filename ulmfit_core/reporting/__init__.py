"""The run's summary: `metrics.json` for machines, `report.md` for people, the training curves
and lineage.json. Written last, from what the stages wrote and nothing else.

    summary     metrics.json from the stage summaries, and the headline figures
    markdown    report.md, a function per section
    plots       the training curves
"""

from __future__ import annotations

from ..lineage import write_lineage
from ..rundir import RunDir, read_json, write_json, write_text
from .markdown import render_report
from .plots import plot_curves
from .summary import collect_metrics, headline_figures

__all__ = ["collect_metrics", "headline_figures", "plot_curves", "render_report", "write_report"]


def _previews(run: RunDir) -> dict[str, dict]:
    """The previews the forward direction's trainings left ({} for a model not trained)."""
    forward = run.direction(False)
    return {kind: read_json(folder.preview) for kind, folder in (("lm", forward.lm),
                                                                  ("classifier", forward.classifier))
            if folder.model.exists() and folder.preview.exists()}


def write_report(run: RunDir, params: dict) -> dict:
    """metrics.json, curves.png, report.md and lineage.json of the run as it stands."""
    metrics = collect_metrics(run, params)
    previews = _previews(run)
    metrics["samples"] = previews.get("lm", {}).get("samples", [])
    if metrics["lm"].get("history"):
        plot_curves(metrics, run.curves)
    write_json(run.metrics, metrics)
    write_text(run.report, render_report(metrics, previews))
    write_lineage(run, params.get("out"))
    return metrics
