"""Who holds a run directory and how its runs ended: the lock (an OS lock on `.lock`; on object
storage, the lease of `lease`) and run.json (running, then complete, failed or stopped, with the
shaping settings the directory was made with).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Iterator

from ..errors import DataError, RunInUse, Stopped
from . import store
from .layout import RunDir, read_json, write_json
from .lease import leased
from .storage import is_url

log = logging.getLogger("ulmfit")


@contextmanager
def run_lock(run: RunDir, wait_s: float = 0) -> Iterator[None]:
    """Hold the run directory for this process (an OS lock on `.lock`, freed when the process
    ends, also by a crash, so a crashed run can be resumed into the same directory). A
    directory another live process holds is refused, or with `wait_s` waited for that long."""
    run.root.mkdir(parents=True, exist_ok=True)
    path = run.root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                waited = f" (waited {wait_s:g} s)" if wait_s else ""
                raise RunInUse(f"{run.root} is in use by a run still going ({_holder(path)}){waited}: "
                               "wait for it to end, or give another --out") from None
            if not told:
                log.info("%s is in use by a run still going (%s): waiting up to %g s for it to end",
                         run.root, _holder(path), wait_s)
                told = True
            time.sleep(1)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(lock: Path) -> str:
    """Which process holds a run directory, as its lock file says."""
    return lock.read_text(encoding="utf-8").strip() or "another process"


# The parameters that shape a run directory's artifacts (vocab, model sizes, splits). Two
# schedules writing one directory with different values would rebuild each other's work forever.
SHAPING = ("preset", "tokenizer", "vocab_size", "seed", "lang", "text_column", "label_column",
           "split_column", "id_column", "test_share")


def made_with(run: RunDir) -> dict:
    """The shaping settings the run directory was made with ({} for a new directory)."""
    return read_json(run.status).get("settings", {}) if run.status.exists() else {}


def _check_settings(run: RunDir, params: dict, reset: bool) -> dict:
    """The directory's shaping settings after this run; refuses a change unless `reset`."""
    previous = made_with(run)
    asked = {k: params[k] for k in SHAPING if k in params}
    clash = [k for k, v in asked.items() if k in previous and previous[k] != v]
    if clash and not reset:
        def listed(values: dict) -> str:
            return ", ".join(f"{k} {values[k]!r}" for k in clash)

        raise DataError(f"{run.root} holds a run made with {listed(previous)}; this run asks for "
                        f"{listed(asked)}: give another --out, or --reset to rebuild it with the "
                        "new settings")
    return {**previous, **asked}


def mark_stopped(run: RunDir, why: str) -> None:
    """Mark the run this process holds stopped, for `why`: what ended it from outside the block
    that tracks it (the command ends without getting back to it, or that block saw only the
    error the cause led to)."""
    status = read_json(run.status) if run.status.exists() else {}
    if status.get("pid") == os.getpid() and status.get("status") != "complete":
        write_json(run.status, {**status, "status": "stopped", "error": why,
                                "seconds": time.time() - status["started"]})


def _say_if_died(run: RunDir) -> None:
    """An earlier run that left run.json `running` ended without a word (killed, or its machine
    lost): the lock it held is free, so its process is gone. Say so, rather than trust it."""
    earlier = read_json(run.status) if run.status.exists() else {}
    if earlier.get("status") != "running":
        return
    who = f"pid {earlier['pid']} on {earlier['host']}" if "pid" in earlier else "its process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(earlier.get("started", 0)))
    log.warning("%s: the run started %s died without finishing (%s is gone); what it finished, "
                "checkpoints included, is reused", run.root, when, who)


@contextmanager
def tracked_run(run: RunDir, params: dict, reset: bool = False, wait_s: float = 0,
                check=lambda: None, lock=run_lock, publish=lambda *paths: None) -> Iterator[RunDir]:
    """Hold the run directory (waiting up to `wait_s` for another run to end), mark it running,
    then complete, failed or stopped; drop the old summary while it runs. A run whose shaping
    settings (`SHAPING`) differ from those the directory was made with is refused unless `reset`,
    and so is one whose `check()` raises (what it reads is damaged): before anything changes.

    metrics.json and report.md are the marks of a finished run, so they are removed first and
    only written again by a run that gets to its end. `lock(run, wait_s)` holds the directory;
    `publish(*paths)` is told of each status file written or removed (a run on object storage
    writes them back at once: `tracked`).
    """
    with lock(run, wait_s):
        settings = _check_settings(run, params, reset)
        check()
        _say_if_died(run)
        for stale in (run.metrics, run.report):
            stale.unlink(missing_ok=True)
        publish(run.metrics, run.report)
        started = time.time()
        status = {"status": "running", "params": params, "settings": settings, "started": started,
                  "pid": os.getpid(), "host": socket.gethostname()}
        publish(write_json(run.status, status))
        try:
            yield run
        except BaseException as exc:
            # An interruption (Ctrl-C, a termination signal) or a stop on request is not a failure:
            # rerunning the same command resumes from the checkpoints.
            stopped = isinstance(exc, Stopped) or not isinstance(exc, Exception)
            publish(write_json(run.status, {**status, "status": "stopped" if stopped else "failed",
                                            "error": f"{type(exc).__name__}: {exc}".rstrip(": "),
                                            "seconds": time.time() - started}))
            raise
        publish(write_json(run.status, {**status, "status": "complete", "seconds": time.time() - started}))


@contextmanager
def tracked(out: str, params: dict, reset: bool = False, wait_s: float = 0,
            check=lambda: None) -> Iterator[None]:
    """`tracked_run` on a local run directory or one on object storage: held (by its
    lease), its status (run.json) written back each time it changes, the summary of the last run
    removed when this one starts."""
    if not is_url(out):
        with tracked_run(RunDir(out), params, reset, wait_s, check):
            yield
        return
    with leased(out, wait_s), store.local_copy(out, store.MARKS, write_back=False) as local:
        publish = partial(store.publish, out, Path(local))
        with tracked_run(RunDir(local), params, reset, check=check,
                         lock=lambda run, wait_s: nullcontext(), publish=publish):
            yield


def stop_marked(out: str, why: str) -> None:
    """`mark_stopped` on a local run directory or one on object storage."""
    with store.local_copy(out, ["run.json"]) as local:
        mark_stopped(RunDir(local), why)
