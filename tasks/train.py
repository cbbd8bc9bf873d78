"""Training tasks: LM fine-tuning, encoder export, staged classifier, test evaluation, ensemble.

Training tasks checkpoint every epoch (in the core); a retry, or Dask rerunning the task after its
worker died, resumes from the last finished epoch. Their progress shows as Prefect artifacts.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from prefect.artifacts import create_table_artifact

from ulmfit_core import stages
from ulmfit_core.config import Preset
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.manifests import manifest_path
from ulmfit_core.run.store import local_copy
from ulmfit_core.stages import labelcurve

from .common import progress_artifact, retry_transient, run_files, task
from .gpu import training_slot
from .ranks import Ranks, run_ranks

TRAIN_RETRIES = dict(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)


def preprocessed(run: RunDir) -> list:
    """What every training task reads of preprocessing: raw and id shards, tokenizer, vocab."""
    return [run.raw, run.tokenizer, run.ids, run.vocab, manifest_path(run.vocab), run.preprocess_metrics]


def direction_name(backwards: bool) -> str:
    return "backward" if backwards else "forward"


def _named(template: str):
    """A task run name with the run's direction filled in, e.g. "train backward classifier"."""

    def name() -> str:
        from prefect.runtime import task_run

        return template.format(direction_name(task_run.parameters.get("backwards", False)))

    return name


def _trained(ranks: Ranks | None, stage, out: str, backwards: bool, pulls, *args, progress=None) -> dict:
    """`stage(RunDir(out, backwards), *args)` in this process (holding the GPU slot), or as the
    data-parallel ranks of `ranks` on Dask workers (each holding its worker's resource, and
    working on a local copy of the run's files `pulls` names when the run is on object storage):
    rank 0's summary, with every rank's host, pid and device."""
    if ranks is None:
        with training_slot():
            return stage(RunDir(out, backwards), *args, progress)
    names = run_files(pulls, {"backwards": backwards})
    return run_ranks(ranks, partial(_on_copy, stage, out, backwards, names), *args, progress=progress)[0]


def _on_copy(stage, out: str, backwards: bool, names: list[str], *args, **kwargs) -> dict:
    """`stage` on the run `out` (on object storage: a rank's own local copy of `names` of it,
    whose changes rank 0 alone writes back, as it alone writes the run's files)."""
    from ulmfit_core.training.parallel import rank

    with local_copy(out, names, write_back=rank() == 0) as local:
        return stage(RunDir(local, backwards), *args, **kwargs)


def _ranks_copy(pulls):
    """A training task's `pulls`, but none when its data-parallel ranks copy the run themselves."""
    return lambda run, a: None if a.get("ranks") is not None else pulls(run, a)


def _lm_files(run: RunDir, a: dict) -> list:
    return [*preprocessed(run), run.lm]


def _classifier_files(run: RunDir, a: dict) -> list:
    return [*preprocessed(run), run.export, run.classifier]


def _evaluate_files(run: RunDir, a: dict) -> list:
    return [*preprocessed(run), run.classifier]


@task(name="train-language-model", task_run_name=_named("train {} language model"),
      writes=lambda run: [run.lm.model], reads=lambda run: [run.vocab, run.ids],
      pulls=_ranks_copy(_lm_files), **TRAIN_RETRIES)
def train_lm(out: str, preset: Preset, seed: int, pretrained: str, backwards: bool = False,
             ranks: Ranks | None = None) -> dict:
    progress = progress_artifact(f"{direction_name(backwards)} language model")
    return _trained(ranks, stages.lm_stage, out, backwards, _lm_files, preset, seed, pretrained,
                    progress=progress)


@task(name="export-encoder", task_run_name=_named("export {} encoder"),
      writes=lambda run: [run.export.encoder], reads=lambda run: [run.lm.model],
      pulls=lambda run, a: [*preprocessed(run), run.lm, run.export])
def export_encoder(out: str, backwards: bool = False) -> dict:
    return stages.export_stage(RunDir(out, backwards))


