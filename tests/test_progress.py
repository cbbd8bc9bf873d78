"""Progress bars: on a terminal, a bar per training epoch (batches, loss, ETA) and for reading
the corpus; off a terminal, nothing drawn."""

from __future__ import annotations

import io
import re
import shutil

import pytest
from rich.console import Console
from rich.theme import Theme

from ulmfit_core import progress, stages
from ulmfit_core.config import get_preset
from ulmfit_core.run.layout import RunDir


def _console(terminal: bool, width: int = 160) -> io.StringIO:
    """A console like Prefect's log handler's: a theme of its own that does not inherit rich's
    default styles."""
    screen = io.StringIO()
    progress.use_console(Console(file=screen, force_terminal=terminal, width=width, color_system=None,
                                 theme=Theme({"level.info": "cyan"}, inherit=False)))
    return screen


@pytest.fixture
def restore_console():
    yield
    progress.use_console(None)


def test_a_terminal_shows_each_epoch_and_the_corpus_being_read(tmp_path, preprocessed,
                                                               sample_tarball, restore_console):
    screen = _console(terminal=True)
    run = RunDir(tmp_path / "run")
    shutil.copytree(preprocessed, run.root)
    stages.lm_stage(run, get_preset("tiny"), 0)
    drawn = screen.getvalue()
    for epoch in (1, 2, 3):
        line = re.search(rf"lm epoch {epoch}/3 fit .*", drawn)
        assert line, drawn[-2000:]
        assert re.search(r"(\d+)/\1 .*ETA.* loss \d\.\d{4}", line.group()), line.group()
    stages.ingest_stage(RunDir(tmp_path / "read"), str(sample_tarball), None, 0, 100)
    assert f"reading {sample_tarball.name} (MB)" in screen.getvalue()


def test_elsewhere_nothing_is_drawn(tmp_path, preprocessed, restore_console):
    screen = _console(terminal=False)
    run = RunDir(tmp_path / "run")
    shutil.copytree(preprocessed, run.root)
    stages.lm_stage(run, get_preset("tiny"), 0)
    assert screen.getvalue() == ""


def test_an_80_column_terminal_shortens_the_description_not_the_figures(restore_console):
    screen = _console(terminal=True, width=80)
    with progress.Bar("classifier epoch 2/3 freeze_to(-2) of a long description", 3260) as bar:
        bar.update(completed=326, info="loss 0.3456")
    last = re.findall(r"classifier epoch [^\r\x1b]*", screen.getvalue())[-1]  # as the bar ends
    assert re.fullmatch(r"classifier epoch 2/3 \S*… ━* +326/3260 \d:\d\d:\d\d ETA \S+ loss "
                        r"0\.3456 *", last), last
    assert len(last) <= 80
