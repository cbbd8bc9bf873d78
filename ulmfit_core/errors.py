"""The errors that are never retried. Bad input or settings fail the same way every time: the
command line ends with exit status 2 and their one-line message. A stop on request (Ctrl-C,
SIGTERM) ends training after its current batch, to be resumed by a rerun."""

from __future__ import annotations

import threading


class DataError(ValueError):
    """Input that cannot be used; the message names the file (and row) and what is wrong."""


class DamagedFile(DataError):
    """A file that no longer matches the SHA-256 recorded when it was written, or cannot be read."""


# What a task never retries and the CLI reports as one line: bad input and bad settings
# (ValueError, with DataError), missing files and a diverging loss fail the same way every time.
BAD_INPUT = (ValueError, FileNotFoundError, FloatingPointError)


class Stopped(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) after its current batch; the checkpoint of
    its last finished epoch is kept, so the same command resumes from there. Never retried."""


# Set to stop every training of this process after its current batch, with `Stopped` (on Ctrl-C
# or SIGTERM: flows.runtime.stopping_training).
STOP = threading.Event()