@task(name="generate-samples", writes=lambda run: [run.samples], reads=lambda run: [run.lm.model],
      pulls=lambda run, a: [run.tokenizer, run.lm])
def samples(out: str, seed: int) -> dict:
    """The forward language model's continuations of the report's prompt, in the job's process
    (it tokenizes text: not on a node that only trains)."""
    return stages.samples_stage(RunDir(out), seed)


@task(name="train-classifier", task_run_name=_named("train {} classifier"),
      writes=lambda run: [run.classifier.model], reads=lambda run: [run.export.encoder, run.ids],
      pulls=_ranks_copy(_classifier_files), **TRAIN_RETRIES)
def train_classifier(out: str, preset: Preset, seed: int, backwards: bool = False,
                     train_labels: int | None = None, ranks: Ranks | None = None) -> dict:
    progress = progress_artifact(f"{direction_name(backwards)} classifier")
    return _trained(ranks, partial(stages.classifier_stage, train_labels=train_labels), out, backwards,
                    _classifier_files, preset, seed, progress=progress)


@task(name="evaluate", task_run_name=_named("evaluate {} classifier"),
      writes=lambda run: [run.classifier.test_scores], reads=lambda run: [run.classifier.model, run.ids],
      pulls=lambda run, a: None if a["ranks"] is not None and a["ranks"].address else _evaluate_files(run, a))
def evaluate(out: str, backwards: bool = False, ranks: Ranks | None = None) -> dict:
    """On the test split: here, or on one worker of the cluster the ranks trained on."""
    progress = progress_artifact(f"{direction_name(backwards)} evaluation")
    if ranks is not None and ranks.address:
        names = run_files(_evaluate_files, {"backwards": backwards})
        return run_ranks(replace(ranks, n=1), partial(_on_copy, stages.evaluate_stage, out, backwards, names),
                         progress=progress)[0]
    return stages.evaluate_stage(RunDir(out, backwards), progress)


@task(name="ensemble", writes=lambda run: [run.ensemble],
      reads=lambda run: [run.direction(b).classifier.test_scores for b in (False, True)],
      pulls=lambda run, a: [run.ensemble, *(run.direction(b).classifier for b in (False, True))])
def ensemble(out: str) -> dict:
    return stages.ensemble_stage(RunDir(out))


@task(name="baseline", writes=lambda run: [run.classifier.baseline], reads=lambda run: [run.raw],
      pulls=lambda run, a: [run.raw, run.classifier])
def baseline(out: str, backwards: bool = False) -> dict:
    return stages.baseline_stage(RunDir(out, backwards))


def _point_name() -> str:
    from prefect.runtime import task_run

    n = task_run.parameters.get("n")
    return f"classifier on {'all' if n is None else n} labels"


@task(name="label-curve-point", task_run_name=_point_name,
      writes=lambda run: [run.classifier.model, run.classifier.test_scores, run.classifier.baseline],
      reads=lambda run: [run.export.encoder, run.ids, run.raw],
      pulls=lambda run, a: [*preprocessed(run), run.export, run.label_curve_point(a["n"]).classifier],
      **TRAIN_RETRIES)
def label_curve_point(out: str, preset: Preset, seed: int, n: int | None) -> dict:
    progress = progress_artifact(f"label curve: {'all' if n is None else n} labels")
    with training_slot():
        return labelcurve.curve_point(RunDir(out), preset, seed, n, progress)


@task(name="write-label-curve", writes=lambda run: [run.label_curve, run.label_curve_plot],
      pulls=lambda run, a: [run.label_curve, run.label_curve_plot])
def write_label_curve(out: str, points: list[dict]) -> dict:
    curve = labelcurve.write_curve(RunDir(out), points)
    create_table_artifact(curve["points"], key="ulmfit-label-curve",
                          description=f"Test accuracy by labelled reviews, ULMFiT and NB-LR ({out})")
    return curve
