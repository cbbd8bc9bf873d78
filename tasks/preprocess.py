"""Preprocessing tasks: ingest, tokenize a shard, build the vocab, numericalize a shard; each
declares the files of the run directory it writes and reads (`for_run`)."""

from __future__ import annotations

from ulmfit_core import stages
from ulmfit_core.config import Columns, Preset
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.manifests import manifest_path
from ulmfit_core.stages.ingesting import PARTIAL, IngestPlan
from ulmfit_core.text.ingest import Reading, SourceFile

from .common import retry_transient, task

IO_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)


@task(name="plan-ingest", pulls=lambda run, a: [run.raw, PARTIAL], **IO_RETRIES)
def plan_ingest(out: str, data: str, limit: int | None, seed: int, shard_docs: int, columns: Columns,
                test_share: float) -> IngestPlan:
    return stages.ingest_plan(RunDir(out), data, limit, seed, shard_docs, columns, test_share)


@task(name="ingest-file", task_run_name="ingest {name}", pulls=lambda run, a: [], **IO_RETRIES)
def ingest(out: str, file: SourceFile, reading: Reading, name: str) -> dict:
    return stages.ingest_file_stage(RunDir(out), file, reading)


@task(name="finish-ingest", writes=lambda run: [run.raw],
      pulls=lambda run, a: [run.raw, PARTIAL, run.tokens, run.ids], **IO_RETRIES)
def finish_ingest(out: str, plan: IngestPlan, parts: list[dict]) -> dict:
    return stages.finish_ingest(RunDir(out), plan, parts)


@task(name="train-tokenizer", writes=lambda run: [run.tokenizer], reads=lambda run: [run.raw],
      pulls=lambda run, a: [run.raw, run.tokenizer], **IO_RETRIES)
def train_tokenizer(out: str, preset: Preset, seed: int) -> dict:
    return stages.tokenizer_stage(RunDir(out), preset, seed)


@task(name="tokenize-shard", task_run_name="tokenize {raw_shard}", writes=lambda run: [run.tokens],
      reads=lambda run: [run.raw, run.tokenizer],
      pulls=lambda run, a: [a["raw_shard"], run.tokenizer, *stages.token_files(run, a["raw_shard"])],
      **IO_RETRIES)
def tokenize_shard(out: str, raw_shard: str, preset: Preset) -> dict:
    return stages.tokenize_stage(RunDir(out), raw_shard, preset)


@task(name="build-vocab", writes=lambda run: [run.vocab], reads=lambda run: [run.tokens],
      pulls=lambda run, a: [*a["count_paths"], run.vocab, manifest_path(run.vocab)], **IO_RETRIES)
def build_vocab(out: str, preset: Preset, count_paths: list[str]) -> dict:
    return stages.vocab_stage(RunDir(out), preset, count_paths)


@task(name="numericalize-shard", task_run_name="numericalize {token_shard}", writes=lambda run: [run.ids],
      reads=lambda run: [run.tokens, run.vocab],
      pulls=lambda run, a: [a["token_shard"], run.vocab, *stages.id_files(run, a["token_shard"])],
      **IO_RETRIES)
def numericalize_shard(out: str, token_shard: str) -> dict:
    return stages.numericalize_stage(RunDir(out), token_shard)


@task(name="check-classifier-data", pulls=lambda run, a: [run.raw, run.ids])
def check_classifier_data(out: str, preset: Preset, seed: int, train_labels: int | None = None) -> dict:
    return stages.check_classifier_data(RunDir(out), preset, seed, train_labels)


@task(name="check-inputs", pulls=lambda run, a: [run.ingest_summary, run.vocab, manifest_path(run.vocab), run.ids,
                                                 run.export])
def check_inputs(out: str, backwards: bool, encoder: bool) -> None:
    stages.check_inputs(RunDir(out, backwards), encoder)


@task(name="summarize-preprocess", pulls=lambda run, a: [run.ingest_summary, run.preprocess_metrics])
def summarize(out: str, tokenized: list[dict], numericalized: list[dict], vocab: dict,
              seconds: float) -> dict:
    return stages.summarize_preprocess(RunDir(out), tokenized, numericalized, vocab, seconds)
