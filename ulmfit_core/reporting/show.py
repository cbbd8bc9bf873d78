"""What the models see: the first training batch of a run, decoded (fastai's `show_batch`), and
the preview a training stage leaves beside its model for the report.

The batches are made by the same functions and seed as training (`training.lm_data`,
`training.classifier_data`), so they are the batches training starts with: language-model rows
with their targets one token later, and classifier rows with their front padding and label.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fastai.text.core import PAD

from ..config import Preset
from ..errors import DataError
from ..run.layout import ModelDir, RunDir, write_json
from ..text.data import Docs, training_docs
from ..text.vocab import Vocab
from ..training import classifier_data, lm_data

KINDS = ("lm", "classifier")


def batch_rows(docs: Docs, vocab: Vocab, preset: Preset, seed: int, kind: str, n: int) -> list[dict]:
    """The first `n` rows of the first training batch made from `docs`: for "lm", the `x` and
    `y` tokens; for "classifier", the tokens (padding included) and the label."""
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind '{kind}' (choose {' or '.join(KINDS)})")
    cpu = torch.device("cpu")
    if kind == "lm":
        *_, dls = lm_data(docs, preset, seed, cpu)
        x, y = next(iter(dls.train))
        return [{"x": vocab.decode(x[r]), "y": vocab.decode(y[r])} for r in range(min(n, len(x)))]
    labels, *_, dls = classifier_data(docs, preset, seed, cpu)
    x, y = next(iter(dls.train))
    return [{"tokens": vocab.decode(x[r]), "label": labels[int(y[r])]} for r in range(min(n, len(x)))]


def first_batch(run: RunDir, preset: Preset, seed: int, kind: str = "lm", n: int = 3) -> list[dict]:
    """`batch_rows` of a preprocessed run: all its text for "lm", its labelled train reviews for
    "classifier"."""
    vocab = Vocab.load(run.require(run.vocab, "preprocess"))
    docs = training_docs(run) if kind == "lm" else training_docs(run, splits=["train"], labelled=True)
    return batch_rows(docs, vocab, preset, seed, kind, n)


def _shown(tokens: list[str], width: int) -> str:
    """Tokens as text, a run of leading padding as one `xxpad ×N`, cut after `width` tokens."""
    pads = next((i for i, t in enumerate(tokens) if t != PAD), len(tokens))
    rest = tokens[pads:]
    text = " ".join(rest[:width]) + (f" … (+{len(rest) - width})" if len(rest) > width else "")
    return (f"{PAD} ×{pads} " if pads else "") + text


def format_batch(rows: list[dict], width: int = 80) -> str:
    """The rows of `first_batch` as plain text, one block per row."""
    blocks = []
    for i, row in enumerate(rows):
        if "x" in row:
            blocks.append(f"[{i}] x: {_shown(row['x'], width)}\n    y: {_shown(row['y'], width)}")
        else:
            blocks.append(f"[{i}] {row['label']}: {_shown(row['tokens'], width)}")
    return "\n".join(blocks)


def write_preview(folder: ModelDir, kind: str, docs: Docs, vocab: Vocab, preset: Preset,
                  seed: int) -> Path:
    """preview.json beside a model just trained on `docs`, for the report: one row of its first
    training batch, decoded (none where the documents cannot make one)."""
    try:
        preview = {"batch": format_batch(batch_rows(docs, vocab, preset, seed, kind, n=1))}
    except DataError:
        preview = {}
    return write_json(folder.preview, preview)
