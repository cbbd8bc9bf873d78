"""The lease that holds a run directory on object storage while a job runs: the object `.lock`
under the run's prefix, where an OS lock (`status.run_lock`) cannot reach.

It is created with a conditional write (If-None-Match: another holder's lease is never
overwritten), renewed every LEASE_S / 3 by its holder with If-Match (a holder that finds it
taken over stops its run), and taken over only once it has lapsed: a crashed holder's, LEASE_S
after its last renewal. pyarrow's filesystems have no conditional writes, so the lease is written
with boto3, configured from the same environment (`storage`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import STOP, RunInUse
from .storage import ObjectPath, endpoint, failure

log = logging.getLogger("ulmfit")

LEASE = ".lock"
LEASE_S = 60.0


def _client():
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint(), region_name=region,
                        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))


def _refused(exc: Exception) -> bool:
    """A conditional write's precondition did not hold (another writer's object is there)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class Lease:
    """The lease on a run on object storage (see the module's doc)."""

    def __init__(self, out: str) -> None:
        self.out, self.client = out, _client()
        self.bucket, _, prefix = ObjectPath(out).key.partition("/")
        self.key = f"{prefix}/{LEASE}" if prefix else LEASE
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self.token, self.etag = secrets.token_hex(8), None
        self._stop = threading.Event()

    def _body(self) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token,
                           "expires": time.time() + LEASE_S}).encode()

    def _put(self, **condition) -> bool:
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)
        except Exception as exc:
            if _refused(exc):
                return False
            raise failure(self.out, exc) from exc
        self.etag = reply["ETag"]
        return True

    def _current(self) -> tuple[dict, str] | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            raise failure(self.out, exc) from exc
        return json.loads(reply["Body"].read()), reply["ETag"]

    def take(self, wait_s: float = 0) -> None:
        """Take the lease, waiting up to `wait_s` for another holder's to end or lapse."""
        deadline, told = time.monotonic() + wait_s, False
        while True:
            if self._put(IfNoneMatch="*"):
                break
            current = self._current()
            if current is None:
                continue  # released in between
            held, etag = current
            if held["expires"] < time.time():
                log.warning("%s: the lease of %s lapsed (its run ended without releasing it): "
                            "taking it over", self.out, held["holder"])
                if self._put(IfMatch=etag):
                    break
                continue
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_s:g} s)" if wait_s else ""
                raise RunInUse(f"{self.out} is in use by a run still going ({held['holder']}){waited}: "
                               "wait for it to end, or give another --out")
            if not told:
                log.info("%s is in use by a run still going (%s): waiting up to %g s for it to end",
                         self.out, held["holder"], wait_s)
                told = True
            time.sleep(1)
        threading.Thread(target=self._renew, name="run-lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            try:
                renewed = self._put(IfMatch=self.etag)
            except Exception as exc:  # a store that does not answer for a moment: try again
                log.warning("%s: could not renew the run's lease: %s", self.out, exc)
                continue
            if not renewed:
                why = f"{self.out}: another run took over this run's lease; stopping"
                log.error("%s", why)
                STOP.request(why)
                return

    def release(self) -> None:
        self._stop.set()
        current = self._current()
        if current is not None and current[0].get("token") == self.token:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


@contextmanager
def leased(out: str, wait_s: float = 0) -> Iterator[None]:
    """Hold the run `out` (an s3:// URL) for the block, waiting up to `wait_s` for another
    holder's lease to end or lapse."""
    lease = Lease(out)
    lease.take(wait_s)
    try:
        yield
    finally:
        lease.release()
