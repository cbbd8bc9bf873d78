"""The run summary: metrics.json, report.md and lineage.json, also published to the Prefect UI
(the report as a markdown artifact, the headline figures as a table artifact)."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ulmfit_core.reporting import headline_figures, write_report
from ulmfit_core.run.layout import RunDir

from .common import task


def _summarized(run: RunDir) -> list[Path]:
    """What the summary is made from: the preprocessing summary, each direction's LM and test
    scores, where this run has them."""
    directions = [run.direction(b) for b in (False, True)]
    return [p for p in (run.preprocess_metrics, *(d.classifier.test_scores for d in directions),
                        *(d.lm.model for d in directions)) if p.exists()]


@task(name="report", writes=lambda run: [run.metrics, run.report, run.lineage], reads=_summarized,
      pulls=lambda run, a: [""])
def report(out: str, params: dict) -> dict:
    run = RunDir(out)
    metrics = write_report(run, params)
    create_markdown_artifact(run.report.read_text(encoding="utf-8"), key="ulmfit-report",
                             description=f"ULMFiT run report for {out}")
    create_table_artifact(headline_figures(metrics), key="ulmfit-metrics",
                          description=f"Headline figures of the run in {out}")
    return metrics
