"""fastai callbacks of every training: progress and the loss check, the smoothed loss kept on the
device, the end of an epoch (history, checkpoint), bf16 on the CPU; and `prepare`, which adds
them to a learner as the preset and the rank ask.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from fastai.callback.core import Callback
from fastai.learner import AvgSmoothLoss

from ..config import Preset
from ..errors import STOP, Stopped
from ..progress import Bar
from . import parallel
from .device import precision
from .resume import ResumePoint, Schedule

log = logging.getLogger("ulmfit")


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

    def __init__(self, stage: str, schedule: Schedule, every_s: float = 30.0,
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

    def __init__(self, stage: str, schedule: Schedule, history: list[dict],
                 checkpoint: Callable[[ResumePoint], None], progress: Progress | None) -> None:
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


def prepare(learn, device: torch.device, preset: Preset):
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
