"""The run summary: metrics.json, report.md and lineage.json, also published to the Prefect UI
(the report as a markdown artifact, the headline figures as a table artifact)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ulmfit_core.report import headline_figures, write_report
from ulmfit_core.rundir import RunDir

from .common import materializing, task


@task(name="report")
def report_task(out: str, params: dict, seed: int) -> dict:
    run = RunDir(out)
    metrics = write_report(run, params, seed)
    create_markdown_artifact(run.report.read_text(encoding="utf-8"), key="ulmfit-report",
                             description=f"ULMFiT run report for {out}")
    create_table_artifact(headline_figures(metrics), key="ulmfit-metrics",
                          description=f"Headline figures of the run in {out}")
    return metrics


def report(out: str, params: dict, seed: int) -> dict:
    """Run the report task as the materializer of the summary files, downstream of the models
    and evaluations this run holds."""
    run = RunDir(out)
    directions = [run.direction(b) for b in (False, True)]
    reads = [run.rel(p) for p in (run.preprocess_metrics, *(d.test_scores for d in directions),
                                  *(d.lm_model for d in directions)) if p.exists()]
    writes = [run.rel(p) for p in (run.metrics, run.report, run.lineage)]
    return materializing(report_task, out, writes, reads)(out, params, seed)
