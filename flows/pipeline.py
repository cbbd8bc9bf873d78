"""The ULMFiT pipeline as Prefect flows.

    preprocess      ingest → tokenize shards on Dask → vocab → numericalize shards on Dask
    train-lm        for each direction: fine-tune the AWD-LSTM language model → export its encoder
    train-classifier  for each direction: staged classifier on the encoder → evaluate on the test
                    split; then the forward + backward ensemble and the NB-LR baseline
    ulmfit          all three, then the report

Each task declares beside its definition (tasks/) the files of the run directory it writes and
reads; `for_run` makes them its Prefect assets for this run, so the UI draws the lineage graph.
Where training runs (this process, GPU workers side by side, data-parallel ranks) is
`flows.runtime.Training`'s to decide.
"""

from __future__ import annotations

import time
from functools import partial

from prefect import flow, unmapped
from prefect.runtime import deployment

from tasks import preprocess as prep
from tasks import score as scoring_tasks
from tasks import train
from tasks.common import for_run, progress_artifact, set_up_process
from tasks.report import report
from ulmfit_core.config import EXPECTED, TEST_SHARE, Columns, get_preset
from ulmfit_core.params import DIRECTIONS, RunParams, curve_points
from ulmfit_core.progress import Bar
from ulmfit_core.rundir import RunDir
from ulmfit_core.runstatus import tracked
from ulmfit_core.runstore import located
from ulmfit_core.stages import scoring

from flows.runtime import Training, dask_task_runner, settled


def _as_done(futures, stage: str, done_what: str) -> list:
    """The results of mapped shard tasks, in order, once all are done; meanwhile how many are
    done shows as a progress artifact in the UI and as a bar on a terminal."""
    progress = progress_artifact(stage)
    with Bar(done_what, len(futures)) as bar:
        def one_more(done: int) -> None:
            progress(done / len(futures), f"{done}/{len(futures)} {done_what}")
            bar.update(completed=done)

        settled(futures, stage, one_more)
    return futures.result()


def _ingest(out: str, run: RunDir, plan) -> dict:
    """The source's files into raw shards: a dataset's files (and a large Parquet file's runs of
    row groups) side by side on the Dask workers, a task each; one file (a tarball, a table)
    here, where its progress shows."""
    files = plan.files()
    if len(files) > 1:
        names = [plan.source.relative(f.path) + (f" row groups {f.row_groups[0]}-{f.row_groups[-1]}"
                                                 if f.row_groups else "") for f in files]
        parts = _as_done(prep.ingest.map(unmapped(out), files, unmapped(plan.reading), names),
                         "ingest", "parts read")
    else:
        parts = [prep.ingest(out, files[0], plan.reading, files[0].path.name)]
    return for_run(prep.finish_ingest, run, plan.source.location)(out, plan, parts)


@flow(name="ulmfit-preprocess", log_prints=True)
def preprocess_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                    seed: int = 0, shard_docs: int = 2000, tokenizer: str | None = None,
                    vocab_size: int | None = None, text_column: str = "text",
                    label_column: str = "label", split_column: str = "split", id_column: str = "id",
                    test_share: float = TEST_SHARE, lang: str = "en") -> dict:
    """Raw shards (a test split held out when the corpus has none) → (subword model) → token
    shards (in parallel) → vocab → id shards (in parallel)."""
    settings, run, t0 = get_preset(preset, tokenizer, vocab_size, lang), RunDir(out), time.time()
    columns = Columns(text_column, label_column, split_column, id_column)
    plan = prep.plan_ingest(out, data, limit, seed, shard_docs, columns, test_share)
    ingested = plan.done or _ingest(out, run, plan)
    parts = ingested.get("files", [])
    n_files = len({part["file"] for part in parts})
    read = (f" from {n_files} files" if n_files > 1 else "") + (f" in {len(parts)} parts" if len(parts) > n_files else "")
    print(f"ingested {ingested['docs']} documents{read} into {len(ingested['shards'])} shards "
          f"(skipped {ingested['skipped']['total']})")
    if ingested["test_split"]["from"] == "held out":
        print(f"no labelled test split: held out {test_share:.0%} of each label's train documents "
              f"as test ({', '.join(f'{y} {n}' for y, n in ingested['test_split']['docs'].items())})")
    for_run(prep.train_tokenizer, run).submit(out, settings, seed).result()
    tokenized = _as_done(for_run(prep.tokenize_shard, run).map(
        unmapped(out), ingested["shards"], unmapped(settings)), "tokenization", "shards tokenized")
    vocab = for_run(prep.build_vocab, run).submit(out, settings, [r["counts"] for r in tokenized]).result()
    print(f"vocab: {vocab['size']} entries from {vocab['distinct_tokens']} distinct tokens")
    numericalized = _as_done(for_run(prep.numericalize_shard, run).map(
        unmapped(out), [r["shard"] for r in tokenized]), "numericalization", "shards numericalized")
    return prep.summarize(out, tokenized, numericalized, vocab, time.time() - t0)


