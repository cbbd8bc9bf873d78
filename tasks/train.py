"""Training tasks: LM fine-tuning, encoder export, staged classifier, test evaluation."""

from __future__ import annotations

from prefect import task

from ulmfit_core import stages
from ulmfit_core.config import Preset
from ulmfit_core.rundir import RunDir


@task(name="train-language-model")
def train_lm(out: str, preset: Preset, seed: int, pretrained: str) -> dict:
    return stages.lm_stage(RunDir(out), preset, seed, pretrained)


@task(name="export-encoder")
def export_encoder(out: str) -> dict:
    return stages.export_stage(RunDir(out))


@task(name="train-classifier")
def train_classifier(out: str, preset: Preset, seed: int) -> dict:
    return stages.classifier_stage(RunDir(out), preset, seed)


@task(name="evaluate")
def evaluate(out: str) -> dict:
    return stages.evaluate_stage(RunDir(out))


@task(name="baseline")
def baseline(out: str) -> dict:
    return stages.baseline_stage(RunDir(out))
