"""The layout of a run directory and the atomic writes that keep it honest.

Everything a run produces lives under one folder:

    raw/part-00000.parquet      documents: id, split, label, text
    tokenizer/                  tokenizer.json (kind, language), spm.model for subwords
    tokens/part-00000.parquet   + tokens (list<string>), and counts-00000.parquet per shard
    ids/part-00000.parquet      + ids (list<int32>)
    vocab.json                  the vocabulary, a JSON list in index order
    preprocess.json             document, token and skip counts
    lm/                         language model weights, history, metrics (checkpoint.pth while
                                training: the last finished epoch, resumed by a restarted task)
    export/                     encoder + vocab + config, for the classifier and for reuse
    classifier/                 classifier weights, labels, history, metrics, test predictions,
                                NB-LR baseline (train-labels.json: the sample of --train-labels)
    lm-bwd/, export-bwd/, classifier-bwd/   the same for the backward direction
    ensemble.json               forward + backward classifiers, averaged probabilities
    label-curve/n100/ ...       `ulmfit label-curve`: a classifier folder per number of labels
    label-curve.json, .png      test accuracy by labelled reviews, ULMFiT and NB-LR
    metrics.json, report.md     the run's summary, written last
    run.json                    status: running / failed / stopped / complete
    logs/ulmfit.log             every log line of the commands run here, tracebacks included

A file appears under its final name only once fully written (write to a temporary name in the
same folder, then rename), so a crashed run never leaves a file that looks complete.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import DataError, DiskFull, RunInUse, Stopped, free_bytes, out_of_space

log = logging.getLogger("ulmfit")


# The files of a model folder (lm/, export/, classifier/ and their -bwd twins, label-curve/n*/).
MODEL, METRICS, CHECKPOINT = "model.pth", "metrics.json", "checkpoint.pth"
ENCODER, ENCODER_CONFIG = "encoder.pth", "config.json"
TEST_SCORES, PREDICTIONS, BASELINE = "test.json", "test-predictions.parquet", "baseline.json"
LABEL_SAMPLE = "train-labels.json"  # the reviews a classifier trained on few labels saw
# What makes a model folder self-contained: its vocab and the tokenizer that feeds it.
VOCAB, TOKENIZER_SPEC, SUBWORD_MODEL = "vocab.json", "tokenizer.json", "spm.model"
TEXT_ASSETS = (VOCAB, TOKENIZER_SPEC, SUBWORD_MODEL)


@dataclass(frozen=True)
class ModelDir:
    """A model folder (lm/, export/, classifier/, their -bwd twins, label-curve/n*/) and its files.
    It is a path (`os.PathLike`, and `folder / name`) wherever a folder is asked for."""

    path: Path

    model = property(lambda self: self.path / MODEL)
    metrics = property(lambda self: self.path / METRICS)
    checkpoint = property(lambda self: self.path / CHECKPOINT)
    encoder = property(lambda self: self.path / ENCODER)
    encoder_config = property(lambda self: self.path / ENCODER_CONFIG)
    test_scores = property(lambda self: self.path / TEST_SCORES)
    predictions = property(lambda self: self.path / PREDICTIONS)
    baseline = property(lambda self: self.path / BASELINE)
    label_sample = property(lambda self: self.path / LABEL_SAMPLE)
    vocab = property(lambda self: self.path / VOCAB)

    def existing(self, *files: Path) -> list[Path]:
        """Those of `files` and of the folder's text assets (vocab, tokenizer) that exist: what
        a stage that wrote them records in its manifest."""
        return [f for f in (*files, *(self.path / n for n in TEXT_ASSETS)) if f.exists()]

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


def model_folder(path: str | Path, sub: str) -> ModelDir:
    """The model folder `sub` (classifier, lm) of a run directory, or `path` itself when it is
    one: what `--model` of predict, generate and score accepts."""
    inside, given = ModelDir(Path(path) / sub), ModelDir(Path(path))
    for folder in (inside, given):
        if folder.vocab.exists():
            return folder
    raise FileNotFoundError(f"{path}: no {sub} model here (expected {inside.vocab})")


@dataclass(frozen=True)
class RunDir:
    """Paths of a run; with `backwards`, the model folders are those of the backward direction;
    with `classifier_dir` (a folder in the run), the classifier is that one (a point of the
    label curve)."""

    root: Path
    backwards: bool = False
    classifier_dir: str | None = None

    def __init__(self, root: str | os.PathLike, backwards: bool = False,
                 classifier_dir: str | None = None) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "backwards", backwards)
        object.__setattr__(self, "classifier_dir", classifier_dir)

    def direction(self, backwards: bool) -> "RunDir":
        return RunDir(self.root, backwards)

    def with_classifier(self, folder: str) -> "RunDir":
        return RunDir(self.root, self.backwards, folder)

    def label_curve_point(self, n: int | None) -> "RunDir":
        """The run whose classifier folder holds the label curve's point for `n` labelled
        reviews (`ulmfit label-curve`): label-curve/n<N>/, or classifier/ for all of them."""
        return self if n is None else self.with_classifier(f"label-curve/n{n}")

    def _model_dir(self, name: str) -> ModelDir:
        return ModelDir(self.root / (f"{name}-bwd" if self.backwards else name))

    raw = property(lambda self: self.root / "raw")
    ingest_summary = property(lambda self: self.raw / "_ingest.json")
    tokenizer = property(lambda self: self.root / "tokenizer")
    tokens = property(lambda self: self.root / "tokens")
    ids = property(lambda self: self.root / "ids")
    vocab = property(lambda self: self.root / VOCAB)
    preprocess_metrics = property(lambda self: self.root / "preprocess.json")
    lm = property(lambda self: self._model_dir("lm"))
    export = property(lambda self: self._model_dir("export"))
    classifier = property(lambda self: ModelDir(self.root / self.classifier_dir) if self.classifier_dir
                          else self._model_dir("classifier"))
    ensemble = property(lambda self: self.root / "ensemble.json")
    label_curve = property(lambda self: self.root / "label-curve.json")
    label_curve_plot = property(lambda self: self.root / "label-curve.png")
    metrics = property(lambda self: self.root / METRICS)
    report = property(lambda self: self.root / "report.md")
    curves = property(lambda self: self.root / "curves.png")
    lineage = property(lambda self: self.root / "lineage.json")
    status = property(lambda self: self.root / "run.json")
    log = property(lambda self: self.root / "logs" / "ulmfit.log")

    def rel(self, path: str | os.PathLike) -> str:
        """`path` relative to the run, as manifests and summaries record it (so that a run
        directory can be moved or copied and still be reused)."""
        return Path(path).relative_to(self.root).as_posix()

    def path(self, recorded: str | os.PathLike) -> Path:
        """The file a summary or manifest records (relative to the run, or absolute)."""
        return self.root / recorded

    def shards(self, folder: Path) -> list[Path]:
        """The finished data shards of a stage folder, in order."""
        return sorted(folder.glob("part-*.parquet"))

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the {stage} stage first")
        return path


def _new_temporary(path: Path) -> Path:
    """A new empty file beside `path`, made with the process's umask like any file a tool
    writes (`tempfile.mkstemp` makes 0600 files: colleagues could not read a shared run)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        if isinstance(exc, DiskFull) or not out_of_space(exc):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        raise DiskFull(f"{path}: no space left on its device ({_size(free_bytes(path.parent))} "
                       f"free without this file, {_size(written)} of which had been written): "
                       "free some space, or give another --out, then run the same command again "
                       "to resume") from None
    finally:
        tmp.unlink(missing_ok=True)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def run_lock(run: RunDir, wait_s: float = 0) -> Iterator[None]:
    """Hold the run directory for this process (an OS lock on `.lock`, freed when the process
    ends, also by a crash, so a crashed run can be resumed into the same directory). A
    directory another live process holds is refused, or with `wait_s` waited for that long."""
    run.root.mkdir(parents=True, exist_ok=True)
    path = run.root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                waited = f" (waited {wait_s:g} s)" if wait_s else ""
                raise RunInUse(f"{run.root} is in use by a run still going ({_holder(path)}){waited}: "
                               "wait for it to end, or give another --out") from None
            if not told:
                log.info("%s is in use by a run still going (%s): waiting up to %g s for it to end",
                         run.root, _holder(path), wait_s)
                told = True
            time.sleep(1)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(lock: Path) -> str:
    """Which process holds a run directory, as its lock file says."""
    return lock.read_text(encoding="utf-8").strip() or "another process"


