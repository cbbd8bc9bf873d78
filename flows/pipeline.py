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
from itertools import groupby

from prefect import flow, unmapped
from prefect.runtime import deployment

from tasks import preprocess as prep
from tasks import score as scoring_tasks
from tasks import train
from tasks.common import for_run, progress_artifact, set_up_process
from tasks.report import report
from ulmfit_core.config import EXPECTED
from ulmfit_core.progress import Bar
from ulmfit_core.run.job import Job, ScoreJob, curve_points
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.status import tracked
from ulmfit_core.run.store import located
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
def preprocess_flow(job: Job) -> dict:
    """Raw shards (a test split held out when the corpus has none) → (subword model) → token
    shards (in parallel) → vocab → id shards (in parallel)."""
    out, settings, run, t0 = job.out, job.settings, RunDir(job.out), time.time()
    plan = prep.plan_ingest(out, job.data, job.limit, job.seed, job.shard_docs, job.columns(),
                            job.test_share)
    ingested = plan.done or _ingest(out, run, plan)
    parts = ingested.get("files", [])
    n_files = len({part["file"] for part in parts})
    read = (f" from {n_files} files" if n_files > 1 else "") + (f" in {len(parts)} parts" if len(parts) > n_files else "")
    print(f"ingested {ingested['docs']} documents{read} into {len(ingested['shards'])} shards "
          f"(skipped {ingested['skipped']['total']})")
    if ingested["test_split"]["from"] == "held out":
        print(f"no labelled test split: held out {job.test_share:.0%} of each label's train documents "
              f"as test ({', '.join(f'{y} {n}' for y, n in ingested['test_split']['docs'].items())})")
    for_run(prep.train_tokenizer, run).submit(out, settings, job.seed).result()
    tokenized = _as_done(for_run(prep.tokenize_shard, run).map(
        unmapped(out), ingested["shards"], unmapped(settings)), "tokenization", "shards tokenized")
    vocab = for_run(prep.build_vocab, run).submit(out, settings, [r["counts"] for r in tokenized]).result()
    print(f"vocab: {vocab['size']} entries from {vocab['distinct_tokens']} distinct tokens")
    numericalized = _as_done(for_run(prep.numericalize_shard, run).map(
        unmapped(out), [r["shard"] for r in tokenized]), "numericalization", "shards numericalized")
    return prep.summarize(out, tokenized, numericalized, vocab, time.time() - t0)


def _chains(job: Job, training: Training, first, then, what: str) -> dict:
    """For each direction of `job`, the chain of two training tasks: `first(run)` submitted,
    then `then(run, its future)`; once all are done, {backwards: (first's, then's result)}."""
    futures = {}
    for backwards in job.backwards:
        run = RunDir(job.out, backwards)
        with training.chain() as chain:
            started = chain(first(run))
            futures[backwards] = started, chain(then(run, started))
    settled([f for pair in futures.values() for f in pair], what)  # side by side: still going
    return {backwards: (a.result(), b.result()) for backwards, (a, b) in futures.items()}


