"""The layout of a run directory and the atomic writes that keep it honest.

Everything a run produces lives under one folder:

    raw/part-00000.parquet      documents: id, split, label, text
    tokenizer/                  tokenizer.json (kind, language), spm.model for subwords
    tokens/part-00000.parquet   + tokens (list<string>), and counts-00000.parquet per shard
    ids/part-00000.parquet      + ids (list<int32>)
    vocab.json                  the vocabulary, a JSON list in index order
    preprocess.json             document, token and skip counts
    lm/                         language model weights, history, metrics (checkpoint.pth while
                                training: the last finished epoch, resumed by a restarted task),
                                preview.json (its first batch, decoded), samples.json (two
                                continuations of a prompt)
    export/                     encoder + vocab + config, for the classifier and for reuse
    classifier/                 classifier weights, labels, history, metrics, preview.json, test
                                predictions, NB-LR baseline (train-labels.json: the sample of
                                --train-labels)
    lm-bwd/, export-bwd/, classifier-bwd/   the same for the backward direction
    ensemble.json               forward + backward classifiers, averaged probabilities
    label-curve/n100/ ...       `ulmfit label-curve`: a classifier folder per number of labels
    label-curve.json, .png      test accuracy by labelled reviews, ULMFiT and NB-LR
    metrics.json, report.md     the run's summary, written last
    run.json                    status: running / failed / stopped / complete
    logs/ulmfit.log             every log line of the commands run here, tracebacks included

A file appears under its final name only once fully written (write to a temporary name in the
same folder, then rename), so a crashed run never leaves a file that looks complete. Who holds a
run and how it ended (the lock, run.json): `status`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import DiskFull, free_bytes, out_of_space

log = logging.getLogger("ulmfit")


# The files of a model folder (lm/, export/, classifier/ and their -bwd twins, label-curve/n*/).
MODEL, METRICS, CHECKPOINT = "model.pth", "metrics.json", "checkpoint.pth"
ENCODER, ENCODER_CONFIG = "encoder.pth", "config.json"
TEST_SCORES, PREDICTIONS, BASELINE = "test.json", "test-predictions.parquet", "baseline.json"
LABEL_SAMPLE = "train-labels.json"  # the reviews a classifier trained on few labels saw
PREVIEW = "preview.json"  # what the report shows of a model's training: its first batch
SAMPLES = "samples.json"  # what the report shows of a language model: text it wrote
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
    preview = property(lambda self: self.path / PREVIEW)
    encoder = property(lambda self: self.path / ENCODER)
    encoder_config = property(lambda self: self.path / ENCODER_CONFIG)
    vocab = property(lambda self: self.path / VOCAB)
    test_scores = property(lambda self: self.path / TEST_SCORES)
    predictions = property(lambda self: self.path / PREDICTIONS)
    baseline = property(lambda self: self.path / BASELINE)
    label_sample = property(lambda self: self.path / LABEL_SAMPLE)

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
    samples = property(lambda self: self.direction(False).lm / SAMPLES)  # of the forward LM
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
