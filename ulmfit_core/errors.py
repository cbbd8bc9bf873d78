"""The project's errors. Most are never retried: bad input or settings fail the same way every
time, and the command line ends with exit status 2 and their one-line message; a stop on request
(Ctrl-C, SIGTERM) ends training after its current batch, to be resumed by a rerun. The ranks of
a data-parallel stage fail in ways a retry may get past (`RendezvousFailed`, `RankFailed`)."""

from __future__ import annotations

import errno
import os
import threading


class DataError(ValueError):
    """Input that cannot be used; the message names the file (and row) and what is wrong."""


class DamagedFile(DataError):
    """A file that no longer matches the SHA-256 recorded when it was written, or cannot be read."""


class OutOfDeviceMemory(DataError):
    """A training stage did not fit in the GPU's memory. Its settings must change (a smaller
    batch), so like bad input it ends the command with one line and is never retried."""


class RunInUse(ValueError):
    """Another live process is writing into this run directory."""


class RendezvousFailed(RuntimeError):
    """The ranks of a stage did not all meet; a retry may find the workers it needs."""


class RankFailed(RuntimeError):
    """A rank of a data-parallel stage failed or lost its worker; a retry starts all ranks again."""


class DiskFull(OSError):
    """A write that ran out of space (ENOSPC, or EDQUOT: a quota): the message names the file,
    what was written and what is free. The disk does not empty itself between retries."""


# What a task never retries and the CLI reports as one line: bad input and bad settings
# (ValueError, with DataError), missing files, a diverging loss and a full disk fail the same
# way every time.
BAD_INPUT = (ValueError, FileNotFoundError, FloatingPointError, DiskFull)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a write that met a full disk or quota."""
    seen = exc
    while seen is not None:
        if isinstance(seen, DiskFull) or isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes an unprivileged process can still write on `folder`'s filesystem."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


class Stopped(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) after its current batch; the checkpoint of
    its last finished epoch is kept, so the same command resumes from there. Never retried."""


class StopRequest(threading.Event):
    """Set to stop every training of this process after its current batch, with `Stopped`;
    `why` says what asked (SIGINT, SIGTERM, the loss of the Prefect API), so that whatever error
    the stop then surfaces as is known for a stop."""

    why: str | None = None

    def request(self, why: str) -> None:
        if self.why is None:
            self.why = why
        self.set()

    def clear(self) -> None:
        self.why = None
        super().clear()


STOP = StopRequest()


def check_stop(what: str) -> None:
    """Raise `Stopped` if a stop was asked for: the check a long stage makes between its steps,
    and every task as it starts."""
    if STOP.is_set():
        raise Stopped(f"{what}: stopped ({STOP.why})")
