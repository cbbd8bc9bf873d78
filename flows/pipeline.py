"""The ULMFiT pipeline as Prefect flows.

    preprocess      ingest → tokenize shards on Dask → vocab → numericalize shards on Dask
    train-lm        fine-tune the AWD-LSTM language model(s) → export the encoder(s)
    train-classifier  staged classifier(s) on the encoder(s) → evaluate on the test split
                    (→ forward + backward ensemble) → NB-LR baseline
    ulmfit          all three, then the report
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial

import dask
from prefect import flow, unmapped
from prefect.futures import as_completed

from tasks import preprocess as prep
from tasks import train
from tasks.common import materializing, progress_artifact
from tasks.ranks import Ranks
from tasks.report import report
from ulmfit_core.config import EXPECTED, get_preset
from ulmfit_core.ingest import resolve_source
from ulmfit_core.params import DIRECTIONS, RunParams, curve_points
from ulmfit_core.progress import Bar
from ulmfit_core.rundir import RunDir, tracked_run

from flows.runtime import dask_task_runner, training_runner


def _as_done(futures, stage: str, done_what: str) -> list:
    """The results of mapped shard tasks, in order, once all are done; meanwhile how many are
    done shows as a progress artifact in the UI and as a bar on a terminal."""
    progress = progress_artifact(stage)
    with Bar(done_what, len(futures)) as bar:
        for done, _ in enumerate(as_completed(futures), 1):
            progress(done / len(futures), f"{done}/{len(futures)} {done_what}")
            bar.update(completed=done)
    return futures.result()


@flow(name="ulmfit-preprocess", log_prints=True)
def preprocess_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                    seed: int = 0, shard_docs: int = 2000, tokenizer: str | None = None,
                    vocab_size: int | None = None) -> dict:
    """Raw shards → (subword model) → token shards (in parallel) → vocab → id shards (in parallel)."""
    settings = get_preset(preset, tokenizer, vocab_size)
    t0 = time.time()
    ingested = materializing(prep.ingest, out, ["raw"], [str(resolve_source(data))])(
        out, data, limit, seed, shard_docs)
    print(f"ingested {ingested['docs']} documents into {len(ingested['shards'])} shards "
          f"(skipped {ingested['skipped']['total']})")
    materializing(prep.train_tokenizer, out, ["tokenizer"], ["raw"]).submit(out, settings, seed).result()
    tokenized = _as_done(materializing(prep.tokenize_shard, out, ["tokens"], ["raw", "tokenizer"]).map(
        unmapped(out), ingested["shards"], unmapped(settings)), "tokenization", "shards tokenized")
    vocab = materializing(prep.build_vocab, out, ["vocab.json"], ["tokens"]).submit(
        out, settings, [r["counts"] for r in tokenized]).result()
    print(f"vocab: {vocab['size']} entries from {vocab['distinct_tokens']} distinct tokens")
    token_shards = [r["shard"] for r in tokenized]
    numericalize = materializing(prep.numericalize_shard, out, ["ids"], ["tokens", "vocab.json"])
    numericalized = _as_done(numericalize.map(unmapped(out), token_shards), "numericalization",
                             "shards numericalized")
    return prep.summarize(out, tokenized, numericalized, vocab, time.time() - t0)


def _routed(train_resource: str | None):
    """Send the tasks submitted inside to Dask workers that have `train_resource` (e.g. GPU=1)."""
    return dask.annotate(resources={train_resource: 1}) if train_resource else nullcontext()


def _train(keys, train_resource: str | None, submit_chain, ranks: Ranks | None = None) -> list:
    """Submit one chain of training tasks per key (a direction, a number of labels); on a shared
    cluster the chains run side by side on the workers with the resource, here one after the
    other (they would fight over the same cores). Data-parallel chains (`ranks`) run one after
    the other from here, each stage spread over the workers by its task."""
    chains = []
    for key in keys:
        with _routed(train_resource if ranks is None else None):
            chains.append(submit_chain(key))
        if train_resource is None or ranks is not None:
            chains[-1][-1].wait()
    return [[f.result() for f in chain] for chain in chains]


def _ranks(train_workers: int, dask_address: str | None, train_resource: str | None) -> Ranks | None:
    """How training spreads: None for one process (here, or one worker with the resource)."""
    return Ranks(train_workers, dask_address, train_resource) if train_workers > 1 else None


@flow(name="ulmfit-train-lm", log_prints=True)
def train_lm_flow(out: str, preset: str = "tiny", seed: int = 0, pretrained: str = "none",
                  direction: str = "forward", train_resource: str | None = None,
                  train_workers: int = 1, dask_address: str | None = None) -> dict:
    """Fine-tune the language model(s) on all the text (from pretrained weights when given), then
    export the encoder(s). `direction`: forward, backward or bidirectional (both);
    `train_workers`: data-parallel ranks per training."""
    settings = get_preset(preset)
    ranks = _ranks(train_workers, dask_address, train_resource)

    def chain(backwards: bool):
        run = RunDir(out, backwards)
        lm_file, encoder = run.rel(run.lm_model), run.rel(run.encoder)
        lm = materializing(train.train_lm, out, [lm_file], ["vocab.json", "ids"]).submit(
            out, settings, seed, pretrained, backwards, ranks)
        return lm, materializing(train.export_encoder, out, [encoder], [lm_file]).submit(
            out, backwards, wait_for=[lm])

    results = {}
    directions = DIRECTIONS[direction]
    for backwards, (metrics, _) in zip(directions, _train(directions, train_resource, chain, ranks)):
        name = train.direction_name(backwards)
        print(f"{name} language model: valid loss {metrics['valid_loss']:.4f}, accuracy "
              f"{metrics['accuracy']:.4f}, perplexity {metrics['perplexity']:.2f} "
              f"(host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
        results[name] = metrics
    return results


@flow(name="ulmfit-train-classifier", log_prints=True)
def train_classifier_flow(out: str, preset: str = "tiny", seed: int = 0, direction: str = "forward",
                          train_resource: str | None = None, train_labels: int | None = None,
                          train_workers: int = 1, dask_address: str | None = None) -> dict:
    """Gradual unfreezing on the labelled train split (or a balanced sample of `train_labels`
    of its reviews), then accuracy on the test split, beside the classical NB-LR baseline
    trained on the same reviews (and, for both directions, the ensemble of their averaged
    probabilities)."""
    settings = get_preset(preset)
    ranks = _ranks(train_workers, dask_address, train_resource)

    def chain(backwards: bool):
        run = RunDir(out, backwards)
        encoder, model = run.rel(run.encoder), run.rel(run.classifier_model)
        clas = materializing(train.train_classifier, out, [model], [encoder, "ids"]).submit(
            out, settings, seed, backwards, train_labels, ranks)
        test = run.rel(run.test_scores)
        return clas, materializing(train.evaluate, out, [test], [model, "ids"]).submit(
            out, backwards, ranks, wait_for=[clas])

    results = {}
    directions = DIRECTIONS[direction]
    for backwards, (metrics, test) in zip(directions, _train(directions, train_resource, chain, ranks)):
        name = train.direction_name(backwards)
        results[name] = test
        if test["accuracy"] is not None:
            print(f"{name} classifier: test accuracy {test['accuracy']:.4f} on {test['n']} reviews "
                  f"(trained on host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
    if any(r["accuracy"] is not None for r in results.values()):
        if direction == "bidirectional":
            results["ensemble"] = materializing(train.ensemble, out, ["ensemble.json"], [
                "classifier/test.json", "classifier-bwd/test.json"])(out)["ensemble"]
            print(f"forward + backward ensemble: test accuracy {results['ensemble']['accuracy']:.4f}")
        first = RunDir(out, DIRECTIONS[direction][0])
        base = materializing(train.baseline, out, [first.rel(first.baseline)],
                             ["raw"])(out, first.backwards)
        print(f"NB-LR baseline on the same split: {base['accuracy']:.4f}")
    return results


def _job(command: str, given: dict, work) -> dict:
    """Run `work()` as one job on a run directory: its parameters checked (`RunParams`), the
    directory held and its status kept in run.json (running, then complete, failed or
    stopped), the report written at the end. `given`: the job flow's own parameters, which
    are also what run.json records."""
    params = RunParams(**given)
    record = {"command": command, **given}
    if "tokenizer" in given:
        record["tokenizer"] = params.settings().tokenizer.kind
    with tracked_run(RunDir(params.out), record, params.reset):
        result = work()
        metrics = report(params.out, record, params.seed)
    print(f"report: {RunDir(params.out).report}")
    return result if result is not None else metrics


@flow(name="ulmfit-preprocess-job", log_prints=True)
def preprocess_job(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                   seed: int = 0, dask_address: str | None = None, workers: int | None = None,
                   shard_docs: int = 2000, tokenizer: str | None = None,
                   vocab_size: int | None = None, reset: bool = False) -> dict:
    """Preprocessing alone, as a run of its own (lock, status, report): what the `cpu` work
    pool runs on a schedule to keep token shards and vocab current."""
    given = dict(locals())
    return _job("preprocess", given, partial(
        preprocess_flow.with_options(task_runner=dask_task_runner(dask_address, workers)),
        out, data, preset, limit, seed, shard_docs, tokenizer, vocab_size))


@flow(name="ulmfit-train-lm-job", log_prints=True)
def train_lm_job(out: str, preset: str = "tiny", seed: int = 0, pretrained: str = "none",
                 direction: str = "forward", dask_address: str | None = None,
                 train_resource: str | None = None, train_workers: int = 1,
                 reset: bool = False) -> dict:
    """Language-model fine-tuning and encoder export on a preprocessed run directory, as a run
    of its own."""
    given = dict(locals())
    return _job("train-lm", given, partial(
        train_lm_flow.with_options(task_runner=training_runner(dask_address, train_resource,
                                                               train_workers)),
        out, preset, seed, pretrained, direction, train_resource, train_workers, dask_address))


@flow(name="ulmfit-train-classifier-job", log_prints=True)
def train_classifier_job(out: str, preset: str = "tiny", seed: int = 0, direction: str = "forward",
                         dask_address: str | None = None, train_resource: str | None = None,
                         train_labels: int | None = None, train_workers: int = 1,
                         reset: bool = False) -> dict:
    """Classifier training and evaluation on a run directory with its encoder(s), as a run of
    its own."""
    given = dict(locals())
    return _job("train-classifier", given, partial(
        train_classifier_flow.with_options(task_runner=training_runner(dask_address, train_resource,
                                                                       train_workers)),
        out, preset, seed, direction, train_resource, train_labels, train_workers, dask_address))


@flow(name="ulmfit-label-curve", log_prints=True)
def label_curve_flow(out: str, labels: list[str], preset: str = "tiny", seed: int = 0,
                     train_resource: str | None = None) -> dict:
    """One classifier per number of labelled reviews on the run's encoder (each a task, reused
    when done before), scored on the test split beside NB-LR on the same reviews."""
    settings = get_preset(preset)
    chains = _train(curve_points(labels), train_resource,
                    lambda n: [train.label_curve_point.submit(out, settings, seed, n)])
    curve = train.write_label_curve(out, [point for (point,) in chains])
    for point in curve["points"]:
        print(f"{point['labels']} labelled reviews: ULMFiT {point['ulmfit']:.4f}, NB-LR "
              f"{point['nblr']:.4f} on {point['test_reviews']} test reviews")
    return curve


@flow(name="ulmfit-label-curve-job", log_prints=True)
def label_curve_job(out: str, labels: list[str], preset: str = "tiny", seed: int = 0,
                    dask_address: str | None = None, train_resource: str | None = None,
                    reset: bool = False) -> dict:
    """The label curve on a run directory with its encoder, as a run of its own."""
    given = dict(locals())
    return _job("label-curve", given, partial(
        label_curve_flow.with_options(task_runner=training_runner(dask_address, train_resource)),
        out, labels, preset, seed, train_resource))


@flow(name="ulmfit", log_prints=True)
def ulmfit_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                seed: int = 0, dask_address: str | None = None, workers: int | None = None,
                shard_docs: int = 2000, tokenizer: str | None = None,
                vocab_size: int | None = None, pretrained: str = "none",
                direction: str = "forward", train_resource: str | None = None,
                train_labels: int | None = None, train_workers: int = 1,
                reset: bool = False) -> dict:
    """The whole recipe, from a corpus to a report. With `train_resource` (and a Dask cluster
    whose training workers declare it, e.g. `dask worker --resources GPU=1`), training runs on
    those workers while tokenization runs anywhere; with `train_workers` N, each training is
    spread over N of them (data-parallel ranks)."""
    given = dict(locals())

    def work() -> None:
        print(f"preset {preset}: {EXPECTED[preset]}")
        trainer = training_runner(dask_address, train_resource, train_workers)
        preprocess_flow.with_options(task_runner=dask_task_runner(dask_address, workers))(
            out, data, preset, limit, seed, shard_docs, tokenizer, vocab_size)
        labelled = prep.check_classifier_data(out, get_preset(preset, tokenizer, vocab_size), seed,
                                              train_labels)
        print(f"classifier data: {labelled['train_docs']} train / {labelled['valid_docs']} valid "
              f"reviews, labels {labelled['labels']}")
        train_lm_flow.with_options(task_runner=trainer)(out, preset, seed, pretrained, direction,
                                                        train_resource, train_workers, dask_address)
        train_classifier_flow.with_options(task_runner=trainer)(
            out, preset, seed, direction, train_resource, train_labels, train_workers, dask_address)

    return _job("run", given, work)
