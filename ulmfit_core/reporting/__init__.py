"""The run's summary: `metrics.json` for machines, `report.md` for people, the training curves
and lineage.json. Written last.

    summary     metrics.json from the stage summaries, and the headline figures
    markdown    report.md, a function per section
    plots       the training curves
"""

from __future__ import annotations

from ..lineage import write_lineage
from ..rundir import RunDir, write_json, write_text
from .markdown import PROMPT, render_report
from .plots import plot_curves, save_png
from .summary import collect_metrics, headline_figures

__all__ = ["PROMPT", "collect_metrics", "first_batches", "generated_samples", "headline_figures",
           "plot_curves", "render_report", "save_png", "write_report"]


def first_batches(run: RunDir, preset: str | None, seed: int) -> dict[str, str]:
    """One row of the first training batch of each model trained so far (a batch is made from
    every document: a preprocessing run's report leaves them out, so that its memory does not
    grow with the corpus), decoded; a kind the corpus cannot make is left out."""
    forward = run.direction(False)
    trained = [kind for kind, model in (("lm", forward.lm.model), ("classifier", forward.classifier.model))
               if model.exists()]
    if preset is None or not trained or not run.vocab.exists() or not run.shards(run.ids):
        return {}
    from ..config import get_preset
    from ..errors import DataError
    from ..show import first_batch, format_batch

    shown = {}
    for kind in trained:
        try:
            shown[kind] = format_batch(first_batch(run, get_preset(preset), seed, kind, n=1))
        except DataError:
            pass
    return shown


def generated_samples(run: RunDir, seed: int) -> list[str]:
    """Two continuations of PROMPT by the forward LM (a backward LM writes right to left)."""
    forward = run.direction(False)
    if not forward.lm.model.exists():
        return []
    from ..predict import LanguageModel

    return LanguageModel.load(forward.lm).generate(PROMPT, n_words=40, temperature=0.75, n=2, seed=seed)


def write_report(run: RunDir, params: dict, seed: int = 0) -> dict:
    """metrics.json, curves.png, report.md and lineage.json of the run as it stands."""
    metrics = collect_metrics(run, params)
    metrics["samples"] = samples = generated_samples(run, seed)
    if metrics["lm"].get("history"):
        plot_curves(metrics, run.curves)
    write_json(run.metrics, metrics)
    write_text(run.report, render_report(metrics, samples, first_batches(run, params.get("preset"), seed)))
    write_lineage(run, params.get("out"))
    return metrics
