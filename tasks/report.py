"""The run summary: metrics.json and report.md, also published as a Prefect markdown artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ulmfit_core.report import write_report
from ulmfit_core.rundir import RunDir


@task(name="report")
def report(out: str, params: dict, seed: int) -> dict:
    run = RunDir(out)
    metrics = write_report(run, params, seed)
    create_markdown_artifact(run.report.read_text(encoding="utf-8"), key="ulmfit-report",
                             description=f"ULMFiT run report for {out}")
    return metrics
