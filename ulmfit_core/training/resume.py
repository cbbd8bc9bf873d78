"""Where a training stands: the stages of its schedule and the point reached (`Schedule`,
`ResumePoint`), and the checkpoint that keeps it after every epoch (`Checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import Stage
from ..model.weights import load_checkpoint, save_checkpoint
from ..run.store import written


@dataclass(frozen=True)
class Checkpoint:
    """Where a training keeps the state of its last finished epoch (`path`; None: nowhere), and
    the fingerprint of the data and settings it trains with: a state saved with another is
    never resumed."""

    path: Path | None = None
    fingerprint: str = ""

    def load(self) -> dict | None:
        """The state an earlier attempt saved with this fingerprint, if any."""
        return load_checkpoint(self.path, self.fingerprint)

    def save(self, **state) -> None:
        """Save `state`; a run on object storage gets it at once, so that a lost worker's retry
        resumes from it."""
        if self.path is not None:
            save_checkpoint(self.path, self.fingerprint, **state)
            written(self.path)


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