# The parameters that shape a run directory's artifacts (vocab, model sizes, splits). Two
# schedules writing one directory with different values would rebuild each other's work forever.
SHAPING = ("preset", "tokenizer", "vocab_size", "seed", "lang", "text_column", "label_column",
           "split_column", "id_column", "test_share")


def made_with(run: RunDir) -> dict:
    """The shaping settings the run directory was made with ({} for a new directory)."""
    return read_json(run.status).get("settings", {}) if run.status.exists() else {}


def _check_settings(run: RunDir, params: dict, reset: bool) -> dict:
    """The directory's shaping settings after this run; refuses a change unless `reset`."""
    previous = made_with(run)
    asked = {k: params[k] for k in SHAPING if k in params}
    clash = [k for k, v in asked.items() if k in previous and previous[k] != v]
    if clash and not reset:
        def listed(values: dict) -> str:
            return ", ".join(f"{k} {values[k]!r}" for k in clash)

        raise DataError(f"{run.root} holds a run made with {listed(previous)}; this run asks for "
                        f"{listed(asked)}: give another --out, or --reset to rebuild it with the "
                        "new settings")
    return {**previous, **asked}


def mark_stopped(run: RunDir, why: str) -> None:
    """Mark the run this process holds stopped, for `why`: what ended it from outside the block
    that tracks it (the command ends without getting back to it, or that block saw only the
    error the cause led to)."""
    status = read_json(run.status) if run.status.exists() else {}
    if status.get("pid") == os.getpid() and status.get("status") != "complete":
        write_json(run.status, {**status, "status": "stopped", "error": why,
                                "seconds": time.time() - status["started"]})


