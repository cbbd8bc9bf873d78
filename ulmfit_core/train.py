"""Training: the AWD-LSTM language model and the staged classifier, with fastai's Learner.

These functions take documents and settings and return metrics; they write only the model
files they are told to write. Devices: CUDA (with mixed precision) when available, else CPU
with every core this process may use.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.text.data import LMDataLoader, SortedDL
from fastai.text.learner import LMLearner, TextLearner
from fastai.text.models.awdlstm import awd_lstm_clas_split, awd_lstm_lm_split
from fastai.torch_core import set_seed

from .config import LR_DIV, ClassifierConfig, LMConfig, Preset
from .data import Docs, seeded_unit
from .ingest import DataError
from .models import build_classifier, build_language_model, encoder_of, pad_front, pick_device
from .vocab import PAD_ID

log = logging.getLogger("ulmfit")


def use_all_cores() -> int:
    """Dask workers start with one thread for math libraries; training wants all the cores."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


class ProgressLog(Callback):
    """Logs i/N, loss and ETA as training goes; stops on a non-finite loss before the step."""

    order = 70  # after the Recorder has logged the epoch

    def __init__(self, stage: str, every_s: float = 30.0) -> None:
        self.stage, self.every_s = stage, every_s

    def before_fit(self) -> None:
        self.t0 = self.last = time.time()
        self.total = self.n_epoch * len(self.dls.train)
        self.done = 0

    def after_loss(self) -> None:
        loss = float(self.loss.detach())
        if self.training and not math.isfinite(loss):
            raise FloatingPointError(
                f"{self.stage}: non-finite loss ({loss}) at epoch {self.epoch + 1}, "
                f"batch {self.iter + 1}: lower the learning rate or check the data"
            )

    def after_batch(self) -> None:
        if not self.training:
            return
        self.done += 1
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            eta = (now - self.t0) / self.done * (self.total - self.done)
            log.info("%s: epoch %d/%d, batch %d/%d, loss %.4f, ETA %.0fs", self.stage,
                     self.epoch + 1, self.n_epoch, self.iter + 1, self.n_iter,
                     float(self.smooth_loss), eta)

    def after_epoch(self) -> None:
        names = self.recorder.metric_names[1:-1]
        values = self.recorder.log[1:-1]
        shown = ", ".join(f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}"
                          for n, v in zip(names, values))
        log.info("%s: epoch %d/%d done (%s) in %.0fs", self.stage, self.epoch + 1, self.n_epoch,
                 shown, time.time() - self.t0)


def _as_tensors(docs: Docs) -> list[torch.Tensor]:
    return [torch.from_numpy(d.astype(np.int64)) for d in docs.ids]


def _history(learn, first_epoch: int = 0) -> list[dict]:
    names = learn.recorder.metric_names[1:-1]
    return [{"epoch": first_epoch + i + 1, **dict(zip(names, map(float, vals)))}
            for i, vals in enumerate(learn.recorder.values)]


class CPUBFloat16(Callback):
    """bf16 autocast for the forward pass and loss on the CPU (fastai's MixedPrecision is CUDA
    only). bf16 has fp32's range, so no loss scaling is needed."""

    order = 10

    def before_batch(self) -> None:
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = _to_float(self.pred)

    def after_loss(self) -> None:
        self.autocast.__exit__(None, None, None)

    after_cancel_batch = after_loss


def _to_float(x):
    if isinstance(x, (tuple, list)):
        return type(x)(_to_float(o) for o in x)
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


def precision(device: torch.device, preset: Preset) -> str:
    """fp16 mixed precision on CUDA, bf16 autocast on CPU, or plain fp32, as the preset allows."""
    if device.type == "cuda":
        return "fp16" if preset.fp16 else "fp32"
    return "bf16" if preset.cpu_bf16 else "fp32"


def _prepare(learn, device: torch.device, preset: Preset):
    mode = precision(device, preset)
    if mode == "fp16":
        learn = learn.to_fp16()
    elif mode == "bf16":
        learn.add_cb(CPUBFloat16())
    return learn, mode


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


