"""Where the flows run: the Prefect API they report to, the Dask cluster they use, and where
their training goes."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import dask
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from tasks.processes import RUN_LOG, LocalCluster, RunLog, start_tied
from tasks.ranks import Ranks
from ulmfit_core.errors import STOP, check_stop
from ulmfit_core.progress import use_console
from ulmfit_core.runstatus import stop_marked

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
      (`RunParams` makes sure such a run names the cluster).
    - With `workers` > 1, each training spreads over that many workers as data-parallel ranks
      (`tasks.ranks`), which the flow's process sends out and watches.

    A chain of training tasks (one direction, one number of labels) waits for the one before it,
    except on the workers with the resource: there chains run side by side. Here they would fight
    over the same cores, and the ranks of a training take the workers themselves.
    """

    address: str | None = None
    resource: str | None = None
    workers: int = 1

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


def _temporary_server():
    """Prefect's temporary server (`SubprocessASGIServer`), started with Prefect's command and
    settings, in a session of its own and tied to this process (`tasks.processes`): a
    terminal's Ctrl-C leaves it to this command to stop, and it never outlives the command."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TemporaryServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            return start_tied(["uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                               "--factory", "prefect.server.api.server:create_app",
                               "--host", "127.0.0.1", "--port", str(self.port),
                               "--log-level", "error", "--lifespan", "on"], env)

        def stop(self) -> None:
            process = self.server_process
            super().stop()
            if process is not None:
                os.close(process.lifeline)

    return TemporaryServer()


@contextmanager
def prefect_api() -> Iterator[str]:
    """Use PREFECT_API_URL when set; otherwise start one temporary local Prefect server.

    The server's address goes into the environment so that Dask worker processes report to the
    same server as the flow instead of each starting a server of their own.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server = _temporary_server()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    log.info("temporary Prefect server at %s", server.address)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # deliver the last log lines before the server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


# How long the command waits for a Prefect API that stopped answering before it stops
# (ULMFIT_API_PATIENCE_S): long enough for a server to restart, short of looking hung.
API_PATIENCE_S = float(os.environ.get("ULMFIT_API_PATIENCE_S", 60))
# What the command exits with when it stopped for want of its API: a temporary failure, to be
# retried (sysexits' EX_TEMPFAIL); the rerun resumes.
API_LOST = 75


# What a stopped job's output keeps for the same command to resume from.
KEPT = "shards, each training's last finished epoch"


class ApiWatch:
    """Watches the Prefect API a command reports to. Once it has not answered for
    `API_PATIENCE_S`, the command stops: trainings end after their current batch (their last
    finished epoch is kept) and `lost` says why. Prefect's client retries each call for a minute
    or more, so a command whose flow engine still waits on the API after `grace_s` more marks
    its run directory stopped and exits (`API_LOST`) from here, its processes ending with it."""

    def __init__(self, api: str, out: str, kept: str = KEPT, grace_s: float = 15,
                 every_s: float = 2) -> None:
        self.api, self.out, self.kept, self.grace_s, self.every_s = api, out, kept, grace_s, every_s
        self.lost: str | None = None
        self._done = threading.Event()

    def __enter__(self) -> "ApiWatch":
        threading.Thread(target=self._watch, name="prefect-api-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        # Prefect's own client (its auth and TLS settings), asking once per check: this thread
        # keeps the time since the API last answered.
        with temporary_settings({PREFECT_API_URL: self.api, PREFECT_CLIENT_MAX_RETRIES: 0}), \
                get_client(sync_client=True) as client:
            answered = time.monotonic()
            while not self._done.wait(self.every_s):
                if client.api_healthcheck() is None:
                    answered = time.monotonic()
                elif time.monotonic() - answered >= API_PATIENCE_S:
                    break
            else:
                return
        self.lost = (f"stopped: the Prefect API at {self.api} has not answered for "
                     f"{API_PATIENCE_S:g} s; {self.out} keeps what was finished ({self.kept}): "
                     "run the same command again to resume")
        log.error("%s", self.lost)
        STOP.request(self.lost)
        if self._done.wait(self.grace_s):
            return  # the command ended on its own and says why
        stop_marked(self.out, self.lost)
        print(f"ulmfit: {self.lost}", file=sys.stderr, flush=True)
        for handler in logging.getLogger().handlers:  # the run's log file; not the API's
            if isinstance(handler, logging.FileHandler):
                handler.flush()
        os._exit(API_LOST)
