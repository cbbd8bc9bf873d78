"""Data-parallel training stages on Dask workers: N ranks of one stage, one per worker
(`ulmfit_core.training.parallel` holds what each rank does).

The ranks go to workers of a Dask cluster (those that declare `resource`, e.g. `dask worker
--resources GPU=1`), or to a LocalCluster of N worker processes started here (on a machine with
several GPUs, one GPU each). Rank 0's worker hosts the rendezvous, on a port found free there.
A rank that fails, or whose worker leaves the cluster, ends the stage with an error naming the
rank and the worker; the other ranks are cancelled, and the task's retry starts all ranks again
from the checkpoint rank 0 wrote after the last finished epoch.

The ranks' log lines (rank 0's, and the others' warnings) and rank 0's progress travel back as
Dask events, and the task that directs the ranks logs and reports them: they reach the terminal,
the run's log file and the Prefect UI like those of a training in the flow's own process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Iterator
from urllib.parse import urlparse

from distributed import Client, get_worker, wait

from tasks.processes import LocalCluster
from ulmfit_core.errors import BAD_INPUT, STOP, RankFailed, Stopped
from ulmfit_core.rendezvous import RENDEZVOUS_TIMEOUT_S, free_port

log = logging.getLogger("ulmfit")


@dataclass(frozen=True)
class Ranks:
    """How a training stage spreads: `n` ranks, on the Dask scheduler at `address` (None: a
    LocalCluster of n workers here), on workers that declare `resource` (None: any worker);
    `threads`: CPU threads per rank (None: each machine's cores shared out among its ranks)."""

    n: int
    address: str | None = None
    resource: str | None = None
    timeout_s: float = RENDEZVOUS_TIMEOUT_S
    threads: int | None = None


@contextmanager
def _client(ranks: Ranks) -> Iterator[Client]:
    if ranks.address:
        with Client(ranks.address) as client:
            yield client
        return
    with LocalCluster(n_workers=ranks.n, threads_per_worker=1, processes=True, memory_limit=0,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        try:
            yield client
        finally:  # workers leave before the scheduler stops, not in the middle of a heartbeat
            client.retire_workers(close_workers=True)


def _workers(client: Client, resource: str | None) -> list[str]:
    """Addresses of the workers that can take a rank, in a stable order."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(w for w, i in info.items() if resource is None or i.get("resources", {}).get(resource, 0) >= 1)


def _pick_workers(client: Client, ranks: Ranks) -> list[str]:
    """N workers for the ranks, waiting up to the timeout for the cluster to have them."""
    deadline = time.monotonic() + ranks.timeout_s
    while len(found := _workers(client, ranks.resource)) < ranks.n:
        if time.monotonic() > deadline:
            which = f"declaring resource {ranks.resource}" if ranks.resource else "in all"
            raise RankFailed(f"--train-workers {ranks.n} needs {ranks.n} Dask workers {which}; "
                             f"the cluster had {len(found)} after {ranks.timeout_s:g} s")
        time.sleep(0.5)
    return found[:ranks.n]


def _stop_training() -> None:
    STOP.request("a stop of the directing process")


class _ToDirector(logging.Handler):
    """On a rank's worker: the log records of the rank's thread (not those of other tasks the
    worker runs), as Dask events for the client directing the ranks."""

    def __init__(self, topic: str, rank: int) -> None:
        super().__init__()
        self.worker, self.topic, self.rank = get_worker(), topic, rank
        self.addFilter(lambda record, thread=threading.get_ident(): record.thread == thread)

    def emit(self, record: logging.LogRecord) -> None:
        try:  # the message with its traceback, if any
            self.worker.log_event(self.topic, {"rank": self.rank, "level": record.levelno,
                                               "message": self.format(record)})
        except Exception:
            self.handleError(record)


def _rank(topic: str, progress: bool, fn, args: tuple, kwargs: dict, rank: int, *group):
    """What a worker runs: `parallel.run_rank`, its log lines (and, with `progress`, rank 0's
    progress) sent to the directing client under `topic`."""
    from ulmfit_core.training.parallel import run_rank

    to_director = _ToDirector(topic, rank)
    if progress and rank == 0:
        def progress_event(fraction: float, message: str) -> None:
            to_director.worker.log_event(topic, {"progress": fraction, "message": message})

        kwargs = {**kwargs, "progress": progress_event}
    return run_rank(fn, args, kwargs, rank, *group, log_to=to_director)


def run_ranks(ranks: Ranks, fn, *args, progress=None, **kwargs) -> list:
    """`fn(*args, **kwargs)` as the N ranks of one training group; each rank's result, in rank
    order. With `progress` (a hook (fraction, message)), rank 0 gets a `progress` argument whose
    calls arrive here. Bad input (a `DataError`), a diverging loss or a stop on request is
    raised as it is, anything else as `RankFailed` naming the rank and its worker."""
    with _client(ranks) as client:
        workers = _pick_workers(client, ranks)
        hosts = [urlparse(w).hostname for w in workers]
        port = client.run(free_port, workers=[workers[0]])[workers[0]]
        log.info("training on %d ranks: %s (rendezvous at %s:%d)", ranks.n, ", ".join(workers),
                 hosts[0], port)
        tag = uuid.uuid4().hex[:8]
        topic, events = f"ulmfit-ranks-{tag}", queue.SimpleQueue()
        client.subscribe_topic(topic, lambda event: events.put(event[1]))
        futures = [
            client.submit(_rank, topic, progress is not None, fn, args, kwargs, r, ranks.n, hosts[0],
                          port, ranks.timeout_s, hosts[:r].count(hosts[r]), hosts.count(hosts[r]),
                          ranks.threads, key=f"ulmfit-rank-{r}-{tag}", workers=[w],
                          allow_other_workers=False, pure=False,
                          resources={ranks.resource: 1} if ranks.resource else None)
            for r, w in enumerate(workers)]
        relay = partial(_relay, events, progress)
        try:
            return _results(client, futures, workers, relay)
        finally:
            client.cancel([f for f in futures if not f.done()], force=True)
            with suppress(Exception):  # the ranks' last words: never in the way of their result
                relay()
            with suppress(Exception):
                client.unsubscribe_topic(topic)


def _relay(events: queue.SimpleQueue, progress) -> None:
    """Log here the ranks' lines that arrived (another rank's named with its number), and
    report rank 0's progress."""
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if "progress" in event:
            if progress is not None:
                progress(event["progress"], event["message"])
        else:
            rank, message = event["rank"], event["message"]
            named = rank == 0 or message.startswith(f"rank {rank} ")
            log.log(event["level"], message if named else f"rank {rank}: {message}")


def _lost(client: Client, futures: list, workers: list[str]) -> list[int]:
    alive = set(client.nthreads())  # scheduler_info can list no workers while they are busy
    return [r for r, w in enumerate(workers) if w not in alive and futures[r].status != "finished"]


def _results(client: Client, futures: list, workers: list[str], relay) -> list:
    """Wait for every rank, relaying what they say; at the first failure or lost worker, raise
    naming it."""
    while True:
        try:
            wait([f for f in futures if not f.done()], timeout=1, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        relay()
        if all(f.status == "finished" for f in futures):
            return [f.result() for f in futures]
        if STOP.is_set():
            client.run(_stop_training, workers=workers)
            raise Stopped("stopped on request: every rank stops after its current batch")
        failed = [r for r, f in enumerate(futures) if f.status == "error"]
        lost = _lost(client, futures, workers)
        if failed and not lost:  # a rank whose peer died fails first: let the scheduler see it
            for _ in range(10):
                time.sleep(0.5)
                if lost := _lost(client, futures, workers):
                    break
        if lost:
            r = lost[0]
            raise RankFailed(f"rank {r} of {len(futures)} died with its worker {workers[r]} "
                             "(the worker left the cluster)")
        if failed:
            r = failed[0]
            exc = futures[r].exception()
            if isinstance(exc, (*BAD_INPUT, Stopped)):
                raise exc
            raise RankFailed(f"rank {r} of {len(futures)} on worker {workers[r]} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
