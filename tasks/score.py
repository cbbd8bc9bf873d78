"""Scoring tasks: one input file of a dataset (or one part of a large one) scored by a trained
classifier, a large file's parts joined, and the summary."""

from __future__ import annotations

from ulmfit_core.run.manifests import manifest_path
from ulmfit_core.stages import scoring

from .common import task
from .preprocess import IO_RETRIES


def _written(name: str) -> list:
    return [name, manifest_path(name)]


@task(name="score-file", task_run_name="score {part.target}",
      pulls=lambda run, a: [*_written(a["part"].name), *_written(a["part"].target)], **IO_RETRIES)
def score_file(out: str, part: scoring.ScorePart, model: dict, text_column: str, id_column: str,
               bs: int) -> dict:
    return scoring.score_file_stage(out, part, model, text_column, id_column, bs)


@task(name="join-parts", task_run_name="join {parts[0].name}",
      pulls=lambda run, a: [*_written(a["parts"][0].name), a["parts"][0].name + scoring.PARTS], **IO_RETRIES)
def join_parts(out: str, parts: list[scoring.ScorePart], model: dict, results: list[dict],
               text_column: str, id_column: str) -> dict:
    return scoring.join_parts_stage(out, parts, model, results, text_column, id_column)


@task(name="summarize-scores", pulls=lambda run, a: [scoring.SUMMARY])
def summarize(out: str, data: str, model: dict, results: list[dict], seconds: float) -> dict:
    return scoring.summarize_scores(out, data, model, results, seconds)
