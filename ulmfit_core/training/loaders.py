"""The batches of both trainings: the language model's stream of documents and the classifier's
length-bucketed, front-padded reviews, built as training builds them for a seed.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.text.data import SortedDL
from fastai.torch_core import set_seed

from ..config import ClassifierConfig, LMConfig, Preset
from ..errors import DataError
from ..model.networks import pad_front
from ..text.data import Docs, classifier_split, seeded_unit
from ..text.vocab import PAD_ID
from .lmdata import DeviceLMDataLoader


def _as_tensors(docs: Docs) -> list[torch.Tensor]:
    return [torch.from_numpy(d.astype(np.int64)) for d in docs.ids]


def sample_tokens(docs: Docs, budget: int | None, seed: int) -> Docs:
    """A seeded sample of whole documents with about `budget` tokens (all of them if None)."""
    if budget is None or docs.n_tokens <= budget:
        return docs
    order = sorted(range(len(docs)), key=lambda i: seeded_unit(seed, docs.doc_ids[i], "lm-sample"))
    keep, total = [False] * len(docs), 0
    for i in order:
        if total >= budget:
            break
        keep[i], total = True, total + len(docs.ids[i])
    return docs.subset(keep)


def lm_dataloaders(train: Docs, valid: Docs, cfg: LMConfig, device: torch.device,
                   seed: int) -> DataLoaders:
    """fastai's LMDataLoader batches (documents concatenated into one stream, cut into bs rows),
    cut on the device (`DeviceLMDataLoader`), with the random draws fastai's loaders make after
    `set_seed(seed)` in one thread.

    Those draws come from Python's global generator: the seed of each loader's `rng` as it is
    built, then the document order as each epoch starts. Here they come from a generator of the
    loaders' own, in the state `set_seed(seed)` leaves Python's: the same numbers, whatever
    other threads draw meanwhile (in a Dask worker: timer jitter, dask.sizeof), so data-parallel
    ranks agree on every batch."""
    need = cfg.bs * (cfg.seq_len + 1)
    if train.n_tokens < need:
        raise DataError(f"language model: {train.n_tokens} training tokens, fewer than one batch "
                        f"({cfg.bs} x {cfg.seq_len + 1}); use more documents or a smaller preset")
    # A small validation set gets a smaller batch rather than no batch at all.
    valid_bs = max(1, min(cfg.bs, (valid.n_tokens - 1) // (cfg.seq_len + 1)))
    if valid.n_tokens < 2:
        raise DataError("language model: the validation split is empty; use more documents")
    dls = DataLoaders(
        DeviceLMDataLoader(_as_tensors(train), bs=cfg.bs, seq_len=cfg.seq_len, shuffle=True),
        DeviceLMDataLoader(_as_tensors(valid), bs=valid_bs, seq_len=cfg.seq_len),
        device=device,
    )
    python = random.Random(seed)  # Python's generator as fastai's set_seed(seed) leaves it
    for dl in (dls.train, dls.valid):  # in the order they were built
        dl.rng = random.Random(python.randint(0, 2**32 - 1))
    dls.train.shuffle_with(python)
    return dls


def lm_data(docs: Docs, preset: Preset, seed: int, device: torch.device):
    """(train, valid, loaders) of the language model as training makes them for `seed`: the
    generators are seeded first, so the loaders' batches are the ones training sees."""
    set_seed(seed, reproducible=True)
    cfg = preset.lm
    train, valid = sample_tokens(docs, cfg.sample_tokens, seed).split(cfg.valid_pct, seed, "lm-valid")
    return train, valid, lm_dataloaders(train, valid, cfg, device, seed)


# With few labels, each classifier stage takes at least this many optimizer steps.
FEW_LABEL_STEPS = 32


def few_label_settings(cfg: ClassifierConfig, n_train: int) -> ClassifierConfig:
    """The classifier's batches and schedule for a small labelled sample (--train-labels):
    batches of at most a quarter of the training reviews (at least 2; the last incomplete batch
    is dropped, so none has one row), and each stage's epochs raised until it takes at least
    FEW_LABEL_STEPS optimizer steps. A sample large enough for the preset's batches and epochs
    keeps them."""
    bs = max(2, min(cfg.bs, n_train // 4))
    per_epoch = max(1, n_train // bs)
    stages = tuple(replace(stage, epochs=max(stage.epochs, -(-FEW_LABEL_STEPS // per_epoch)))
                   for stage in cfg.stages)
    return replace(cfg, bs=bs, stages=stages)


def classifier_data(docs: Docs, preset: Preset, seed: int, device: torch.device,
                    train_labels: int | None = None):
    """(labels, train, valid, settings, loaders) of the classifier as training makes them for
    `seed` (and a sample of `train_labels` reviews)."""
    set_seed(seed, reproducible=True)
    labels, train, valid = classifier_split(docs, preset.classifier.valid_pct, seed, train_labels)
    cfg = preset.classifier if train_labels is None else few_label_settings(preset.classifier, len(train))
    label_index = {y: i for i, y in enumerate(labels)}
    return labels, train, valid, cfg, classifier_dataloaders(
        train, valid, label_index, cfg, device, drop_last=train_labels is not None)


def _clas_dataset(docs: Docs, label_index: dict[str, int]):
    return [(torch.from_numpy(d.astype(np.int64)), torch.tensor(label_index[y]))
            for d, y in zip(docs.ids, docs.labels)]


def classifier_dataloaders(train: Docs, valid: Docs, label_index: dict[str, int],
                           cfg: ClassifierConfig, device: torch.device,
                           drop_last: bool = False) -> DataLoaders:
    """Length-bucketed batches (fastai's SortedDL), padded at the front (AlignedSentenceEncoder).

    Built in the training process (num_workers=0; fastai's default is a worker process per
    core, forked every epoch): padding a batch takes about a millisecond, while the workers took
    the CPU from training and made it a third slower on 2 cores (bench/train.py). The batches
    are the same either way.

    A last training batch of one review is dropped, as incomplete batches are with few labels:
    the head's BatchNorm cannot train on one row. SortedDL keeps its last batch last, so what is
    left out is short reviews (the shortest, when the split fits in one of its sorting chunks of
    50 batches); training reports how many (`left_out_per_epoch`).
    """
    pad = partial(pad_front, pad_idx=PAD_ID)
    drop_last = drop_last or len(train) % cfg.bs == 1
    train_dl = SortedDL(_clas_dataset(train, label_index), res=[len(d) for d in train.ids],
                        bs=cfg.bs, shuffle=True, drop_last=drop_last, before_batch=pad, num_workers=0)
    valid_dl = SortedDL(_clas_dataset(valid, label_index), res=[len(d) for d in valid.ids],
                        bs=cfg.bs * 2, before_batch=pad, num_workers=0)
    return DataLoaders(train_dl, valid_dl, device=device)
