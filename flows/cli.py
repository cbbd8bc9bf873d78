"""`ulmfit`: run the pipeline or one of its stages, predict, generate.

Bad input ends the command with exit status 2 and one line saying what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path

# Nothing imported here may start a thread (NumPy's OpenBLAS does as it loads): the commands
# that run flows block SIGTERM first, in a process of one thread (`_stop_on_signals`).
from typing import get_args

from pydantic import BaseModel

from ulmfit_core.config import TOKENIZERS
from ulmfit_core.errors import BAD_INPUT, STOP, DataError
from ulmfit_core.run.job import COMMANDS, Job, ScoreJob, at_least, option


def _prefect_settings() -> None:
    """Settings of this command's process, read when it loads Prefect: no warning for the log
    lines of `predict` or `generate` outside a flow run, and no usage data sent by Prefect's
    client or the temporary server a run may start (an error logged where there is no
    network). Set them in the environment to choose otherwise."""
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


# How a field of a job spec looks on the command line, where argparse's plain `--name VALUE`
# does not fit (the field's type, default and description come from the spec).
_FORM = {
    "reset": {"action": "store_true"},
    "labels": {"nargs": "+", "required": True, "metavar": "N"},
    "tokenizer": {"choices": TOKENIZERS},
    **{name: {"metavar": "N"} for name in ("train_workers", "train_labels", "lm_epochs")},
    **{name: {"metavar": "NAME"} for name in ("train_resource", "text_column", "label_column",
                                               "split_column", "id_column")},
    "test_share": {"metavar": "F"},
}


def _add_fields(p: argparse.ArgumentParser, spec: type[BaseModel], names, **defaults) -> None:
    """An option for each field of `spec` named (`job.COMMANDS`): `--shard-docs N` for
    `shard_docs`, with the field's description as its help and its default (or, for a field in
    `defaults`, (value, what it means)); the columns of a table source in a group of their own,
    the direction as two flags."""
    columns = None
    for name in names:
        field = spec.model_fields[name]
        if name == "direction":
            _add_direction(p)
            continue
        form = {"help": field.description, **_FORM.get(name, {})}
        if name in defaults:
            form["default"], meaning = defaults[name]
            form["help"] += f" (default: {meaning})"
        form.setdefault("required", True) if field.is_required() else form.setdefault("default", field.default)
        if "action" not in form and "nargs" not in form:
            form["type"] = next(t for t in (int, float, str) if t in (field.annotation, *get_args(field.annotation)))
        if name.endswith("_column"):
            columns = columns or p.add_argument_group("columns of a .csv/.parquet source")
            columns.add_argument(option(name), **form)
        else:
            p.add_argument(option(name), **form)


def _add_direction(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--backwards", dest="direction", action="store_const", const="backward",
                       default=Job.model_fields["direction"].default,
                       help="train a backward LM and classifier (text reversed)")
    group.add_argument("--bidirectional", dest="direction", action="store_const",
                       const="bidirectional", help="train both directions and report each and "
                                                   "their averaged-probability ensemble")


class _Defaults(argparse.HelpFormatter):
    """Each option's default said once, where it means something: not for a flag, a required
    option or an unset value, nor where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or action.nargs == 0
                or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ulmfit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = partial(sub.add_parser, formatter_class=_Defaults)

    for command, about in (
            ("run", "all stages: preprocess, LM, encoder, classifier, report"),
            ("preprocess", "ingest, tokenize, vocab, numericalize"),
            ("train-lm", "fine-tune the language model and export its encoder"),
            ("train-classifier", "train the classifier and evaluate it"),
            ("label-curve", "what labels buy: a classifier per number of labelled reviews on "
                            "the run's encoder, beside NB-LR")):
        made_with = {"preset": (None, "the one the run was made with")} if command == "label-curve" else {}
        _add_fields(sub.add_parser(command, help=about), Job, COMMANDS[command], **made_with)

    p = sub.add_parser("predict", help="classify texts with a trained classifier")
    p.add_argument("--model", required=True, help="run directory or its classifier/ folder")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", help="CSV or Parquet file with a text column")
    p.add_argument("--output", help="where to write --input's rows with predictions (.csv/.parquet)")
    _add_fields(p, ScoreJob, ("text_column", "bs"))  # as `score` reads a file

    p = sub.add_parser("score", help="classify every row of a dataset on the Dask workers, one "
                                      "task per file; a rerun scores only new or changed files")
    _add_fields(p, ScoreJob, ScoreJob.model_fields)

    p = sub.add_parser("serve", help="serve the pipeline and preprocessing on their schedules "
                                      "from this process (one machine; see deployments/ for pools)")
    _add_fields(p, Job, COMMANDS["serve"])
    p.add_argument("--cron", default="0 2 * * *", help="schedule of the full pipeline (UTC)")
    p.add_argument("--preprocess-cron", default="0 * * * *",
                   help="schedule of preprocessing alone (UTC), keeping shards and vocab current")

    p = sub.add_parser("lineage", help="what made each artifact of a run, as a tree")
    p.add_argument("run", help="run directory")
    p.add_argument("--artifact", default=None,
                   help="start from this artifact (a path inside the run, e.g. classifier/model.pth)")
    p.add_argument("--json", action="store_true", help="print lineage.json instead")

    p = sub.add_parser("show-batch", help="the first training batch of a run, decoded: what the "
                                          "language model or the classifier sees")
    p.add_argument("run", help="run directory (preprocessed)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--lm", dest="kind", action="store_const", const="lm", default="lm",
                      help="language-model rows: input x and target y, one token later")
    kind.add_argument("--classifier", dest="kind", action="store_const", const="classifier",
                      help="classifier rows: the review with its front padding, and its label")
    p.add_argument("--n", type=int, default=3, help="rows to show")
    p.add_argument("--preset", default=None,
                   help="the preset that shapes the batches (default: the one the run was made with)")
    p.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    p.add_argument("--backwards", action="store_true", help="the backward direction's batches")

    p = sub.add_parser("generate", help="continue a prompt with the fine-tuned language model")
    p.add_argument("--model", required=True, help="run directory or its lm/ folder")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--words", type=int, default=40, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.75,
                   help="> 0; lower is more predictable, higher more varied")
    p.add_argument("--n", type=int, default=1, help="continuations to generate")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the sampling (default: different every time)")
    return parser


