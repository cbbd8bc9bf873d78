"""What every task module shares: the set-up of the process that runs a task, which failures
are worth a retry, and run artifacts as assets."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import prefect
from distributed import get_worker
from prefect import Task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import Asset
from prefect.tasks import MaterializingTask

from ulmfit_core.errors import BAD_INPUT, DiskFull, Stopped, check_stop, out_of_space
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.storage import SCHEME, ObjectPath, is_url
from ulmfit_core.run.store import local_copy


def set_up_process() -> None:
    """Set up whichever process runs a task of this project (the `ulmfit` command, a worker's
    flow run, a Dask worker here or on a cluster), when the task starts; idempotent.

    - The core logs its progress to the "ulmfit" logger at INFO: its lines go where Prefect
      sends its own, the terminal and the run's logs in the UI.
    - Arrow allocates with malloc: its default, mimalloc, keeps about 45 MB more per process for
      the small tables of a shard. Processes started from this one (a local Dask cluster's
      workers) read both settings from the environment.
    """
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ulmfit")
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    core = logging.getLogger("ulmfit")
    core.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:  # Prefect's API log handler
        if handler not in core.handlers:
            core.addHandler(handler)
    if os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system":
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


# The files of a run directory a task writes or reads, as a function of the RunDir (its
# direction's model folders included): what the task declares beside its definition.
Files = Callable[[RunDir], Iterable[Path]]
# The files and folders of a run a task works on (reads, and checks its outputs against), as a
# function of a RunDir relative to the run (its direction's) and of the task's arguments: what a
# task given a run on object storage copies in (`run.store.local_copy`); None where the task's
# data-parallel ranks make their own copies.
Pulls = Callable[[RunDir, dict], "Iterable[str | Path] | None"]


def task(writes: Files | None = None, reads: Files | None = None, pulls: Pulls | None = None,
         **options):
    """`prefect.task` for this project: the function runs after `set_up_process()`, in whichever
    process runs it. A task that `writes` files of a run directory, from those it `reads`,
    materializes them as Prefect assets once `for_run` names the run. A task whose `out` is a run
    on object storage runs on a local copy of the run's files it `pulls`, and its changes are
    written back."""
    def decorate(fn):
        stage = fn.__name__.replace("_", " ")
        signature = inspect.signature(fn)

        def on_local_copy(args, kwargs):
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            out = call.arguments.get("out")
            names = None if pulls is None or out is None or not is_url(out) else run_files(pulls, call.arguments)
            if names is None:
                return fn(*args, **kwargs)
            with local_copy(out, names) as local:
                call.arguments["out"] = local
                return fn(*call.args, **call.kwargs)

        @functools.wraps(fn)
        def set_up_then_run(*args, **kwargs):
            set_up_process()
            if not _on_dask_worker():  # a worker's STOP is its ranks' (`tasks.ranks`), not a run's
                check_stop(stage)
            try:
                return on_local_copy(args, kwargs)
            except Exception as exc:  # a full disk, with its stage: the command's one line
                if not out_of_space(exc):
                    raise
                raise DiskFull(f"{stage}: {exc}") from None

        if writes is None:
            return prefect.task(**options)(set_up_then_run)
        made = MaterializingTask(fn=set_up_then_run, assets=[], **options)
        made.files = (writes, reads or (lambda run: []))
        return made

    return decorate


def run_files(pulls: Pulls, arguments: dict) -> list[str] | None:
    """What `pulls` names for a task's `arguments`, as paths relative to the run ("" for all of
    it); None where the task makes its local copies itself (data-parallel ranks)."""
    named = pulls(RunDir("", arguments.get("backwards", False)), arguments)
    if named is None:
        return None
    return ["" if Path(p).as_posix() == "." else Path(p).as_posix() for p in named]


def _on_dask_worker() -> bool:
    try:
        get_worker()
    except ValueError:
        return False
    return True


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except (*BAD_INPUT, Stopped):
        return False
    except Exception:
        return True
    return True


def for_run(task: MaterializingTask, run: RunDir, *also_reads: str | Path | ObjectPath) -> Task:
    """`task` materializing the files of `run` it declares it writes, downstream of those it
    reads (and `also_reads`, outside the run), so that the Prefect UI draws the run's lineage
    graph. A path that cannot be an asset key (spaces, '%', ...) leaves the task as it is, with
    a warning."""
    writes, reads = task.files
    try:
        assets = [_asset(p) for p in writes(run)]
        deps = [_asset(p) for p in (*reads(run), *also_reads)]
    except ValueError as exc:
        logging.getLogger("ulmfit").warning("no Prefect assets for %s: %s", run.root, exc)
        return task
    return task.with_options(assets=assets, asset_deps=deps)


def _asset(path: str | Path | ObjectPath) -> Asset:
    """A file as a Prefect asset, keyed by its URI: file://, or the object's s3://."""
    text = str(path)
    if text.startswith("s3:/") and not is_url(text):  # a file of a RunDir made from an s3:// URL
        text = SCHEME + text[len("s3:/"):]
    return Asset(key=text if is_url(text) else "file://" + str(Path(path).resolve()))


def progress_artifact(what: str):
    """A progress artifact in the Prefect UI, and the hook that moves it (fraction, message).
    The UI's view only: an API that stops answering ends the updates, with one warning, never
    the work they report on."""
    try:
        artifact = create_progress_artifact(0.0, description=what)
    except Exception as exc:
        return _without_artifact(what, exc)
    failed = False

    def update(fraction: float, message: str) -> None:
        nonlocal failed
        if failed:
            return
        try:
            update_progress_artifact(artifact, progress=round(100 * fraction, 1), description=message)
        except Exception as exc:
            failed = True
            _without_artifact(what, exc)

    return update


def _without_artifact(what: str, exc: Exception):
    logging.getLogger("ulmfit").warning("%s: no progress shown in the Prefect UI from here on "
                                        "(%s: %s)", what, type(exc).__name__, exc)
    return lambda fraction, message: None
