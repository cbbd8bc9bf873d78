"""The Prefect API a command reports to: the one PREFECT_API_URL names, or a temporary local
server the command starts and stops, and the watch that stops the command when the API stops
answering."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from tasks.processes import start_tied
from ulmfit_core.errors import STOP
from ulmfit_core.run.status import stop_marked

log = logging.getLogger("ulmfit")


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
