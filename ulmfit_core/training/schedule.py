"""`fit_schedule`: a training's stages fitted one after another, checkpointed after every epoch
and resumed from the last one (where it stands: `resume`).
"""

from __future__ import annotations

import logging
from typing import Sequence

from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)

from ..config import Stage
from ..errors import DiskFull, Stopped
from ..model.weights import rng_state, set_rng_state
from . import parallel
from .callbacks import CPUBFloat16, EpochEnd, Progress, ProgressLog
from .resume import Checkpoint, ResumePoint, Schedule

log = logging.getLogger("ulmfit")


def fit_schedule(learn, stages: Sequence[Stage], stage: str, checkpoint: Checkpoint,
                 progress: Progress | None = None,
                 discriminative: bool = False) -> tuple[list[dict], dict | None]:
    """Fit `stages` one after another (a one-cycle fit each, with discriminative rates if
    asked: `Stage.rates`), checkpointing after every epoch; returns (history, resumed).

    When `checkpoint` holds the state of an earlier attempt with the same fingerprint, training
    continues from its resume point, with the optimizer and random generators as they were, so
    it takes the steps an uninterrupted run would have taken.
    """
    loaders = {"train": learn.dls.train, "valid": learn.dls.valid}
    state = checkpoint.load()
    start = ResumePoint.of(state)
    schedule = Schedule(stages, start)
    history: list[dict] = [] if state is None else list(state["history"])
    resumed = None
    if state is not None:
        learn.model.load_state_dict(state["model"])
        resumed = {"phase": schedule.stage.name if start.stage < len(stages) else None,
                   "epoch": start.epoch, "epochs_done": len(history)}
        log.info("%s: resuming from %s after %d finished epoch(s)", stage, checkpoint.path, len(history))

    def save(point: ResumePoint) -> None:
        if parallel.rank() == 0:
            checkpoint.save(phase=point.stage, epoch=point.epoch, history=history,
                            model=parallel.unwrap(learn.model).state_dict(),
                            opt=learn.opt.state_dict(), rng=rng_state(loaders))

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
