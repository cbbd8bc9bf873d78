"""The two trainings with fastai's Learner: the AWD-LSTM language model (one-cycle, from pretrained
weights when given) and the classifier (gradual unfreezing with discriminative rates).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.text.learner import LMLearner, TextLearner
from fastai.text.models.awdlstm import awd_lstm_clas_split, awd_lstm_lm_split

from ..config import Preset
from ..errors import DataError
from ..model.networks import build_classifier, build_language_model, encoder_of, pick_device
from ..text.data import Docs
from . import parallel
from .callbacks import Progress, prepare
from .device import executed_on, explain_out_of_memory, gpu_usage, reset_gpu_peak, use_all_cores
from .loaders import classifier_data, lm_data
from .resume import Checkpoint
from .schedule import fit_schedule

log = logging.getLogger("ulmfit")


def _load_pretrained(model: torch.nn.Module, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # WeightDropout rebuilds "module.weight_hh" from "weight_hh_raw"; nothing else may be absent.
    missing = [k for k in missing if ".module.weight_hh_l" not in k]
    if missing or unexpected:
        raise DataError(f"pretrained weights do not fit this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}): choose the preset they were trained with")


def lm_learner(docs: Docs, vocab_size: int, preset: Preset, seed: int, device: torch.device,
               pretrained: dict | None = None):
    """(learner, precision, train, valid) of the language model, as training builds them for
    `seed`; in a data-parallel group, with this rank's share of each batch."""
    cfg = preset.lm
    parallel.check_batch("lm", cfg.bs)
    train, valid, dls = lm_data(docs, preset, seed, device)
    model = build_language_model(vocab_size, preset.model, cfg.drop_mult)
    if pretrained is not None:
        _load_pretrained(model, pretrained)
    learn = LMLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_lm_split,
                      metrics=[accuracy, Perplexity()], wd=cfg.wd)
    learn, mode = prepare(learn, device, preset)
    return learn, mode, train, valid


def _fit(kind: str, learn, mode: str, stages, bs: int, preset: Preset, device: torch.device,
         threads: int, checkpoint: Checkpoint, progress: Progress | None,
         discriminative: bool = False) -> tuple[list[dict], int, dict]:
    """What both trainings share once their learner is built: `fit_schedule` (an out-of-memory
    error told as one line); returns (history, epochs run by this call, what both report of
    how they ran: device, precision, GPU memory, threads, resume, host, ranks, seconds)."""
    t0 = time.time()
    with explain_out_of_memory(kind, preset, bs, device, checkpoint):
        history, resumed = fit_schedule(learn, stages, kind, checkpoint, progress, discriminative)
    seconds = time.time() - t0
    ran = len(history) - (resumed["epochs_done"] if resumed else 0)
    return history, ran, {
        "device": str(device), "precision": mode, **gpu_usage(device), "threads": threads,
        "resumed": resumed, **executed_on(),
        "ranks": parallel.gather_ranks({**executed_on(), "device": str(device)}), "seconds": seconds}


def _on_device(device: torch.device | None) -> tuple[torch.device, int]:
    """The device to train on (the best one here by default) with its peak memory reset, and the
    CPU threads training uses."""
    device = device or pick_device()
    threads = use_all_cores()
    reset_gpu_peak(device)
    return device, threads