@flow(name="ulmfit-train-lm", log_prints=True)
def train_lm_flow(out: str, preset: str = "tiny", seed: int = 0, pretrained: str = "none",
                  direction: str = "forward", train_resource: str | None = None,
                  train_workers: int = 1, dask_address: str | None = None) -> dict:
    """For each direction: fine-tune the language model on all the text (from pretrained weights
    when given), then export its encoder. `direction`: forward, backward or bidirectional (both);
    `train_workers`: data-parallel ranks per training."""
    settings = get_preset(preset)
    training = Training(dask_address, train_resource, train_workers)
    lms, exports = {}, {}
    for backwards in DIRECTIONS[direction]:
        run = RunDir(out, backwards)
        with training.chain() as chain:
            lms[backwards] = chain(for_run(train.train_lm, run).submit(
                out, settings, seed, pretrained, backwards, training.ranks))
            exports[backwards] = chain(for_run(train.export_encoder, run).submit(
                out, backwards, wait_for=[lms[backwards]]))
    settled([*lms.values(), *exports.values()], "language model")  # side by side: still going
    results = {}
    for backwards, lm in lms.items():
        name, metrics = train.direction_name(backwards), lm.result()
        exports[backwards].result()  # the encoder is exported (or its error raised) before the flow ends
        print(f"{name} language model: valid loss {metrics['valid_loss']:.4f}, accuracy "
              f"{metrics['accuracy']:.4f}, perplexity {metrics['perplexity']:.2f} "
              f"(host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
        results[name] = metrics
    return results


@flow(name="ulmfit-train-classifier", log_prints=True)
def train_classifier_flow(out: str, preset: str = "tiny", seed: int = 0, direction: str = "forward",
                          train_resource: str | None = None, train_labels: int | None = None,
                          train_workers: int = 1, dask_address: str | None = None) -> dict:
    """For each direction: gradual unfreezing on the labelled train split (or a balanced sample of
    `train_labels` of its reviews), then accuracy on the test split; then, for both directions,
    the ensemble of their averaged probabilities, and the classical NB-LR baseline trained on
    the same reviews."""
    settings = get_preset(preset)
    training = Training(dask_address, train_resource, train_workers)
    trained, tested = {}, {}
    for backwards in DIRECTIONS[direction]:
        run = RunDir(out, backwards)
        with training.chain() as chain:
            trained[backwards] = chain(for_run(train.train_classifier, run).submit(
                out, settings, seed, backwards, train_labels, training.ranks))
            tested[backwards] = chain(for_run(train.evaluate, run).submit(
                out, backwards, training.ranks, wait_for=[trained[backwards]]))
    settled([*trained.values(), *tested.values()], "classifier")  # side by side: still going
    results = {}
    for backwards in tested:
        name, metrics = train.direction_name(backwards), trained[backwards].result()
        results[name] = test = tested[backwards].result()
        if test["accuracy"] is not None:
            print(f"{name} classifier: test accuracy {test['accuracy']:.4f} on {test['n']} reviews "
                  f"(trained on host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
    if all(r["accuracy"] is None for r in results.values()):
        return results  # no labelled test split to compare on
    run = RunDir(out, DIRECTIONS[direction][0])
    if direction == "bidirectional":
        results["ensemble"] = for_run(train.ensemble, run)(out)["ensemble"]
        print(f"forward + backward ensemble: test accuracy {results['ensemble']['accuracy']:.4f}")
    base = for_run(train.baseline, run)(out, run.backwards)
    print(f"NB-LR baseline on the same split: {base['accuracy']:.4f}")
    return results


def check_labels(out: str, preset: str, seed: int, train_labels: int | None) -> None:
    """The labelled data checked before any training starts (`stages.check_classifier_data`)."""
    labelled = prep.check_classifier_data(out, get_preset(preset), seed, train_labels)
    print(f"classifier data: {labelled['train_docs']} train / {labelled['valid_docs']} valid "
          f"reviews, labels {labelled['labels']}")
    if labelled["few"]:
        print("warning: few training documents for "
              + ", ".join(f"'{y}' ({n})" for y, n in labelled["few"].items())
              + ": their per-class scores rest on very little")


# How long a scheduled run waits for another run to leave its run directory (`ulmfit serve`'s
# two schedules share one, and their default crons both fire at 02:00) before it fails.
SCHEDULED_WAIT_S = 12 * 3600
# The stage commands that read a run's shards, and whether each also reads the exported
# encoder: both are checked against their manifests before the command's work starts.
READS_ENCODER = {"train-lm": False, "train-classifier": True, "label-curve": True}


def _job(command: str, given: dict, work) -> dict:
    """Run `work()` as one job on a run directory: its parameters checked (`RunParams`), the
    directory held and its status kept in run.json (running, then complete, failed or
    stopped), the report written at the end. `given`: the job flow's own parameters, which
    are also what run.json records. A command refuses a directory another run holds; a run
    of a deployment waits for it (up to SCHEDULED_WAIT_S)."""
    set_up_process()  # the job's own lines (waiting for the directory) reach the run's logs
    params = RunParams(**given)
    record = {"command": command, **given}
    if "tokenizer" in given:
        record["tokenizer"] = params.settings().tokenizer.kind
    wait_s = SCHEDULED_WAIT_S if deployment.id else 0
    def check() -> None:
        if command in READS_ENCODER:
            for backwards in params.backwards:
                prep.check_inputs(params.out, backwards, READS_ENCODER[command])
        if command == "train-classifier":
            check_labels(params.out, params.preset, params.seed, params.train_labels)

    with tracked(params.out, record, params.reset, wait_s, check):
        result = work()
        metrics = for_run(report, RunDir(params.out))(params.out, record, params.seed)
    print(f"report: {located(params.out, RunDir('').report)}")
    return result if result is not None else metrics


@flow(name="ulmfit-preprocess-job", log_prints=True)
def preprocess_job(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                   seed: int = 0, dask_address: str | None = None, workers: int | None = None,
                   shard_docs: int = 2000, tokenizer: str | None = None,
                   vocab_size: int | None = None, text_column: str = "text",
                   label_column: str = "label", split_column: str = "split", id_column: str = "id",
                   test_share: float = TEST_SHARE, lang: str = "en", reset: bool = False) -> dict:
    """Preprocessing alone, as a run of its own (lock, status, report): what the `cpu` work
    pool runs on a schedule to keep token shards and vocab current."""
    given = dict(locals())
    return _job("preprocess", given, partial(
        preprocess_flow.with_options(task_runner=dask_task_runner(dask_address, workers)),
        out, data, preset, limit, seed, shard_docs, tokenizer, vocab_size, text_column,
        label_column, split_column, id_column, test_share, lang))


@flow(name="ulmfit-train-lm-job", log_prints=True)
def train_lm_job(out: str, preset: str = "tiny", seed: int = 0, pretrained: str = "none",
                 direction: str = "forward", dask_address: str | None = None,
                 train_resource: str | None = None, train_workers: int = 1,
                 reset: bool = False) -> dict:
    """Language-model fine-tuning and encoder export on a preprocessed run directory, as a run
    of its own."""
    given = dict(locals())
    return _job("train-lm", given, partial(
        train_lm_flow.with_options(
            task_runner=Training(dask_address, train_resource, train_workers).task_runner()),
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
        train_classifier_flow.with_options(
            task_runner=Training(dask_address, train_resource, train_workers).task_runner()),
        out, preset, seed, direction, train_resource, train_labels, train_workers, dask_address))


@flow(name="ulmfit-label-curve", log_prints=True)
def label_curve_flow(out: str, labels: list[str], preset: str = "tiny", seed: int = 0,
                     train_resource: str | None = None) -> dict:
    """One classifier per number of labelled reviews on the run's encoder (each a task, reused
    when done before), scored on the test split beside NB-LR on the same reviews."""
    settings, training, run = get_preset(preset), Training(resource=train_resource), RunDir(out)
    points = []
    for n in curve_points(labels):
        with training.chain() as chain:
            points.append(chain(for_run(train.label_curve_point, run.label_curve_point(n)).submit(
                out, settings, seed, n)))
    settled(points, "label curve")
    curve = for_run(train.write_label_curve, run)(out, [point.result() for point in points])
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
        label_curve_flow.with_options(task_runner=Training(dask_address, train_resource).task_runner()),
        out, labels, preset, seed, train_resource))