def _say_if_died(run: RunDir) -> None:
    """An earlier run that left run.json `running` ended without a word (killed, or its machine
    lost): the lock it held is free, so its process is gone. Say so, rather than trust it."""
    earlier = read_json(run.status) if run.status.exists() else {}
    if earlier.get("status") != "running":
        return
    who = f"pid {earlier['pid']} on {earlier['host']}" if "pid" in earlier else "its process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(earlier.get("started", 0)))
    log.warning("%s: the run started %s died without finishing (%s is gone); what it finished, "
                "checkpoints included, is reused", run.root, when, who)


@contextmanager
def tracked_run(run: RunDir, params: dict, reset: bool = False, wait_s: float = 0,
                check=lambda: None, lock=run_lock, publish=lambda *paths: None) -> Iterator[RunDir]:
    """Hold the run directory (waiting up to `wait_s` for another run to end), mark it running,
    then complete, failed or stopped; drop the old summary while it runs. A run whose shaping
    settings (`SHAPING`) differ from those the directory was made with is refused unless `reset`,
    and so is one whose `check()` raises (what it reads is damaged): before anything changes.

    metrics.json and report.md are the marks of a finished run, so they are removed first and
    only written again by a run that gets to its end. `lock(run, wait_s)` holds the directory;
    `publish(*paths)` is told of each status file written or removed (a run on object storage
    writes them back at once: `runstore.tracked`).
    """
    with lock(run, wait_s):
        settings = _check_settings(run, params, reset)
        check()
        _say_if_died(run)
        for stale in (run.metrics, run.report):
            stale.unlink(missing_ok=True)
        publish(run.metrics, run.report)
        started = time.time()
        status = {"status": "running", "params": params, "settings": settings, "started": started,
                  "pid": os.getpid(), "host": socket.gethostname()}
        publish(write_json(run.status, status))
        try:
            yield run
        except BaseException as exc:
            # An interruption (Ctrl-C, a termination signal) or a stop on request is not a failure:
            # rerunning the same command resumes from the checkpoints.
            stopped = isinstance(exc, Stopped) or not isinstance(exc, Exception)
            publish(write_json(run.status, {**status, "status": "stopped" if stopped else "failed",
                                            "error": f"{type(exc).__name__}: {exc}".rstrip(": "),
                                            "seconds": time.time() - started}))
            raise
        publish(write_json(run.status, {**status, "status": "complete", "seconds": time.time() - started}))
