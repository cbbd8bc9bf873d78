"""The errors that mean "the input or the settings are wrong": the same every time, so they are
never retried, and the command line ends with exit status 2 and their one-line message."""

from __future__ import annotations


class DataError(ValueError):
    """Input that cannot be used; the message names the file (and row) and what is wrong."""


class DamagedFile(DataError):
    """A file that no longer matches the SHA-256 recorded when it was written, or cannot be read."""


# What a task never retries and the CLI reports as one line: bad input and bad settings
# (ValueError, with DataError), missing files and a diverging loss fail the same way every time.
BAD_INPUT = (ValueError, FileNotFoundError, FloatingPointError)