def job_spec(args: argparse.Namespace) -> Job:
    """The job this command runs, from its options (checked on construction)."""
    given = {k: v for k, v in vars(args).items() if k in Job.model_fields}
    if given.get("preset", "") is None:  # label-curve: the preset the run was made with
        from ulmfit_core.run.layout import RunDir
        from ulmfit_core.run.status import made_with
        from ulmfit_core.run.store import local_copy

        with local_copy(args.out, ["run.json"], write_back=False) as out:
            given["preset"] = made_with(RunDir(out)).get("preset") or Job.model_fields["preset"].default
    return Job(**{**given, "out": _location(args.out)})


def _location(path: str) -> str:
    """A folder or file as the command's tasks take it: an s3:// URL as given, a path absolute."""
    from ulmfit_core.run.storage import is_url

    return path if is_url(path) else str(Path(path).resolve())


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM ask this command to stop (`STOP`), which its work does at the
    next step it takes: a training after its current batch, ingest after its current document,
    the wait for shard tasks within a second, any task as it starts. The run is then marked
    stopped and the exit status is 128 + the signal's number. No exception is raised into
    whatever the main thread runs: one raised inside a library's callback comes out as another
    error (pydantic's serializers wrap it) or is lost (a garbage collector's callback). SIGTERM
    is taken by a thread of its own (`sigwait`, the signal blocked in every other thread), since
    Prefect sets a SIGTERM handler of its own, raising into the flow, while a flow runs; this
    must be called while the process has one thread."""
    STOP.clear()

    def relay_sigterm():
        while True:
            signal.sigwait({signal.SIGTERM})
            STOP.request("SIGTERM")

    signal.signal(signal.SIGINT, lambda signum, frame: STOP.request("SIGINT"))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=relay_sigterm, name="sigterm", daemon=True).start()


def _stopped_by() -> signal.Signals | None:
    """The signal this command was asked to stop by, if any (`STOP` also records other causes)."""
    return signal.Signals[STOP.why] if STOP.why in ("SIGINT", "SIGTERM") else None


def _run_job(job: Job, command: str) -> int:
    from flows import pipeline

    return _run_flow(pipeline.JOBS[command], job)


def _run_flow(flow, job: Job | ScoreJob, kept: str | None = None) -> int:
    """Run the flow `flow(job)` with its Prefect API (and the watch on it), its run log in
    `job.out`, and the stops of `_stop_on_signals`; a stop says what `job.out` keeps (`kept`: by
    default a run's shards and epochs) for the same command to resume from."""
    from flows.api import API_LOST, KEPT, ApiWatch, prefect_api
    from flows.console import bars_with_logs, tracebacks_to_file
    from ulmfit_core.run.layout import RunDir
    from ulmfit_core.run.status import stop_marked
    from ulmfit_core.run.store import local_copy, located

    bars_with_logs()
    # The clusters a run starts here log every worker's arrival and departure at INFO: keep
    # their warnings only, on the terminal and in the run's log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    watch, kept, out = None, kept or KEPT, job.out
    try:
        with local_copy(out, ["logs"]) as logs, tracebacks_to_file(RunDir(logs).log, located(out, RunDir("").log)), \
                prefect_api() as api, ApiWatch(api, out, kept) as watch:
            flow(job)
    except Exception:
        how = _stopped_by()
        if how is not None:
            stop_marked(out, f"stopped by {how.name}")  # whatever error the stop surfaced as
            print(f"ulmfit: stopped ({how.name}); {out} keeps what was finished ({kept}): "
                  "run the same command again to resume", file=sys.stderr)
            return 128 + how.value
        if watch is not None and watch.lost is not None:
            stop_marked(out, watch.lost)  # what the API's loss led to is not the story
            print(f"ulmfit: {watch.lost}", file=sys.stderr)
            return API_LOST
        raise
    return 0


def _serve(job: Job, args: argparse.Namespace) -> int:
    """Both flows as served deployments with cron schedules, until Ctrl-C (a KeyboardInterrupt
    in Prefect's runner) or SIGTERM (the runner's own graceful shutdown: its flow runs, started
    with the signal unblocked, get it too)."""
    import asyncio

    from prefect.runner import Runner
    from prefect.types.entrypoint import EntrypointType

    from flows import pipeline
    from flows.api import prefect_api

    given = {"job": job.model_dump(mode="json", include=set(COMMANDS["serve"]))}
    # Flow runs import the flows as the package module (flows.pipeline), as the work-pool
    # deployments do: what Dask workers unpickle then imports the same way.
    by_module = EntrypointType.MODULE_PATH
    def on_sigint(signum, frame):
        STOP.request("SIGINT")
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    runner = Runner(pause_on_shutdown=True)
    with prefect_api() as api:
        runner.add_deployment(pipeline.ulmfit_flow.to_deployment(
            name="ulmfit-scheduled", cron=args.cron, parameters=given, tags=["ulmfit"],
            entrypoint_type=by_module))
        runner.add_deployment(pipeline.preprocess_job.to_deployment(
            name="preprocess-scheduled", cron=args.preprocess_cron, parameters=given,
            tags=["ulmfit"], entrypoint_type=by_module))
        print(f"serving on the Prefect API at {api}; Ctrl-C stops")
        try:
            asyncio.run(runner.start())
        except KeyboardInterrupt:
            pass
    if runner.stopping:
        STOP.request("SIGTERM")
    how = _stopped_by()
    if how is None:
        return 0
    print(f"ulmfit: stopped serving ({how.name}); a run it had started resumes from "
          f"{job.out} with the next one", file=sys.stderr)
    return 128 + how.value


def _check_predict(args: argparse.Namespace) -> None:
    from ulmfit_core.text.tables import check_output

    at_least("--bs", args.bs, 1)
    if bool(args.texts) == bool(args.input):
        raise DataError("predict: give texts, or --input FILE --output FILE")
    if args.texts and args.output:
        raise DataError("predict: --output writes the rows of --input; plain texts are printed")
    if args.input and not args.output:
        raise DataError("predict: --input needs --output")
    if args.output:
        check_output(Path(args.output))
    if args.input and not Path(args.input).exists():
        raise FileNotFoundError(f"{args.input}: no such file")


def _predict(args: argparse.Namespace) -> int:
    from ulmfit_core.model.predict import Classifier

    _check_predict(args)
    classifier = Classifier.load(args.model)
    if args.texts:
        probs, skipped = classifier.predict_raw(args.texts, args.bs)
        for i, (text, p, why) in enumerate(zip(args.texts, probs, skipped), 1):
            if why:
                print(f"ulmfit: text {i} skipped ({why}): no label", file=sys.stderr)
            else:
                print(f"{classifier.labels[p.argmax()]}\t{p.max():.4f}\t{text}")
        if all(skipped):
            raise DataError("predict: nothing to classify (every text is empty)")
        return 0
    from ulmfit_core.stages.scoring import predict_file

    rows, counts = predict_file(classifier, Path(args.input), Path(args.output), args.text_column, args.bs)
    if counts:
        print(f"ulmfit: skipped {sum(counts.values())} of {rows} rows ("
              + ", ".join(f"{why}: {n}" for why, n in sorted(counts.items())) + ")", file=sys.stderr)
    print(f"wrote {rows} rows, {rows - sum(counts.values())} predictions, "
          f"to {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    """`ulmfit score`: its options and inputs checked before any server or cluster starts."""
    _stop_on_signals()  # before NumPy loads (below), while this process has one thread
    from flows import pipeline
    from ulmfit_core.run.storage import is_url
    from ulmfit_core.stages import scoring

    data = args.data if is_url(args.data) else os.path.abspath(os.path.expanduser(args.data))
    job = ScoreJob(**{**{k: getattr(args, k) for k in ScoreJob.model_fields}, "data": data,
                      "model": _location(args.model), "out": _location(args.out)})
    scoring.list_inputs(job.data), scoring.scored_model(args.model)
    return _run_flow(pipeline.score_job, job, kept="the files scored")


def _generate(args: argparse.Namespace) -> int:
    from ulmfit_core.model.predict import LanguageModel

    for name in ("words", "n"):
        at_least(f"--{name}", getattr(args, name), 1)
    if not args.temperature > 0:
        raise DataError(f"--temperature must be > 0, got {args.temperature}")
    lm = LanguageModel.load(args.model)
    for text in lm.generate(args.prompt, args.words, args.temperature, args.n, args.seed):
        print(text)
        print()
    return 0


def _show_batch(args: argparse.Namespace) -> int:
    from ulmfit_core.config import get_preset
    from ulmfit_core.reporting.show import first_batch, format_batch
    from ulmfit_core.run.layout import RunDir
    from ulmfit_core.run.status import made_with
    from ulmfit_core.run.store import local_copy
    from ulmfit_core.stages import check_inputs

    at_least("--n", args.n, 1)
    with local_copy(args.run, [""], write_back=False) as root:
        run = RunDir(Path(root), args.backwards)
        made = made_with(run)
        preset, seed = args.preset or made.get("preset"), made.get("seed", 0) if args.seed is None else args.seed
        if preset is None:
            raise DataError(f"{run.root}: its run.json does not record the preset that made it: give --preset")
        check_inputs(run, encoder=False)
        print(format_batch(first_batch(run, get_preset(preset), seed, args.kind, args.n)))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from ulmfit_core.run.layout import RunDir
    from ulmfit_core.run.lineage import build_lineage, render_lineage
    from ulmfit_core.run.store import local_copy

    with local_copy(args.run, [""], write_back=False) as root:
        if not RunDir(root).ingest_summary.exists():
            raise FileNotFoundError(f"{root}: not a run directory (no raw/_ingest.json)")
        lineage = build_lineage(RunDir(Path(root).resolve()), args.run if root != args.run else None)
    print(json.dumps(lineage, indent=2) if args.json else render_lineage(lineage, args.artifact))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_settings()
    try:
        if args.command in ("run", "preprocess", "train-lm", "train-classifier", "label-curve", "serve"):
            if args.command != "serve":
                _stop_on_signals()  # while this process has one thread: all later ones block SIGTERM
            job = job_spec(args)  # every option checked before any server or cluster starts
            if "data" in COMMANDS[args.command]:
                from ulmfit_core.text.sources import check_source, open_source

                check_source(open_source(job.data), job.columns())
            return _serve(job, args) if args.command == "serve" else _run_job(job, args.command)
        return {"predict": _predict, "generate": _generate, "lineage": _lineage,
                "show-batch": _show_batch, "score": _score}[args.command](args)
    except BAD_INPUT as exc:
        print(f"ulmfit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
