"""Where the flows' tasks run: the Dask cluster they use, and where their training goes (the
Prefect API they report to: `flows.api`; the terminal and the run's log: `flows.console`)."""

from __future__ import annotations

import logging
import os
import queue
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import dask
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from tasks.processes import LocalCluster
from tasks.ranks import Ranks
from ulmfit_core.errors import STOP, check_stop
from ulmfit_core.run.job import Job

log = logging.getLogger("ulmfit")


def dask_task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """An existing scheduler at `address`, else a LocalCluster of process workers on loopback.

    Each local worker runs one task at a time (tokenization is CPU-bound Python), so `workers`
    defaults to the number of cores.
    """
    if address:
        return DaskTaskRunner(address=address)
    n = workers or len(os.sched_getaffinity(0))
    return DaskTaskRunner(
        cluster_class=LocalCluster,
        cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    )


class TrainingThreads(ThreadPoolTaskRunner):
    """Prefect's thread pool, for trainings in this process. When its flow ends with an error
    while they run (a stop the command was asked for, or Prefect's TerminationSignal when a
    work pool's worker cancels the run), the pool would wait for its threads, each running its
    training to the end; instead the trainings stop after their current batch (`STOP`),
    keeping the checkpoint of their last finished epoch for a rerun to resume from."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None and (STOP.is_set() or not issubclass(exc_type, Exception)):
            STOP.request(exc_type.__name__)
            log.warning("stopping (%s): training ends after its current batch; rerun the same "
                        "command to resume from the last finished epoch", STOP.why)
        super().__exit__(exc_type, exc_value, traceback)


@dataclass(frozen=True)
class Training:
    """Where a flow's training tasks run.

    - By default, in the flow's process (on its GPU if it has one).
    - With `resource`, on the workers of the Dask cluster at `address` that declare it
      (`Job` makes sure such a run names the cluster).
    - With `workers` > 1, each training spreads over that many workers as data-parallel ranks
      (`tasks.ranks`), which the flow's process sends out and watches.

    A chain of training tasks (one direction, one number of labels) waits for the one before it,
    except on the workers with the resource: there chains run side by side. Here they would fight
    over the same cores, and the ranks of a training take the workers themselves.
    """

    address: str | None = None
    resource: str | None = None
    workers: int = 1

    @classmethod
    def of(cls, job: Job) -> Training:
        """Where `job` places its trainings."""
        return cls(job.dask_address, job.train_resource, job.train_workers)

    @property
    def side_by_side(self) -> bool:
        return self.resource is not None and self.workers == 1

    @property
    def ranks(self) -> Ranks | None:
        return Ranks(self.workers, self.address, self.resource) if self.workers > 1 else None

    def task_runner(self):
        return DaskTaskRunner(address=self.address) if self.side_by_side else TrainingThreads(max_workers=2)

    @contextmanager
    def chain(self) -> Iterator[Callable[[PrefectFuture], PrefectFuture]]:
        """Submit a chain of training tasks: `with training.chain() as chain: chain(task.submit(…))`,
        placed on the workers with the resource, and waited for unless chains run side by side."""
        futures: list[PrefectFuture] = []

        def add(future: PrefectFuture) -> PrefectFuture:
            futures.append(future)
            return future

        with dask.annotate(resources={self.resource: 1}) if self.side_by_side else nullcontext():
            yield add
        if not self.side_by_side:
            settled(futures, "training")


def settled(futures: Sequence[PrefectFuture], stage: str, on_done=None) -> None:
    """Wait until every future is done, acting on a stop asked for (`check_stop`) within a
    second. `on_done(n)` is told each time one more is done. Prefect's `wait` with a timeout
    arms an alarm signal in the main thread, raising into whatever runs there."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    done = 0
    while done < len(futures):
        with suppress(queue.Empty):
            finished.get(timeout=1)
            done += 1
            if on_done is not None:
                on_done(done)
        check_stop(stage)
    for future in futures:
        future.wait()  # done: this only records its final state on the future
