"""Training: the AWD-LSTM language model and the staged classifier, with fastai's Learner.

These functions take documents and settings and return metrics; they write only the model
files they are told to write. Devices: CUDA (with mixed precision) when available, else CPU
with every core this process may use.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import AvgSmoothLoss
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.text.data import SortedDL
from fastai.text.learner import LMLearner, TextLearner
from fastai.text.models.awdlstm import awd_lstm_clas_split, awd_lstm_lm_split
from fastai.torch_core import set_seed

from . import parallel
from .config import ClassifierConfig, LMConfig, Preset, Stage
from .data import Docs, classifier_split, seeded_unit
from .errors import STOP, DataError, DiskFull, OutOfDeviceMemory, Stopped
from .lmdata import DeviceLMDataLoader
from .models import build_classifier, build_language_model, encoder_of, pad_front, pick_device
from .progress import Bar
from .vocab import PAD_ID
from .runstore import written
from .weights import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger("ulmfit")


def executed_on() -> dict:
    """Which machine and process trained (to check where a scheduler sent the work)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def use_all_cores() -> int:
    """Dask workers start with one thread for math libraries; training wants all the cores
    (a rank of data-parallel training keeps the share its launcher gave it)."""
    if parallel.world() > 1:
        return torch.get_num_threads()
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


Progress = Callable[[float, str], None]  # (fraction done, message): a hook for the caller


# Training batches between two reads of their losses on the host (a wait for the GPU each).
LOSS_CHECK_EVERY = 64


