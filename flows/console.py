"""What a command shows on its terminal and keeps in the run's log: Prefect's log lines above the
progress bars, each error as one line there and in full (tracebacks included) in the log file."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from tasks.processes import RUN_LOG, RunLog
from ulmfit_core.progress import use_console


def _console_handlers() -> list:
    """Prefect's terminal log handlers, on every logger."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)]


def bars_with_logs() -> None:
    """On a terminal, Prefect's log handlers and the progress bars print through one console,
    so that log lines appear above the bars instead of cutting through them."""
    handlers = _console_handlers()
    if handlers and handlers[0].console.is_terminal:
        for handler in handlers:
            handler.console = handlers[0].console
        use_console(handlers[0].console)


@contextmanager
def tracebacks_to_file(log_file: Path, shown: str | None = None) -> Iterator[Path]:
    """While a command runs, log records go in full (tracebacks included) to `log_file`, and the
    terminal shows each error as its one-line message with a pointer to that file (named
    `shown`, where the file is a local copy): a failed stage ends in a line that names the
    problem, not under pages of Prefect engine frames."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = RunLog(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    consoles = {h.formatter for h in _console_handlers() if h.formatter is not None}

    def without_traceback(format_record):
        def format(record: logging.LogRecord) -> str:
            # Another handler may have cached the traceback text on the record: hide both for
            # this line only, so the file handler still writes the traceback in full.
            saved = record.exc_info, record.exc_text, record.stack_info
            if not any(saved):
                return format_record(record)
            record.exc_info = record.exc_text = record.stack_info = None
            try:
                return f"{format_record(record)}  (traceback in {shown or log_file})"
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved
        return format

    for formatter in consoles:
        formatter.format = without_traceback(formatter.format)
    root.addHandler(to_file)
    os.environ[RUN_LOG] = str(log_file)  # for the local workers this command starts
    try:
        yield log_file
    finally:
        os.environ.pop(RUN_LOG, None)
        root.removeHandler(to_file)
        with suppress(OSError):  # the last flush, on a full disk
            to_file.close()
        for formatter in consoles:
            del formatter.format
