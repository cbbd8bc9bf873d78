"""Training tasks: LM fine-tuning, encoder export, staged classifier, test evaluation, ensemble.

Training tasks checkpoint every epoch (in the core); a retry, or Dask rerunning the task after its
worker died, resumes from the last finished epoch. Their progress shows as Prefect artifacts.
"""

from __future__ import annotations

from prefect import task

from ulmfit_core import stages
from ulmfit_core.config import Preset
from ulmfit_core.rundir import RunDir

from .common import progress_artifact, retry_transient

TRAIN_RETRIES = dict(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)


def direction_name(backwards: bool) -> str:
    return "backward" if backwards else "forward"


def _named(template: str):
    """A task run name with the run's direction filled in, e.g. "train backward classifier"."""

    def name() -> str:
        from prefect.runtime import task_run

        return template.format(direction_name(task_run.parameters.get("backwards", False)))

    return name


@task(name="train-language-model", task_run_name=_named("train {} language model"), **TRAIN_RETRIES)
def train_lm(out: str, preset: Preset, seed: int, pretrained: str, backwards: bool = False) -> dict:
    progress = progress_artifact(f"{direction_name(backwards)} language model")
    return stages.lm_stage(RunDir(out, backwards), preset, seed, pretrained, progress)


@task(name="export-encoder", task_run_name=_named("export {} encoder"))
def export_encoder(out: str, backwards: bool = False) -> dict:
    return stages.export_stage(RunDir(out, backwards))


@task(name="train-classifier", task_run_name=_named("train {} classifier"), **TRAIN_RETRIES)
def train_classifier(out: str, preset: Preset, seed: int, backwards: bool = False) -> dict:
    progress = progress_artifact(f"{direction_name(backwards)} classifier")
    return stages.classifier_stage(RunDir(out, backwards), preset, seed, progress)


@task(name="evaluate", task_run_name=_named("evaluate {} classifier"))
def evaluate(out: str, backwards: bool = False) -> dict:
    progress = progress_artifact(f"{direction_name(backwards)} evaluation")
    return stages.evaluate_stage(RunDir(out, backwards), progress)


@task(name="ensemble")
def ensemble(out: str) -> dict:
    return stages.ensemble_stage(RunDir(out))


@task(name="baseline")
def baseline(out: str, backwards: bool = False) -> dict:
    return stages.baseline_stage(RunDir(out, backwards))