def train_language_model(docs: Docs, vocab_size: int, preset: Preset, seed: int = 0,
                         device: torch.device | None = None, pretrained: dict | None = None,
                         checkpoint: Checkpoint = Checkpoint(), progress: Progress | None = None):
    """Fit an AWD-LSTM language model with one-cycle; returns (model, metrics).

    From `pretrained` weights (already matched to this vocab), first only the last layer group
    (embeddings and decoder) trains for one cycle, then everything at a tenth of the rate (fastai).
    Every epoch is saved to `checkpoint`, and an earlier attempt's checkpoint is resumed.
    """
    device, threads = _on_device(device)
    cfg = preset.lm
    learn, mode, train, valid = lm_learner(docs, vocab_size, preset, seed, device, pretrained)
    dls = learn.dls
    log.info("lm: %d train / %d valid documents (%d / %d tokens), %d batches per epoch on %s (%s)",
             len(train), len(valid), train.n_tokens, valid.n_tokens, len(dls.train), device, mode)
    history, ran, how = _fit("lm", learn, mode, cfg.schedule(pretrained is not None), cfg.bs,
                             preset, device, threads, checkpoint, progress)
    last = history[-1]
    metrics = {
        "train_docs": len(train), "valid_docs": len(valid),
        "train_tokens": train.n_tokens, "valid_tokens": valid.n_tokens,
        "train_loss": last["train_loss"], "valid_loss": last["valid_loss"],
        "accuracy": last["accuracy"], "perplexity": last["perplexity"],
        "epochs": len(history), "history": history, **how,
        # Tokens predicted per epoch by all ranks together: bs rows of bl tokens (the stream
        # cut to a multiple of bs).
        "tokens_per_s": ran * dls.train.bs * dls.train.bl / how["seconds"] if ran else None,
    }
    return learn.model.float().eval(), metrics


def classifier_learner(docs: Docs, encoder_state: dict, vocab_size: int, preset: Preset, seed: int,
                       device: torch.device, train_labels: int | None = None):
    """(learner, precision, labels, train, valid, settings) of the classifier, as training builds
    them for `seed`; in a data-parallel group, with this rank's share of each batch."""
    labels, train, valid, cfg, dls = classifier_data(docs, preset, seed, device, train_labels)
    parallel.check_batch("classifier", cfg.bs)
    model = build_classifier(vocab_size, len(labels), preset.model, cfg)
    encoder_of(model).load_state_dict(encoder_state)
    learn = TextLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_clas_split,
                        metrics=accuracy, wd=cfg.wd)
    learn, mode = prepare(learn, device, preset)
    return learn, mode, labels, train, valid, cfg


def train_classifier(docs: Docs, encoder_state: dict, vocab_size: int, preset: Preset,
                     seed: int = 0, device: torch.device | None = None,
                     checkpoint: Checkpoint = Checkpoint(), progress: Progress | None = None,
                     train_labels: int | None = None):
    """Gradual unfreezing with discriminative rates, on all labelled reviews or a sample of
    `train_labels`; returns (model, labels, metrics)."""
    device, threads = _on_device(device)
    learn, mode, labels, train, valid, cfg = classifier_learner(
        docs, encoder_state, vocab_size, preset, seed, device, train_labels)
    left_out = len(train) % cfg.bs if learn.dls.train.drop_last else 0
    log.info("classifier: %d train / %d valid reviews%s, labels %s, on %s (%s)", len(train),
             len(valid), f" ({left_out} left out of each epoch: the last, incomplete batch)"
             if left_out else "", labels, device, mode)
    history, ran, how = _fit("classifier", learn, mode, cfg.stages, cfg.bs, preset, device,
                             threads, checkpoint, progress, discriminative=True)
    stages = []
    for stage in cfg.stages:
        entries = [h for h in history if h["phase"] == stage.name]
        stages.append({**asdict(stage), "valid_loss": entries[-1]["valid_loss"],
                       "accuracy": entries[-1]["accuracy"], "history": entries,
                       "seconds": sum(h["seconds"] for h in entries)})
    metrics = {"train_docs": len(train), "valid_docs": len(valid), "left_out_per_epoch": left_out,
               "labels": labels, "train_labels": train_labels, "bs": cfg.bs, "stages": stages, **how,
               # Every epoch reads each training review once; padding is not counted.
               "tokens_per_s": ran * train.n_tokens / how["seconds"] if ran else None}
    if train_labels is not None:
        metrics["sample"] = {"train": train.doc_ids, "valid": valid.doc_ids}
    return learn.model.float().eval(), labels, metrics