@flow(name="ulmfit-train-lm", log_prints=True)
def train_lm_flow(job: Job) -> dict:
    """For each direction: fine-tune the language model on all the text (from pretrained weights
    when given), then export its encoder."""
    out, training = job.out, Training.of(job)
    done = _chains(job, training, lambda run: for_run(train.train_lm, run).submit(
        out, job.settings, job.seed, job.pretrained, run.backwards, training.ranks),
        lambda run, lm: for_run(train.export_encoder, run).submit(out, run.backwards, wait_for=[lm]),
        "language model")
    results = {}
    for backwards, (metrics, _) in done.items():
        name = train.direction_name(backwards)
        print(f"{name} language model: valid loss {metrics['valid_loss']:.4f}, accuracy "
              f"{metrics['accuracy']:.4f}, perplexity {metrics['perplexity']:.2f} "
              f"(host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
        results[name] = metrics
    return results


@flow(name="ulmfit-train-classifier", log_prints=True)
def train_classifier_flow(job: Job) -> dict:
    """For each direction: gradual unfreezing on the labelled train split (or a balanced sample of
    `train_labels` of its reviews), then accuracy on the test split; then, for both directions,
    the ensemble of their averaged probabilities, and the classical NB-LR baseline trained on
    the same reviews."""
    out, training = job.out, Training.of(job)
    done = _chains(job, training, lambda run: for_run(train.train_classifier, run).submit(
        out, job.settings, job.seed, run.backwards, job.train_labels, training.ranks),
        lambda run, trained: for_run(train.evaluate, run).submit(
            out, run.backwards, training.ranks, wait_for=[trained]), "classifier")
    results = {}
    for backwards, (metrics, test) in done.items():
        name = train.direction_name(backwards)
        results[name] = test
        if test["accuracy"] is not None:
            print(f"{name} classifier: test accuracy {test['accuracy']:.4f} on {test['n']} reviews "
                  f"(trained on host {metrics['host']}, {metrics['device']}, {metrics['precision']})")
    if all(r["accuracy"] is None for r in results.values()):
        return results  # no labelled test split to compare on
    run = RunDir(out, job.backwards[0])
    if job.direction == "bidirectional":
        results["ensemble"] = for_run(train.ensemble, run)(out)["ensemble"]
        print(f"forward + backward ensemble: test accuracy {results['ensemble']['accuracy']:.4f}")
    base = for_run(train.baseline, run)(out, run.backwards)
    print(f"NB-LR baseline on the same split: {base['accuracy']:.4f}")
    return results


def check_labels(job: Job) -> None:
    """The labelled data checked before any training starts (`stages.check_classifier_data`)."""
    labelled = prep.check_classifier_data(job.out, job.settings, job.seed, job.train_labels)
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


def _held(command: str, job: Job, work) -> dict:
    """Run `work()` as one job on a run directory: the directory held and its status kept in
    run.json (running, then complete, failed or stopped, with what `job.record` says of the
    command), the report written at the end. A command refuses a directory another run holds;
    a run of a deployment waits for it (up to SCHEDULED_WAIT_S)."""
    set_up_process()  # the job's own lines (waiting for the directory) reach the run's logs
    record = job.record(command)
    wait_s = SCHEDULED_WAIT_S if deployment.id else 0

    def check() -> None:
        if command in READS_ENCODER:
            for backwards in job.backwards:
                prep.check_inputs(job.out, backwards, READS_ENCODER[command])
        if command == "train-classifier":
            check_labels(job)

    with tracked(job.out, record, job.reset, wait_s, check):
        result = work()
        if command != "preprocess" and False in job.backwards:  # a backward LM writes right to left
            # Here, after the trainings: text generation in this process would slow a training
            # that follows in one of its threads (about 2x, measured on 2 cores).
            for_run(train.samples, RunDir(job.out))(job.out, job.seed)
        metrics = for_run(report, RunDir(job.out))(job.out, record)
    print(f"report: {located(job.out, RunDir('').report)}")
    return result if result is not None else metrics


@flow(name="ulmfit-preprocess-job", log_prints=True)
def preprocess_job(job: Job) -> dict:
    """Preprocessing alone, as a run of its own (lock, status, report): what the `cpu` work
    pool runs on a schedule to keep token shards and vocab current."""
    runner = dask_task_runner(job.dask_address, job.workers)
    return _held("preprocess", job, lambda: preprocess_flow.with_options(task_runner=runner)(job))


@flow(name="ulmfit-train-lm-job", log_prints=True)
def train_lm_job(job: Job) -> dict:
    """Language-model fine-tuning and encoder export on a preprocessed run directory, as a run
    of its own."""
    runner = Training.of(job).task_runner()
    return _held("train-lm", job, lambda: train_lm_flow.with_options(task_runner=runner)(job))


@flow(name="ulmfit-train-classifier-job", log_prints=True)
def train_classifier_job(job: Job) -> dict:
    """Classifier training and evaluation on a run directory with its encoder(s), as a run of
    its own."""
    runner = Training.of(job).task_runner()
    return _held("train-classifier", job, lambda: train_classifier_flow.with_options(task_runner=runner)(job))


@flow(name="ulmfit-label-curve", log_prints=True)
def label_curve_flow(job: Job) -> dict:
    """One classifier per number of labelled reviews on the run's encoder (each a task, reused
    when done before), scored on the test split beside NB-LR on the same reviews."""
    out, settings, training, run = job.out, job.settings, Training.of(job), RunDir(job.out)
    points = []
    for n in curve_points(job.labels or ()):
        with training.chain() as chain:
            points.append(chain(for_run(train.label_curve_point, run.label_curve_point(n)).submit(
                out, settings, job.seed, n)))
    settled(points, "label curve")
    curve = for_run(train.write_label_curve, run)(out, [point.result() for point in points])
    for point in curve["points"]:
        print(f"{point['labels']} labelled reviews: ULMFiT {point['ulmfit']:.4f}, NB-LR "
              f"{point['nblr']:.4f} on {point['test_reviews']} test reviews")
    return curve


@flow(name="ulmfit-label-curve-job", log_prints=True)
def label_curve_job(job: Job) -> dict:
    """The label curve on a run directory with its encoder, as a run of its own."""
    runner = Training.of(job).task_runner()
    return _held("label-curve", job, lambda: label_curve_flow.with_options(task_runner=runner)(job))


@flow(name="ulmfit", log_prints=True)
def ulmfit_flow(job: Job) -> dict:
    """The whole recipe, from a corpus to a report. With `train_resource` (and a Dask cluster
    whose training workers declare it, e.g. `dask worker --resources GPU=1`), training runs on
    those workers while tokenization runs anywhere; with `train_workers` N, each training is
    spread over N of them (data-parallel ranks)."""
    def work() -> None:
        print(f"preset {job.preset}: {EXPECTED[job.preset]}")
        preprocess_flow.with_options(task_runner=dask_task_runner(job.dask_address, job.workers))(job)
        check_labels(job)
        trainer = Training.of(job).task_runner()
        train_lm_flow.with_options(task_runner=trainer)(job)
        train_classifier_flow.with_options(task_runner=trainer)(job)

    return _held("run", job, work)


# The flow each pipeline command runs.
JOBS = {"run": ulmfit_flow, "preprocess": preprocess_job, "train-lm": train_lm_job,
        "train-classifier": train_classifier_job, "label-curve": label_curve_job}


@flow(name="ulmfit-score", log_prints=True)
def score_flow(job: ScoreJob) -> dict:
    """Every row of a dataset classified by a trained classifier: one task per input file (per
    run of row groups of a large Parquet file, whose parts are then joined), on the Dask
    workers, each writing that file's predictions under `out` (reused when the file and the
    model are unchanged); then score.json."""
    t0, out = time.time(), job.out
    files, scored_by = scoring.list_inputs(job.data), scoring.scored_model(job.model)
    gone = scoring.prune_outputs(out, [name for _, name in files])
    if gone:
        print(f"removed the predictions of {len(gone)} files no longer in {job.data}")
    plan = scoring.plan_scoring(files)
    scored = _as_done(scoring_tasks.score_file.map(
        unmapped(out), plan, unmapped(scored_by), unmapped(job.text_column), unmapped(job.id_column),
        unmapped(job.bs)), "scoring", "files (or parts) scored")
    results = []
    for _, done in groupby(zip(plan, scored), key=lambda d: d[0].name):  # the plan is by file
        parts, outcomes = map(list, zip(*done))
        results.append(outcomes[0] if parts[0].part is None else scoring_tasks.join_parts(
            out, parts, scored_by, outcomes, job.text_column, job.id_column))
    summary = scoring_tasks.summarize(out, job.data, scored_by, results, time.time() - t0)
    print(f"scored {summary['scored']} of {summary['rows']} rows in {len(files)} files "
          f"({summary['reused_files']} reused) into {out} with {scored_by['path']} "
          f"(sha256 {scored_by['sha256'][:12]})")
    return summary


@flow(name="ulmfit-score-job", log_prints=True)
def score_job(job: ScoreJob) -> dict:
    """`ulmfit score` as a flow of its own, on the Dask cluster at `dask_address` (else a local
    one of `workers` processes): what a deployment schedules."""
    set_up_process()
    return score_flow.with_options(task_runner=dask_task_runner(job.dask_address, job.workers))(job)
