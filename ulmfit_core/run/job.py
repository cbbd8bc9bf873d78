"""The job specs: what a pipeline run (`Job`) or a scoring run (`ScoreJob`) was asked to do, as
one typed object, checked once, wherever the run starts.

The command line builds its options from these fields (their descriptions are its help), and
the Prefect UI draws them as the form of a flow run or deployment; either way a bad value or
combination fails on construction with one line naming the option, before any server, cluster
or model starts. The flows hand the object down whole: a setting is declared here once, with
its default, and `COMMANDS` says which commands take it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import DIRECTIONS, PRESETS, TEST_SHARE, TOKENIZERS, Columns, Preset, get_preset
from ..errors import DataError

SUBWORD_VOCAB = (100, 1_000_000)  # SentencePiece needs some room beyond its special pieces
_DASK_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://[^\s/]+$")


def at_least(name: str, value, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


def option(field: str) -> str:
    """The command-line option of a field: `shard_docs` → `--shard-docs`."""
    return "--" + field.replace("_", "-")


def _spacy_languages() -> list[str]:
    """The language codes spaCy's blank tokenizer knows, read from its package without importing
    it (spaCy loads NumPy, whose threads must not start before the command's signal mask)."""
    spec = importlib.util.find_spec("spacy")
    root = Path(next(iter(spec.submodule_search_locations))) / "lang"
    return sorted(p.parent.name for p in root.glob("*/__init__.py"))


def curve_points(labels) -> list[int | None]:
    """`--labels 100 500 all` → [100, 500, None] (None: every labelled review), ascending."""
    points: list[int | None] = []
    for value in labels:
        if value == "all":
            point = None
        elif str(value).isdigit() and int(value) >= 2:
            point = int(value)
        else:
            raise DataError(f"--labels: {value!r} is not a number of labelled reviews (>= 2) or 'all'")
        if point not in points:
            points.append(point)
    if not points:
        raise DataError("--labels: give at least one number of labelled reviews, or 'all'")
    return sorted(points, key=lambda n: float("inf") if n is None else n)


class _Spec(BaseModel):
    """A job spec: frozen, no field it does not know, and its errors one line (`DataError`)
    naming the option, rather than pydantic's report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **given) -> None:
        try:
            super().__init__(**given)
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["type"] == "value_error":  # raised by a check below
                raise DataError(str(error["ctx"]["error"])) from None
            where = option(str(error["loc"][0])) if error["loc"] else type(self).__name__
            raise DataError(f"{where}: {error['msg']}") from None

    def _cluster_checks(self) -> None:
        at_least("--workers", self.workers, 1)
        if self.dask_address is not None and not _DASK_ADDRESS.match(self.dask_address):
            raise DataError(f"--dask-address {self.dask_address!r}: expected tcp://HOST:PORT")


_DATA = ("'imdb' ($ULMFIT_IMDB or fastai's download), an aclImdb .tar.gz or folder, or a "
         ".csv/.parquet file: a text column, and optionally a label column (any number of "
         "classes), a split column (train, test or unsup; without one, labelled rows train and "
         "the others are unsup) and an id column")
_DASK = "tcp://HOST:PORT of a running Dask scheduler (default: a LocalCluster)"
_WORKERS = "LocalCluster worker processes (default: one per core)"


class Job(_Spec):
    """A pipeline run, or one of its stages as a run of its own; see `ulmfit run --help`."""

    out: str = Field(description="run directory, or an s3:// prefix (created if missing)")
    reset: bool = Field(False, description="run with a preset, tokenizer or seed other than the "
                        "one this run directory was made with (its stages are rebuilt as needed)")
    data: str = Field("imdb", description=_DATA)
    text_column: str = Field("text", description="the column that holds the text")
    label_column: str = Field("label", description="the column that holds the label")
    split_column: str = Field("split", description="the column that holds train, test or unsup")
    id_column: str = Field("id", description="the column that holds an id for each row")
    test_share: float = Field(TEST_SHARE, description="without a labelled test split, this share "
                              "of each label's train documents is held out as test (seeded, stratified)")
    lang: str = Field("en", description="language of the text, for spaCy's tokenizer (fastai's "
                      "rules stay): en, de, fr, es, ... or xx (multi-language)")
    limit: int | None = Field(None, description="keep at most N documents per (split, label), "
                              "chosen by the seed")
    workers: int | None = Field(None, description=_WORKERS)
    shard_docs: int = Field(2000, description="documents per shard")
    tokenizer: str | None = Field(None, description="word: spaCy + fastai rules (default); "
                                  "subword: SentencePiece unigram")
    vocab_size: int | None = Field(None, description="subword pieces to learn (default 10,000; "
                                   "200 to 10,000 are typical)")
    preset: str = Field("tiny", description=f"model and schedule: {', '.join(PRESETS)}")
    seed: int = Field(0, description="seeds sampling, splits and training: the same seed repeats a run")
    pretrained: str = Field("none", description="LM start: none, wt103 (fastai's WikiText-103 "
                            "weights, downloaded), or a folder/.pth with fastai's .pth weights and "
                            ".pkl vocabulary")
    lm_epochs: int | None = Field(None, description="language-model epochs (default: the preset's; "
                                  "from pretrained weights, those after its frozen epoch)")
    direction: str = Field("forward", description="the directions to train: forward, backward "
                           "(text reversed) or bidirectional (both, and their averaged-probability "
                           "ensemble)")
    dask_address: str | None = Field(None, description=_DASK)
    train_resource: str | None = Field(None, description="run training tasks on the Dask workers "
                                       "started with --resources NAME=1 (e.g. GPU); needs --dask-address")
    train_workers: int = Field(1, description="train each model data-parallel on N Dask workers "
                               "(with --dask-address, those with --train-resource; else N local "
                               "worker processes, one GPU each); batch size and schedule stay the preset's")
    train_labels: int | None = Field(None, description="train the classifier on a seeded, "
                                     "class-balanced sample of N labelled train reviews (the "
                                     "language model still learns from all the text)")
    labels: tuple[int | str, ...] | None = Field(None, description="the label curve's points: "
                                                 "numbers of labelled train reviews, and 'all' "
                                                 "(e.g. 100 500 1000 5000 all)")

    @model_validator(mode="after")
    def _checked(self) -> Job:
        if not str(self.out).strip():
            raise DataError("--out must name a directory")
        if self.preset not in PRESETS:
            raise DataError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        for name, low in (("limit", 1), ("seed", 0), ("shard_docs", 1), ("train_labels", 2),
                          ("train_workers", 1), ("lm_epochs", 1)):
            at_least(option(name), getattr(self, name), low)
        self._cluster_checks()
        if self.labels is not None:
            curve_points(self.labels)
        self._check_text()
        if self.direction not in DIRECTIONS:
            raise DataError(f"unknown direction '{self.direction}' (choose from {', '.join(DIRECTIONS)})")
        if self.pretrained not in ("none", "wt103"):
            if not Path(self.pretrained).expanduser().exists():
                raise DataError(f"--pretrained {self.pretrained}: no such file or folder "
                                "(give none, wt103, or fastai-format weights)")
            if self.direction == "bidirectional":
                raise DataError("--bidirectional with --pretrained PATH: one folder holds one "
                                "direction's weights; use wt103 or none")
        if self.train_resource is not None and not self.dask_address:
            raise DataError("--train-resource routes training to Dask workers that declare it: "
                            "give the scheduler with --dask-address")
        return self

    def _check_text(self) -> None:
        """The corpus's columns, its language and how it becomes tokens."""
        if self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            raise DataError(f"unknown tokenizer '{self.tokenizer}' (choose {' or '.join(TOKENIZERS)})")
        if self.vocab_size is not None:
            if (self.tokenizer or get_preset(self.preset).tokenizer.kind) != "subword":
                raise DataError("--vocab-size sets the subword vocabulary: give it with --tokenizer subword")
            at_least("--vocab-size", self.vocab_size, SUBWORD_VOCAB[0])
            if self.vocab_size > SUBWORD_VOCAB[1]:
                raise DataError(f"--vocab-size must be at most {SUBWORD_VOCAB[1]:,}, got {self.vocab_size}")
        for field in ("text", "label", "split", "id"):
            if not str(getattr(self, f"{field}_column")).strip():
                raise DataError(f"--{field}-column must name a column")
        if not 0 < self.test_share < 1:
            raise DataError(f"--test-share must be a fraction between 0 and 1 (exclusive), got "
                            f"{self.test_share!r}")
        if self.lang not in _spacy_languages():
            raise DataError(f"--lang {self.lang!r}: not a language spaCy knows (e.g. en, de, fr, "
                            "es, it, nl, pt, xx for many)")

    @property
    def backwards(self) -> tuple[bool, ...]:
        """The directions to train: (False,), (True,) or (False, True)."""
        return DIRECTIONS[self.direction]

    @cached_property
    def settings(self) -> Preset:
        """The preset, with this job's tokenizer choices and LM epochs applied (built once)."""
        preset = get_preset(self.preset, self.tokenizer, self.vocab_size, self.lang)
        if self.lm_epochs is None:
            return preset
        return replace(preset, lm=replace(preset.lm, epochs=self.lm_epochs))

    def columns(self) -> Columns:
        return Columns(self.text_column, self.label_column, self.split_column, self.id_column)

    def record(self, command: str) -> dict:
        """What run.json records of this job run as `command`: the fields that command takes,
        the tokenizer as the kind the run uses."""
        given = {name: getattr(self, name) for name in COMMANDS[command]}
        if "tokenizer" in given:
            given["tokenizer"] = self.settings.tokenizer.kind
        return {"command": command, **given}


_RUN_DIR = ("out", "reset")
_TEXT = ("data", "text_column", "label_column", "split_column", "id_column", "test_share", "lang",
         "limit", "workers", "shard_docs", "tokenizer", "vocab_size")
_MODEL = ("preset", "seed")
_PLACED = ("direction", "dask_address", "train_resource", "train_workers")
# The fields of `Job` each command takes (in the order of its help); the others keep their
# defaults and are not recorded in run.json.
COMMANDS = {
    "run": _RUN_DIR + _TEXT + _MODEL + ("pretrained", "lm_epochs") + _PLACED + ("train_labels",),
    "preprocess": _RUN_DIR + _TEXT + _MODEL + ("dask_address",),
    "train-lm": _RUN_DIR + _MODEL + ("pretrained", "lm_epochs") + _PLACED,
    "train-classifier": _RUN_DIR + _MODEL + _PLACED + ("train_labels",),
    "label-curve": _RUN_DIR + _MODEL + ("dask_address", "train_resource", "labels"),
    "serve": ("out",) + _TEXT + _MODEL + ("dask_address",),  # what its two schedules run
}


class ScoreJob(_Spec):
    """Every row of a dataset classified by a trained classifier; see `ulmfit score --help`."""

    model: str = Field(description="run directory or its classifier/ folder")
    data: str = Field(description="a .csv/.parquet file, a folder of them (searched recursively) "
                      "or a glob (quote it: 'reviews/*.parquet')")
    out: str = Field(description="folder of the predictions: one Parquet file per input file, "
                     "and score.json")
    text_column: str = Field("text", description="the column to classify")
    id_column: str = Field("id", description="the column copied beside each prediction (absent: "
                           "the row number)")
    bs: int = Field(64, description="texts per batch (memory, not results: a prediction does "
                    "not depend on its batch)")
    dask_address: str | None = Field(None, description=_DASK)
    workers: int | None = Field(None, description=_WORKERS)

    @model_validator(mode="after")
    def _checked(self) -> ScoreJob:
        if not str(self.out).strip():
            raise DataError("--out must name a directory")
        at_least("--bs", self.bs, 1)
        self._cluster_checks()
        return self