class ProgressLog(Callback):
    """Logs i/N, loss and ETA as training goes; stops on a non-finite training loss, and after
    the current batch when `STOP` is set.

    Reading each batch's loss on the host would make the CPU wait for the GPU at every step.
    Instead the losses are copied into a buffer on their device, which is read every
    `check_every` batches, at each log line and when the epoch's training ends (before its
    validation and checkpoint): one wait each. The error names the first non-finite batch; the
    few steps taken after it are lost with the run, which stops there.
    """

    order = 70  # after the Recorder has logged the epoch

    def __init__(self, stage: str, schedule: "Schedule", every_s: float = 30.0,
                 progress: Progress | None = None, check_every: int = LOSS_CHECK_EVERY) -> None:
        self.stage, self.schedule, self.every_s = stage, schedule, every_s
        self.progress, self.check_every = progress, check_every
        self.bar: Bar | None = None  # on a terminal: this epoch's batches, loss and ETA

    def before_fit(self) -> None:
        self.t0 = self.last = time.time()
        self.total = (self.n_epoch - self.schedule.point.epoch) * len(self.dls.train)
        self.done = 0

    def before_train(self) -> None:
        self.losses, self.checked = None, 0  # this epoch's losses; batches found finite
        self.bar = Bar(f"{self.stage} epoch {self.epoch + 1}/{self.n_epoch} {self.schedule.stage.name}",
                       len(self.dl))

    def after_loss(self) -> None:
        if not self.training:
            return
        if self.losses is None:
            self.losses = self.loss.new_zeros(len(self.dl), dtype=torch.float32)
        self.losses[self.iter] = self.loss.detach()  # a copy on the device: no wait

    def after_batch(self) -> None:
        if not self.training:
            return
        if STOP.is_set():
            raise Stopped(f"{self.stage}: stopped at epoch {self.epoch + 1}, batch {self.iter + 1}; "
                          "the checkpoint of the last finished epoch is kept")
        self.done += 1
        now = time.time()
        log_now = now - self.last >= self.every_s
        if log_now or self.iter + 1 - self.checked >= self.check_every:
            self.check_losses()
            self.bar.update(info=f"loss {float(self.smooth_loss):.4f}")
        self.bar.update(completed=self.iter + 1)
        if log_now:
            self.last = now
            eta = (now - self.t0) / self.done * (self.total - self.done)
            message = (f"{self.stage}: epoch {self.epoch + 1}/{self.n_epoch}, batch {self.iter + 1}/"
                       f"{self.n_iter}, loss {float(self.smooth_loss):.4f}, ETA {eta:.0f}s")
            log.info(message)
            if self.progress:
                self.progress(self.done / self.total, message)

    def after_train(self) -> None:
        if self.losses is not None:
            self.check_losses()
            self.bar.update(info=f"loss {float(self.smooth_loss):.4f}")
        self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def check_losses(self) -> None:
        """Raise if a loss since the last check is not finite, naming the first such batch."""
        seen = self.iter + 1
        bad = torch.nonzero(~torch.isfinite(self.losses[self.checked:seen]))
        if len(bad):
            batch = self.checked + int(bad[0])
            raise FloatingPointError(
                f"{self.stage}: non-finite loss ({float(self.losses[batch])}) at epoch "
                f"{self.epoch + 1}, batch {batch + 1}: lower the learning rate or check the data"
            )
        self.checked = seen


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss (the Recorder's), kept on the loss's device: fastai's
    copies every batch's loss to the host, a wait for the GPU at each step. It is read at log
    lines and once per epoch for the history."""

    def accumulate(self, learn) -> None:
        self.count += 1
        loss = learn.loss.detach().mean()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class EpochEnd(Callback):
    """After each epoch: record its metrics, move the schedule on, write the checkpoint of the
    point reached, log, tell the caller."""

    order = 80  # after the Recorder

    def __init__(self, stage: str, schedule: "Schedule", history: list[dict],
                 checkpoint: Callable[["ResumePoint"], None], progress: Progress | None) -> None:
        self.stage, self.schedule, self.history = stage, schedule, history
        self.checkpoint, self.progress = checkpoint, progress

    def before_epoch(self) -> None:
        self.t_epoch = time.time()

    def after_epoch(self) -> None:
        if self.epoch < self.schedule.point.epoch:  # skipped: done before the point resumed from
            return
        name = self.schedule.stage.name
        names = self.recorder.metric_names[1:-1]
        values = dict(zip(names, map(float, self.learn.final_record)))
        self.history.append({"epoch": len(self.history) + 1, "phase": name, **values,
                             "seconds": time.time() - self.t_epoch})
        self.schedule.epoch_done()
        self.checkpoint(self.schedule.point)
        message = (f"{self.stage}: {name} epoch {self.epoch + 1}/{self.n_epoch} done ("
                   + ", ".join(f"{n} {v:.4f}" for n, v in values.items()) + ")")
        log.info(message)
        if self.progress:
            self.progress((self.epoch + 1) / self.n_epoch, message)


@dataclass(frozen=True)
class ResumePoint:
    """Where a schedule stands: `epoch` epochs of its stage number `stage` are done. A checkpoint
    records the point after its epoch, and training resumed from it starts there."""

    stage: int = 0
    epoch: int = 0

    @classmethod
    def of(cls, checkpoint: dict | None) -> "ResumePoint":
        return cls() if checkpoint is None else cls(checkpoint["phase"], checkpoint["epoch"])


class Schedule:
    """The stages of a training (`config.Stage`) and the point reached, which the callbacks
    read (the stage running, the epochs of it done before a resume) and move on."""

    def __init__(self, stages: Sequence[Stage], point: ResumePoint) -> None:
        self.stages, self.point = tuple(stages), point

    @property
    def stage(self) -> Stage:
        return self.stages[self.point.stage]

    def epoch_done(self) -> None:
        """One more epoch of the current stage; the next stage's start after its last."""
        stage, epoch = self.point.stage, self.point.epoch + 1
        self.point = ResumePoint(stage + 1, 0) if epoch == self.stage.epochs else ResumePoint(stage, epoch)


def fit_schedule(learn, stages: Sequence[Stage], stage: str, checkpoint: Path | None,
                 fingerprint: str, progress: Progress | None = None,
                 discriminative: bool = False) -> tuple[list[dict], dict | None]:
    """Fit `stages` one after another (a one-cycle fit each, with discriminative rates if
    asked: `Stage.rates`), checkpointing after every epoch; returns (history, resumed).

    When `checkpoint` holds the state of an earlier attempt with the same fingerprint, training
    continues from its resume point, with the optimizer and random generators as they were, so
    it takes the steps an uninterrupted run would have taken.
    """
    loaders = {"train": learn.dls.train, "valid": learn.dls.valid}
    state = load_checkpoint(checkpoint, fingerprint)
    start = ResumePoint.of(state)
    schedule = Schedule(stages, start)
    history: list[dict] = [] if state is None else list(state["history"])
    resumed = None
    if state is not None:
        learn.model.load_state_dict(state["model"])
        resumed = {"phase": schedule.stage.name if start.stage < len(stages) else None,
                   "epoch": start.epoch, "epochs_done": len(history)}
        log.info("%s: resuming from %s after %d finished epoch(s)", stage, checkpoint, len(history))

    def save(point: ResumePoint) -> None:
        if checkpoint is not None and parallel.rank() == 0:
            save_checkpoint(checkpoint, fingerprint, phase=point.stage, epoch=point.epoch,
                            history=history, model=parallel.unwrap(learn.model).state_dict(),
                            opt=learn.opt.state_dict(), rng=rng_state(loaders))
            written(checkpoint)  # a run on object storage gets it now: a lost worker's retry resumes

    progress_log = ProgressLog(stage, schedule, progress=progress)
    epoch_end = EpochEnd(stage, schedule, history, save, progress)
    for index in range(start.stage, len(stages)):
        schedule.point = start if index == start.stage else ResumePoint(index, 0)
        fit, first = schedule.stage, schedule.point.epoch
        if fit.freeze_to is None:
            learn.unfreeze()
        else:
            learn.freeze_to(fit.freeze_to)
        if state is not None and index == start.stage:
            if first > 0:  # mid-stage; a new stage starts with a cleared optimizer (freeze_to)
                learn.opt.load_state_dict(state["opt"])
            set_rng_state(state["rng"], loaders)
        try:
            with learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(fit.epochs, fit.rates(discriminative), start_epoch=first,
                                    cbs=[progress_log, epoch_end])
        except (DiskFull, Stopped) as exc:  # their own message, without fastai's callback preface
            raise type(exc)(str(exc).split("\n\t", 1)[-1]) from None
        finally:
            progress_log.close_bar()  # also when the fit stops with an error or on request
            for cb in learn.cbs:  # an error inside a batch leaves its autocast entered, and on
                if isinstance(cb, CPUBFloat16):  # for whatever this process trains next
                    cb.after_loss()
    return history, resumed


def _as_tensors(docs: Docs) -> list[torch.Tensor]:
    return [torch.from_numpy(d.astype(np.int64)) for d in docs.ids]


class CPUBFloat16(Callback):
    """bf16 autocast for the forward pass and loss on the CPU (fastai's MixedPrecision is CUDA
    only). bf16 has fp32's range, so no loss scaling is needed."""

    order = 10
    autocast = None  # entered for the current batch

    def before_batch(self) -> None:
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = _to_float(self.pred)

    def after_loss(self) -> None:
        if self.autocast is not None:  # a batch cancelled before this callback began has none
            self.autocast.__exit__(None, None, None)
            self.autocast = None

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


def gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def reset_gpu_peak(device: torch.device) -> None:
    """Start counting a stage's peak GPU memory from what it already holds."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_usage(device: torch.device) -> dict:
    """The GPU a stage trained on and the most memory its tensors held since `reset_gpu_peak`
    (None on the CPU)."""
    if device.type != "cuda":
        return {"gpu": None, "peak_gpu_memory_mb": None}
    return {"gpu": gpu_name(device),
            "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


@contextmanager
def explain_out_of_memory(stage: str, preset: Preset, bs: int, device: torch.device,
                          checkpoint: Path | None, fingerprint: str):
    """Turn torch's out-of-memory error during training into one line naming the preset and
    the batch size to lower, and what was kept of the stage (its last per-epoch checkpoint)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        state = load_checkpoint(checkpoint, fingerprint)
        kept = ("" if checkpoint is None else
                "; no epoch had finished, so there is no checkpoint" if state is None else
                f"; the checkpoint of the last finished epoch ({len(state['history'])} epoch(s) "
                f"done) was kept at {checkpoint}, and a rerun with the same settings resumes from it")
        raise OutOfDeviceMemory(
            f"{stage}: out of memory on {gpu_name(device) or device} with preset '{preset.name}' "
            f"at batch size {bs}: lower {stage}.bs of preset '{preset.name}' or use a smaller "
            f"preset{kept}") from exc


def _prepare(learn, device: torch.device, preset: Preset):
    """Precision as the preset asks, a smoothed loss that needs no host copy per batch, and
    this rank's share of each batch when several ranks train together."""
    learn.recorder.smooth_loss = DeviceSmoothLoss(learn.recorder.smooth_loss.beta)
    if parallel.world() > 1:
        learn.add_cb(parallel.DataParallel(device))
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
    learn, mode = _prepare(learn, device, preset)
    return learn, mode, train, valid


def train_language_model(docs: Docs, vocab_size: int, preset: Preset, seed: int = 0,
                         device: torch.device | None = None, pretrained: dict | None = None,
                         checkpoint: Path | None = None, fingerprint: str = "",
                         progress: Progress | None = None):
    """Fit an AWD-LSTM language model with one-cycle; returns (model, metrics).

    From `pretrained` weights (already matched to this vocab), first only the last layer group
    (embeddings and decoder) trains for one cycle, then everything at a tenth of the rate (fastai).
    With `checkpoint`, every epoch is saved there and an earlier attempt's checkpoint is resumed.
    """
    device = device or pick_device()
    threads = use_all_cores()
    reset_gpu_peak(device)
    cfg = preset.lm
    learn, mode, train, valid = lm_learner(docs, vocab_size, preset, seed, device, pretrained)
    dls = learn.dls
    log.info("lm: %d train / %d valid documents (%d / %d tokens), %d batches per epoch on %s (%s)",
             len(train), len(valid), train.n_tokens, valid.n_tokens, len(dls.train), device, mode)
    t0 = time.time()
    with explain_out_of_memory("lm", preset, cfg.bs, device, checkpoint, fingerprint):
        history, resumed = fit_schedule(learn, cfg.schedule(pretrained is not None), "lm",
                                        checkpoint, fingerprint, progress)
    seconds = time.time() - t0
    ran = len(history) - (resumed["epochs_done"] if resumed else 0)
    last = history[-1]
    metrics = {
        "train_docs": len(train), "valid_docs": len(valid),
        "train_tokens": train.n_tokens, "valid_tokens": valid.n_tokens,
        "train_loss": last["train_loss"], "valid_loss": last["valid_loss"],
        "accuracy": last["accuracy"], "perplexity": last["perplexity"],
        "epochs": len(history), "history": history, "device": str(device), "precision": mode,
        **gpu_usage(device), "threads": threads, "resumed": resumed, **executed_on(),
        "ranks": parallel.gather_ranks({**executed_on(), "device": str(device)}),
        # Tokens predicted per epoch by all ranks together: bs rows of bl tokens (the stream
        # cut to a multiple of bs).
        "tokens_per_s": ran * dls.train.bs * dls.train.bl / seconds if ran else None,
        "seconds": seconds,
    }
    return learn.model.float().eval(), metrics


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
    learn, mode = _prepare(learn, device, preset)
    return learn, mode, labels, train, valid, cfg


def train_classifier(docs: Docs, encoder_state: dict, vocab_size: int, preset: Preset,
                     seed: int = 0, device: torch.device | None = None,
                     checkpoint: Path | None = None, fingerprint: str = "",
                     progress: Progress | None = None, train_labels: int | None = None):
    """Gradual unfreezing with discriminative rates, on all labelled reviews or a sample of
    `train_labels`; returns (model, labels, metrics)."""
    device = device or pick_device()
    threads = use_all_cores()
    reset_gpu_peak(device)
    learn, mode, labels, train, valid, cfg = classifier_learner(
        docs, encoder_state, vocab_size, preset, seed, device, train_labels)
    left_out = len(train) % cfg.bs if learn.dls.train.drop_last else 0
    log.info("classifier: %d train / %d valid reviews%s, labels %s, on %s (%s)", len(train),
             len(valid), f" ({left_out} left out of each epoch: the last, incomplete batch)"
             if left_out else "", labels, device, mode)
    t0 = time.time()
    with explain_out_of_memory("classifier", preset, cfg.bs, device, checkpoint, fingerprint):
        history, resumed = fit_schedule(learn, cfg.stages, "classifier", checkpoint, fingerprint,
                                        progress, discriminative=True)
    seconds = time.time() - t0
    ran = len(history) - (resumed["epochs_done"] if resumed else 0)
    stages = []
    for stage in cfg.stages:
        entries = [h for h in history if h["phase"] == stage.name]
        stages.append({**asdict(stage), "valid_loss": entries[-1]["valid_loss"],
                       "accuracy": entries[-1]["accuracy"], "history": entries,
                       "seconds": sum(h["seconds"] for h in entries)})
    metrics = {"train_docs": len(train), "valid_docs": len(valid), "left_out_per_epoch": left_out,
               "labels": labels,
               "train_labels": train_labels, "bs": cfg.bs, "stages": stages, "device": str(device), "precision": mode, **gpu_usage(device),
               "threads": threads, "resumed": resumed, **executed_on(),
               "ranks": parallel.gather_ranks({**executed_on(), "device": str(device)}),
               # Every epoch reads each training review once; padding is not counted.
               "tokens_per_s": ran * train.n_tokens / seconds if ran else None,
               "seconds": seconds}
    if train_labels is not None:
        metrics["sample"] = {"train": train.doc_ids, "valid": valid.doc_ids}
    return learn.model.float().eval(), labels, metrics