@flow(name="ulmfit", log_prints=True)
def ulmfit_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                seed: int = 0, dask_address: str | None = None, workers: int | None = None,
                shard_docs: int = 2000, tokenizer: str | None = None,
                vocab_size: int | None = None, text_column: str = "text",
                label_column: str = "label", split_column: str = "split", id_column: str = "id",
                test_share: float = TEST_SHARE, lang: str = "en", pretrained: str = "none",
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
        trainer = Training(dask_address, train_resource, train_workers).task_runner()
        preprocess_flow.with_options(task_runner=dask_task_runner(dask_address, workers))(
            out, data, preset, limit, seed, shard_docs, tokenizer, vocab_size, text_column,
            label_column, split_column, id_column, test_share, lang)
        check_labels(out, preset, seed, train_labels)
        train_lm_flow.with_options(task_runner=trainer)(out, preset, seed, pretrained, direction,
                                                        train_resource, train_workers, dask_address)
        train_classifier_flow.with_options(task_runner=trainer)(
            out, preset, seed, direction, train_resource, train_labels, train_workers, dask_address)

    return _job("run", given, work)


@flow(name="ulmfit-score", log_prints=True)
def score_flow(model: str, data: str, out: str, text_column: str = "text", id_column: str = "id",
               bs: int = 64) -> dict:
    """Every row of a dataset classified by a trained classifier: one task per input file, on
    the Dask workers, each writing that file's predictions under `out` (reused when the file
    and the model are unchanged); then score.json."""
    t0 = time.time()
    files, scored_by = scoring.list_inputs(data), scoring.scored_model(model)
    names = [name for _, name in files]
    gone = scoring.prune_outputs(out, names)
    if gone:
        print(f"removed the predictions of {len(gone)} files no longer in {data}")
    results = _as_done(scoring_tasks.score_file.map(
        unmapped(out), [str(path) for path, _ in files], names,
        unmapped(scored_by), unmapped(text_column), unmapped(id_column), unmapped(bs)),
        "scoring", "files scored")
    summary = scoring_tasks.summarize(out, data, scored_by, results, time.time() - t0)
    print(f"scored {summary['scored']} of {summary['rows']} rows in {len(files)} files "
          f"({summary['reused_files']} reused) into {out} with {scored_by['path']} "
          f"(sha256 {scored_by['sha256'][:12]})")
    return summary


@flow(name="ulmfit-score-job", log_prints=True)
def score_job(model: str, data: str, out: str, text_column: str = "text", id_column: str = "id",
              bs: int = 64, dask_address: str | None = None, workers: int | None = None) -> dict:
    """`ulmfit score` as a flow of its own, on the Dask cluster at `dask_address` (else a local
    one of `workers` processes): what a deployment schedules."""
    set_up_process()
    return score_flow.with_options(task_runner=dask_task_runner(dask_address, workers))(
        model, data, out, text_column, id_column, bs)
