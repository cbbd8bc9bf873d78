"""What every task module shares: the set-up of the process that runs a task, which failures
are worth a retry, and run artifacts as assets."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import prefect
from prefect import Task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import Asset
from prefect.tasks import MaterializingTask

from ulmfit_core.errors import BAD_INPUT, Stopped


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


def task(**options):
    """`prefect.task` for this project: the function runs after `set_up_process()`, in whichever
    process runs it."""
    def decorate(fn):
        @functools.wraps(fn)
        def set_up_then_run(*args, **kwargs):
            set_up_process()
            return fn(*args, **kwargs)

        return prefect.task(**options)(set_up_then_run)

    return decorate


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except (*BAD_INPUT, Stopped):
        return False
    except Exception:
        return True
    return True


def asset_key(out: str, path: str) -> str:
    """The Prefect asset key of a run artifact: a file:// URI (`path` relative to `out`)."""
    return "file://" + str(Path(out, path).resolve())


def materializing(task: Task, out: str, writes: list[str], reads: list[str] = ()) -> Task:
    """`task` as one that materializes the artifacts `writes` from `reads` (paths in the run
    directory `out`, or absolute), so the Prefect UI draws the run's lineage graph. A path that
    cannot be an asset key (spaces, '%', ...) leaves the task as it is, with a warning."""
    try:
        assets = [Asset(key=asset_key(out, w)) for w in writes]
        deps = [Asset(key=asset_key(out, r)) for r in reads]
    except ValueError as exc:
        logging.getLogger("ulmfit").warning("no Prefect assets for %s: %s", out, exc)
        return task
    return MaterializingTask(fn=task.fn, assets=assets, asset_deps=deps, name=task.name,
                             task_run_name=task.task_run_name, retries=task.retries,
                             retry_delay_seconds=task.retry_delay_seconds,
                             retry_condition_fn=task.retry_condition_fn)


def progress_artifact(what: str):
    """A progress artifact in the Prefect UI, and the hook that moves it (fraction, message)."""
    artifact = create_progress_artifact(0.0, description=what)

    def update(fraction: float, message: str) -> None:
        update_progress_artifact(artifact, progress=round(100 * fraction, 1), description=message)

    return update
