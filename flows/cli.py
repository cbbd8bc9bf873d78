"""`ulmfit`: run the pipeline or one of its stages, predict, generate.

Bad input ends the command with exit status 2 and one line saying what is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Core modules log to "ulmfit"; Prefect forwards that logger to the run's logs in the UI.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ulmfit")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Arrow allocates with malloc here and in the Dask workers started from here (they inherit the
# environment): its default, mimalloc, keeps about 45 MB more per process for the small tables
# of a shard. It is read when pyarrow loads, so it is set before anything imports pyarrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from ulmfit_core.config import PRESETS, get_preset  # noqa: E402
from ulmfit_core.errors import BAD_INPUT, DataError  # noqa: E402
from ulmfit_core.ingest import check_source, resolve_source  # noqa: E402


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (created if missing)")


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help=f"model and schedule: {', '.join(PRESETS)}")
    p.add_argument("--seed", type=int, default=0)


def _add_dask_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dask-address", default=None,
                   help="tcp://HOST:PORT of a running Dask scheduler (default: a LocalCluster)")


def _add_direction(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--backwards", dest="direction", action="store_const", const="backward",
                       default="forward", help="train a backward LM and classifier (text reversed)")
    group.add_argument("--bidirectional", dest="direction", action="store_const",
                       const="bidirectional", help="train both directions and report each and "
                                                   "their averaged-probability ensemble")
    _add_dask_address(p)
    p.add_argument("--train-resource", default=None, metavar="NAME",
                   help="run training tasks on the Dask workers started with --resources NAME=1 "
                        "(e.g. GPU); needs --dask-address")


def _add_pretrained(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", default="none",
                   help="LM start: none, wt103 (fastai's WikiText-103 weights, downloaded), or a "
                        "folder/.pth with fastai's .pth weights and .pkl vocabulary")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="imdb",
                   help="'imdb' ($ULMFIT_IMDB or fastai's download), an aclImdb .tar.gz or folder, "
                        "or a .csv/.parquet file with a 'text' column")
    p.add_argument("--limit", type=int, default=None,
                   help="keep at most N documents per (split, label), chosen by the seed")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: cores)")
    p.add_argument("--shard-docs", type=int, default=2000, help="documents per shard")
    p.add_argument("--tokenizer", choices=["word", "subword"], default=None,
                   help="word: spaCy + fastai rules (default); subword: SentencePiece unigram")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="subword pieces to learn (default 10,000; 200 to 10,000 are typical)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ulmfit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="all stages: preprocess, LM, encoder, classifier, report")
    _add_run_dir(p), _add_data(p), _add_training(p), _add_pretrained(p), _add_direction(p)
    p = sub.add_parser("preprocess", help="ingest, tokenize, vocab, numericalize")
    _add_run_dir(p), _add_data(p), _add_training(p), _add_dask_address(p)
    p = sub.add_parser("train-lm", help="fine-tune the language model and export its encoder")
    _add_run_dir(p), _add_training(p), _add_pretrained(p), _add_direction(p)
    p = sub.add_parser("train-classifier", help="train the classifier and evaluate it")
    _add_run_dir(p), _add_training(p), _add_direction(p)

    p = sub.add_parser("predict", help="classify texts with a trained classifier")
    p.add_argument("--model", required=True, help="run directory or its classifier/ folder")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", help="CSV or Parquet file with a 'text' column")
    p.add_argument("--output", help="where to write --input's rows with predictions (.csv/.parquet)")
    p.add_argument("--bs", type=int, default=64)

    p = sub.add_parser("serve", help="serve the pipeline and preprocessing on their schedules "
                                      "from this process (one machine; see deployments/ for pools)")
    _add_run_dir(p), _add_data(p), _add_training(p), _add_dask_address(p)
    p.add_argument("--cron", default="0 2 * * *", help="schedule of the full pipeline (UTC)")
    p.add_argument("--preprocess-cron", default="0 * * * *",
                   help="schedule of preprocessing alone (UTC), keeping shards and vocab current")

    p = sub.add_parser("lineage", help="what made each artifact of a run, as a tree")
    p.add_argument("run", help="run directory")
    p.add_argument("--artifact", default=None,
                   help="start from this artifact (a path inside the run, e.g. classifier/model.pth)")
    p.add_argument("--json", action="store_true", help="print lineage.json instead")

    p = sub.add_parser("generate", help="continue a prompt with the fine-tuned language model")
    p.add_argument("--model", required=True, help="run directory or its lm/ folder")
    p.add_argument("prompt")
    p.add_argument("--words", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.75)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    return parser


def _run_flow(args: argparse.Namespace) -> int:
    from flows import pipeline
    from flows.runtime import prefect_api, training_runner
    from tasks.report import report
    from ulmfit_core.rundir import RunDir, tracked_run

    out = str(Path(args.out).resolve())
    with prefect_api():
        if args.command == "run":
            pipeline.ulmfit_flow(out, args.data, args.preset, args.limit, args.seed,
                                 args.dask_address, args.workers, args.shard_docs,
                                 args.tokenizer, args.vocab_size, args.pretrained, args.direction,
                                 args.train_resource)
            return 0
        if args.command == "preprocess":
            pipeline.preprocess_job(out, args.data, args.preset, args.limit, args.seed,
                                    args.dask_address, args.workers, args.shard_docs,
                                    args.tokenizer, args.vocab_size)
            return 0
        params = {"command": args.command, "preset": args.preset, "seed": args.seed, "out": out,
                  "direction": args.direction}
        trainer = training_runner(args.dask_address, args.train_resource)
        with tracked_run(RunDir(out), params):
            if args.command == "train-lm":
                pipeline.train_lm_flow.with_options(task_runner=trainer)(
                    out, args.preset, args.seed, args.pretrained, args.direction, args.train_resource)
            else:
                pipeline.train_classifier_flow.with_options(task_runner=trainer)(
                    out, args.preset, args.seed, args.direction, args.train_resource)
            report(out, params, args.seed)
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Both flows as served deployments with cron schedules, until interrupted."""
    from prefect import serve

    from flows import pipeline
    from flows.runtime import prefect_api

    out = str(Path(args.out).resolve())
    common = {"out": out, "data": args.data, "preset": args.preset, "limit": args.limit,
              "seed": args.seed, "dask_address": args.dask_address, "workers": args.workers,
              "shard_docs": args.shard_docs, "tokenizer": args.tokenizer,
              "vocab_size": args.vocab_size}
    with prefect_api() as api:
        print(f"serving on the Prefect API at {api}; Ctrl-C stops")
        serve(pipeline.ulmfit_flow.to_deployment(name="ulmfit-scheduled", cron=args.cron,
                                                 parameters=common, tags=["ulmfit"]),
              pipeline.preprocess_job.to_deployment(name="preprocess-scheduled",
                                                    cron=args.preprocess_cron,
                                                    parameters=common, tags=["ulmfit"]))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ulmfit_core.predict import Classifier

    if bool(args.texts) == bool(args.input):
        raise ValueError("predict: give texts, or --input FILE --output FILE")
    classifier = Classifier.load(args.model)
    if args.texts:
        probs = classifier.predict_texts(args.texts, args.bs)
        for text, p in zip(args.texts, probs):
            print(f"{classifier.labels[p.argmax()]}\t{p.max():.4f}\t{text}")
        return 0
    if not args.output:
        raise ValueError("predict: --input needs --output")
    from ulmfit_core.tables import read_table, write_table

    table = read_table(Path(args.input))
    if "text" not in table.column_names:
        raise DataError(f"{args.input}: no 'text' column (columns: {', '.join(table.column_names)})")
    texts = ["" if t is None else t for t in table.column("text").to_pylist()]
    probs = classifier.predict_texts(texts, args.bs)
    table = table.append_column("pred", [[classifier.labels[i] for i in probs.argmax(1)]])
    for j, label in enumerate(classifier.labels):
        table = table.append_column(f"p_{label}", [probs[:, j].tolist()])
    write_table(table, Path(args.output))
    print(f"wrote {table.num_rows} predictions to {args.output}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ulmfit_core.predict import LanguageModel

    lm = LanguageModel.load(args.model)
    for text in lm.generate(args.prompt, args.words, args.temperature, args.n, args.seed):
        print(text)
        print()
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from ulmfit_core.lineage import build_lineage, render_lineage
    from ulmfit_core.rundir import RunDir

    root = Path(args.run)
    if not (root / "raw" / "_ingest.json").exists():
        raise FileNotFoundError(f"{root}: not a run directory (no raw/_ingest.json)")
    lineage = build_lineage(RunDir(root.resolve()))
    print(json.dumps(lineage, indent=2) if args.json else render_lineage(lineage, args.artifact))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            get_preset(args.preset)
            check_source(resolve_source(args.data))
            return _serve(args)
        if args.command in ("run", "preprocess", "train-lm", "train-classifier"):
            get_preset(args.preset)  # fail before any server or cluster starts
            if getattr(args, "train_resource", None):
                from flows.runtime import training_runner

                training_runner(args.dask_address, args.train_resource)  # refuses a missing address
            if getattr(args, "direction", "forward") == "bidirectional" and getattr(args, "pretrained", "none") not in (
                    "none", "wt103"):
                raise ValueError("--bidirectional with --pretrained PATH: one folder holds one "
                                 "direction's weights; use wt103 or none")
            if args.command in ("run", "preprocess"):
                check_source(resolve_source(args.data))
            return _run_flow(args)
        return {"predict": _predict, "generate": _generate, "lineage": _lineage}[args.command](args)
    except BAD_INPUT as exc:
        print(f"ulmfit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
