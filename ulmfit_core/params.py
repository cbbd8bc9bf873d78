"""The parameters of a pipeline run, checked once, wherever the run starts.

The command line, `ulmfit serve` and work-pool deployments all build a `RunParams`; a bad value
or combination fails on construction with one line naming the option, before any server,
cluster or model starts.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import PRESETS, TEST_SHARE, Columns, get_preset
from .errors import DataError

DIRECTIONS = {"forward": (False,), "backward": (True,), "bidirectional": (False, True)}
TOKENIZERS = ("word", "subword")
SUBWORD_VOCAB = (100, 1_000_000)  # SentencePiece needs some room beyond its special pieces
_DASK_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://[^\s/]+$")


def at_least(name: str, value, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


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


@dataclass(frozen=True)
class RunParams:
    """What a run (or one of its stage commands) was asked to do; see `ulmfit run --help`."""

    out: str
    data: str = "imdb"
    preset: str = "tiny"
    limit: int | None = None
    seed: int = 0
    dask_address: str | None = None
    workers: int | None = None
    shard_docs: int = 2000
    tokenizer: str | None = None
    vocab_size: int | None = None
    pretrained: str = "none"
    direction: str = "forward"
    train_resource: str | None = None
    train_labels: int | None = None  # train the classifier on a balanced sample of N reviews
    train_workers: int = 1  # data-parallel ranks per training stage
    labels: tuple[str, ...] | list[str] | None = None  # the label curve's points: N or "all"
    text_column: str = "text"  # the columns of a CSV or Parquet source
    label_column: str = "label"
    split_column: str = "split"
    id_column: str = "id"
    test_share: float = TEST_SHARE  # held out as test when the corpus has no test split
    lang: str = "en"  # the language of the text, for spaCy's tokenizer rules
    reset: bool = False  # accept settings other than those the run directory was made with

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise DataError("--out must name a directory")
        if self.preset not in PRESETS:
            raise DataError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        at_least("--limit", self.limit, 1)
        at_least("--seed", self.seed, 0)
        at_least("--workers", self.workers, 1)
        at_least("--shard-docs", self.shard_docs, 1)
        at_least("--train-labels", self.train_labels, 2)
        at_least("--train-workers", self.train_workers, 1)
        if self.labels is not None:
            curve_points(self.labels)
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
        if isinstance(self.test_share, bool) or not isinstance(self.test_share, (int, float)) \
                or not 0 < self.test_share < 1:
            raise DataError(f"--test-share must be a fraction between 0 and 1 (exclusive), got "
                            f"{self.test_share!r}")
        if self.lang not in _spacy_languages():
            raise DataError(f"--lang {self.lang!r}: not a language spaCy knows (e.g. en, de, fr, "
                            "es, it, nl, pt, xx for many)")
        if self.direction not in DIRECTIONS:
            raise DataError(f"unknown direction '{self.direction}' (choose {', '.join(DIRECTIONS)})")
        if self.pretrained not in ("none", "wt103"):
            if not Path(self.pretrained).expanduser().exists():
                raise DataError(f"--pretrained {self.pretrained}: no such file or folder "
                                "(give none, wt103, or fastai-format weights)")
            if self.direction == "bidirectional":
                raise DataError("--bidirectional with --pretrained PATH: one folder holds one "
                                "direction's weights; use wt103 or none")
        if self.dask_address is not None and not _DASK_ADDRESS.match(self.dask_address):
            raise DataError(f"--dask-address {self.dask_address!r}: expected tcp://HOST:PORT")
        if self.train_resource is not None and not self.dask_address:
            raise DataError("--train-resource routes training to Dask workers that declare it: "
                            "give the scheduler with --dask-address")

    @property
    def backwards(self) -> tuple[bool, ...]:
        """The directions to train: (False,), (True,) or (False, True)."""
        return DIRECTIONS[self.direction]

    def settings(self):
        """The preset, with this run's tokenizer choices applied."""
        return get_preset(self.preset, self.tokenizer, self.vocab_size, self.lang)

    def columns(self) -> Columns:
        return Columns(self.text_column, self.label_column, self.split_column, self.id_column)

    def to_dict(self) -> dict:
        return asdict(self)
