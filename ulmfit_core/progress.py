"""Progress bars with an ETA for the long stages (ingest, tokenization, training epochs,
evaluation), drawn with rich on a terminal. Off a terminal (CI, workers, a redirected log) no
bar is drawn: the stages' plain log lines say how far they are, there and in the Prefect UI.

Bars drawn at the same time (two directions training side by side) share one display; it
starts with the first bar and ends with the last.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column
from rich.text import Text
from rich.theme import Theme

_lock = threading.Lock()
_console: Console | None = None
_display: Progress | None = None
_open = 0


def use_console(console: Console | None) -> None:
    """Draw bars on `console` (None: a console on stderr). The `ulmfit` command passes the one
    Prefect's log handler prints with, so that log lines appear above the bars. A console with a
    theme of its own (Prefect's does not inherit rich's defaults) gets the bars' styles."""
    global _console
    if console is not None:
        console.push_theme(Theme({k: v for k, v in DEFAULT_STYLES.items()
                                  if k.startswith(("bar.", "progress."))}))
    _console = console


def _terminal() -> Console | None:
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console if _console.is_terminal else None


class _Description(ProgressColumn):
    """The bar's description: the first column to narrow, down to one character, drawn on one
    line ending in an ellipsis."""

    def render(self, task: Task) -> "_Description.Shortened":
        return self.Shortened(Text(task.description, no_wrap=True, overflow="ellipsis"))

    @dataclass
    class Shortened:
        text: Text

        def __rich_measure__(self, console: Console, options) -> Measurement:
            return Measurement(1, self.text.cell_len)

        def __rich_console__(self, console: Console, options):
            yield self.text


class Bar:
    """One bar: description, done/total, elapsed, ETA and a free `info` text (a loss)."""

    def __init__(self, description: str, total: int) -> None:
        global _display, _open
        self.task = None
        with _lock:
            console = _terminal()
            if console is None:
                return
            if _display is None:
                # On a narrow terminal the description is shortened; the bar and the
                # figures (done/total, elapsed, ETA, loss) keep their width.
                _display = Progress(_Description(table_column=Column(no_wrap=False)),
                                    BarColumn(bar_width=12, table_column=Column(no_wrap=True)),
                                    *(column(table_column=Column(no_wrap=True)) for column in (
                                        MofNCompleteColumn, TimeElapsedColumn,
                                        partial(TextColumn, "ETA"), TimeRemainingColumn,
                                        partial(TextColumn, "{task.fields[info]}"))),
                                    console=console, transient=True)
                _display.start()
            _open += 1
            self.display = _display
            self.task = _display.add_task(description, total=total, info="")

    def update(self, completed: int | None = None, advance: int | None = None,
               info: str | None = None) -> None:
        if self.task is None:
            return
        fields = {} if info is None else {"info": info}
        self.display.update(self.task, completed=completed, advance=advance, **fields)

    def close(self) -> None:
        global _display, _open
        if self.task is None:
            return
        with _lock:
            self.display.refresh()  # the bar as it ends, drawn at least once however short
            self.display.remove_task(self.task)
            self.task = None
            _open -= 1
            if _open == 0:
                _display.stop()
                _display = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
