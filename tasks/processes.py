"""The processes a command starts beside itself: out of the terminal's way, never left behind.

Ctrl-C in a terminal (SIGINT) and a stop by Docker, systemd or Kubernetes (SIGTERM) reach every
process of the command's process group. Only the command should act on them: it stops its
trainings after their current batch, marks its flow runs and the run directory, then ends what
it started, the local Dask cluster first and the temporary Prefect server last. So what it
starts runs in sessions of its own, where a terminal's signals do not reach, and ends by itself
once the command is gone, even killed with SIGKILL:

- a worker of a local Dask cluster (`LocalCluster`) is born with those signals blocked, moves
  to a session of its own as it starts (`dask_setup`, this module being its preload), drops
  what arrived meanwhile, and exits when its nanny, in the command, is gone (Dask's own
  parent-alive pipe);
- the temporary Prefect server runs as `python -m tasks.processes FD uvicorn ...` (`start_tied`),
  which ends it when the pipe FD, whose other end only the command holds, reads end-of-file.

This module is every local Dask worker's preload.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import resource_tracker

import distributed

# What a terminal, a container runtime or a service manager sends a process group to stop it.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# The environment variable that names the run's log file to the local workers a command starts.
RUN_LOG = "ULMFIT_RUN_LOG"

# How long a tied process has to end on its own once its parent is gone, before it is ended.
GRACE_S = 10


class RunLog(logging.FileHandler):
    """The run's log file (`logs/ulmfit.log`), for the command and its local workers. A write
    that fails (a full disk) is said once, on stderr, and the file left alone from then on,
    instead of a `Logging error` traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        self.failed = True
        print(f"ulmfit: warning: {self.baseFilename}: the run's log stops here ({error})",
              file=sys.stderr)


class LocalCluster(distributed.LocalCluster):
    """A Dask LocalCluster whose workers leave the command's session as they start.

    Its event loop thread, and so every thread that thread starts, blocks `STOP_SIGNALS`: the
    worker processes it spawns (at the start, and any restart) are born with them blocked, and
    a Ctrl-C typed while they start stays pending until `dask_setup` drops it. The command's
    own signals still reach its main thread, where Python handles them."""

    def __init__(self, **kwargs) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        # multiprocessing starts its resource tracker at the first semaphore and unblocks these
        # signals in the thread that did (here, or in the loop thread, for good): start it here.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask | STOP_SIGNALS)
        try:
            super().__init__(preload=[__name__], **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def dask_setup(worker) -> None:
    """Dask's preload hook, run in each local worker process as it starts (in its main thread):
    a session of its own, then the stop signals unblocked, those the command's process group
    received meanwhile dropped (a signal ignored while pending is discarded). Dask's own log
    lines go to the run's log (`RUN_LOG`) instead of the command's terminal, where a worker's
    heartbeat failing as the command stops would print its traceback."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    for sig in STOP_SIGNALS:
        handler = signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        signal.signal(sig, handler)
    if os.environ.get(RUN_LOG):
        to_file = RunLog(os.environ[RUN_LOG], encoding="utf-8")
        to_file.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s (worker pid {os.getpid()}): %(message)s"))
        dask_log = logging.getLogger("distributed")
        for handler in dask_log.handlers[:]:
            dask_log.removeHandler(handler)
        dask_log.addHandler(to_file)
        dask_log.propagate = False


def start_tied(module_args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `python -m MODULE ARGS...` in a session of its own, ended (SIGTERM, then after
    GRACE_S its exit) as soon as this process is gone. Stopping it stays the caller's job."""
    read, write = os.pipe()  # not inherited by anything else this process starts
    try:
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(read), *module_args],
                                env=env, pass_fds=[read], start_new_session=True)
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    proc.lifeline = write  # held open until this process ends or the caller closes it
    return proc


def _end_with_parent(fd: int) -> None:
    while os.read(fd, 64):
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # the parent is gone: shut down as on a stop
    time.sleep(GRACE_S)
    os._exit(1)


def _main(argv: list[str]) -> None:
    fd, module, args = int(argv[0]), argv[1], argv[2:]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the command may block them
    threading.Thread(target=_end_with_parent, args=(fd,), name="lifeline", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
