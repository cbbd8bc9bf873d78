"""What every task module shares: which failures are worth a retry, and run artifacts as assets."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import Task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import Asset
from prefect.tasks import MaterializingTask

from ulmfit_core.errors import BAD_INPUT

# The core logs progress to "ulmfit"; Prefect forwards it (PREFECT_LOGGING_EXTRA_LOGGERS).
logging.getLogger("ulmfit").setLevel(logging.INFO)


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except BAD_INPUT:
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