def lm_dataloaders(train: Docs, valid: Docs, cfg: LMConfig, device: torch.device) -> DataLoaders:
    """fastai's LMDataLoader: documents concatenated into one stream, cut into bs rows."""
    need = cfg.bs * (cfg.seq_len + 1)
    if train.n_tokens < need:
        raise DataError(f"language model: {train.n_tokens} training tokens, fewer than one batch "
                        f"({cfg.bs} x {cfg.seq_len + 1}); use more documents or a smaller preset")
    # A small validation set gets a smaller batch rather than no batch at all.
    valid_bs = max(1, min(cfg.bs, (valid.n_tokens - 1) // (cfg.seq_len + 1)))
    if valid.n_tokens < 2:
        raise DataError("language model: the validation split is empty; use more documents")
    return DataLoaders(
        LMDataLoader(_as_tensors(train), bs=cfg.bs, seq_len=cfg.seq_len, shuffle=True),
        LMDataLoader(_as_tensors(valid), bs=valid_bs, seq_len=cfg.seq_len),
        device=device,
    )


def _load_pretrained(model: torch.nn.Module, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # WeightDropout rebuilds "module.weight_hh" from "weight_hh_raw"; nothing else may be absent.
    missing = [k for k in missing if ".module.weight_hh_l" not in k]
    if missing or unexpected:
        raise DataError(f"pretrained weights do not fit this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}): choose the preset they were trained with")


def train_language_model(docs: Docs, vocab_size: int, preset: Preset, seed: int = 0,
                         device: torch.device | None = None, pretrained: dict | None = None):
    """Fit an AWD-LSTM language model with one-cycle; returns (model, metrics).

    From `pretrained` weights (already matched to this vocab), first only the last layer group
    (embeddings and decoder) trains for one cycle, then everything at a tenth of the rate (fastai).
    """
    device = device or pick_device()
    threads = use_all_cores()
    set_seed(seed, reproducible=True)
    cfg = preset.lm
    train, valid = sample_tokens(docs, cfg.sample_tokens, seed).split(cfg.valid_pct, seed, "lm-valid")
    dls = lm_dataloaders(train, valid, cfg, device)
    model = build_language_model(vocab_size, preset.model, cfg.drop_mult)
    if pretrained is not None:
        _load_pretrained(model, pretrained)
    learn = LMLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_lm_split,
                      metrics=[accuracy, Perplexity()], wd=cfg.wd, cbs=ProgressLog("lm"))
    learn, mode = _prepare(learn, device, preset)
    log.info("lm: %d train / %d valid documents (%d / %d tokens), %d batches per epoch on %s (%s)",
             len(train), len(valid), train.n_tokens, valid.n_tokens, len(dls.train), device, mode)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        if pretrained is None:
            learn.fit_one_cycle(cfg.epochs, cfg.lr)
            history = _history(learn)
        else:
            learn.freeze()
            learn.fit_one_cycle(1, cfg.lr)
            history = _history(learn)
            learn.unfreeze()
            learn.fit_one_cycle(cfg.epochs, cfg.lr / 10)
            history += _history(learn, first_epoch=1)
    last = history[-1]
    metrics = {
        "train_docs": len(train), "valid_docs": len(valid),
        "train_tokens": train.n_tokens, "valid_tokens": valid.n_tokens,
        "train_loss": last["train_loss"], "valid_loss": last["valid_loss"],
        "accuracy": last["accuracy"], "perplexity": last["perplexity"],
        "epochs": len(history), "history": history, "device": str(device), "precision": mode,
        "threads": threads,
        "tokens_per_s": len(history) * len(dls.train) * cfg.bs * cfg.seq_len / (time.time() - t0),
        "seconds": time.time() - t0,
    }
    return learn.model.float().eval(), metrics


def _clas_dataset(docs: Docs, label_index: dict[str, int]):
    return [(torch.from_numpy(d.astype(np.int64)), torch.tensor(label_index[y]))
            for d, y in zip(docs.ids, docs.labels)]


def classifier_dataloaders(train: Docs, valid: Docs, label_index: dict[str, int],
                           cfg: ClassifierConfig, device: torch.device) -> DataLoaders:
    """Length-bucketed batches (fastai's SortedDL), padded at the front (AlignedSentenceEncoder)."""
    pad = partial(pad_front, pad_idx=PAD_ID)
    train_dl = SortedDL(_clas_dataset(train, label_index), res=[len(d) for d in train.ids],
                        bs=cfg.bs, shuffle=True, before_batch=pad)
    valid_dl = SortedDL(_clas_dataset(valid, label_index), res=[len(d) for d in valid.ids],
                        bs=cfg.bs * 2, before_batch=pad)
    return DataLoaders(train_dl, valid_dl, device=device)


def train_classifier(docs: Docs, encoder_state: dict, vocab_size: int, preset: Preset,
                     seed: int = 0, device: torch.device | None = None):
    """Gradual unfreezing with discriminative rates; returns (model, labels, metrics)."""
    device = device or pick_device()
    threads = use_all_cores()
    set_seed(seed, reproducible=True)
    cfg = preset.classifier
    labels = sorted({y for y in docs.labels if y is not None})
    if len(labels) < 2:
        raise DataError(f"classifier: need at least two labels in the train split, found {labels}")
    label_index = {y: i for i, y in enumerate(labels)}
    train, valid = docs.split(cfg.valid_pct, seed, "classifier-valid")
    if len(valid) == 0:
        raise DataError("classifier: the validation split is empty; use more labelled documents")
    dls = classifier_dataloaders(train, valid, label_index, cfg, device)
    model = build_classifier(vocab_size, len(labels), preset.model, cfg)
    encoder_of(model).load_state_dict(encoder_state)
    learn = TextLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_clas_split,
                        metrics=accuracy, wd=cfg.wd, cbs=ProgressLog("classifier"))
    learn, mode = _prepare(learn, device, preset)
    log.info("classifier: %d train / %d valid reviews, labels %s, on %s (%s)",
             len(train), len(valid), labels, device, mode)
    stages, epochs_done, t_all = [], 0, time.time()
    for stage in cfg.stages:
        t0 = time.time()
        if stage.freeze_to is None:
            learn.unfreeze()
        else:
            learn.freeze_to(stage.freeze_to)
        lr = slice(stage.lr / LR_DIV, stage.lr) if stage.discriminative else stage.lr
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(stage.epochs, lr)
        history = _history(learn, epochs_done)
        epochs_done += stage.epochs
        stages.append({**asdict(stage), "valid_loss": history[-1]["valid_loss"],
                       "accuracy": history[-1]["accuracy"], "history": history,
                       "seconds": time.time() - t0})
        log.info("classifier: stage %s: valid loss %.4f, accuracy %.4f", stage.name,
                 stages[-1]["valid_loss"], stages[-1]["accuracy"])
    metrics = {"train_docs": len(train), "valid_docs": len(valid), "labels": labels,
               "stages": stages, "device": str(device), "precision": mode, "threads": threads,
               "seconds": time.time() - t_all}
    return learn.model.float().eval(), labels, metrics
