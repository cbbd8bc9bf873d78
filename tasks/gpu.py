"""The GPU a training task occupies: a Prefect global concurrency limit of one slot per GPU
worker, taken by a training that runs on CUDA."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

# The Prefect global concurrency limit that training on a GPU occupies, created with one slot:
# two trainings on one GPU (both directions of --bidirectional, two runs on one node) would
# compete for its memory and compute. With N GPU workers, raise it to N (README: Operations).
GPU_LIMIT = "ulmfit-gpu"

log = logging.getLogger("ulmfit")


def ensure_gpu_limit() -> None:
    """Create GPU_LIMIT with one slot if the Prefect server has no limit of that name; an
    existing one keeps the size it was given."""
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=1))
        except ObjectAlreadyExists:
            pass


@contextmanager
def gpu_limit_slot() -> Iterator[None]:
    """Hold one slot of GPU_LIMIT, waiting as long as the others are taken."""
    ensure_gpu_limit()
    log.info("training on the GPU: taking a slot of the Prefect concurrency limit %s", GPU_LIMIT)
    # A lease that fails to renew (a server hiccup during hours of training) must not stop the
    # training; a task that dies releases its slot when the lease runs out.
    with concurrency(GPU_LIMIT, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield


@contextmanager
def training_slot() -> Iterator[None]:
    """GPU_LIMIT's slot when this process trains on CUDA; nothing on CPU."""
    from ulmfit_core.model.networks import pick_device  # loads torch: only in the process that trains

    if pick_device().type == "cuda":
        with gpu_limit_slot():
            yield
    else:
        yield
