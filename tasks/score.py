"""Scoring tasks: one input file of a dataset scored by a trained classifier, and the summary."""

from __future__ import annotations

from ulmfit_core.run.manifests import manifest_path
from ulmfit_core.stages import scoring

from .common import task
from .preprocess import IO_RETRIES


@task(name="score-file", task_run_name="score {name}", pulls=lambda run, a: [a["name"], manifest_path(a["name"])],
      **IO_RETRIES)
def score_file(out: str, source: str, name: str, model: dict, text_column: str, id_column: str,
               bs: int) -> dict:
    return scoring.score_file_stage(out, source, name, model, text_column, id_column, bs)


@task(name="summarize-scores", pulls=lambda run, a: [scoring.SUMMARY])
def summarize(out: str, data: str, model: dict, results: list[dict], seconds: float) -> dict:
    return scoring.summarize_scores(out, data, model, results, seconds)
