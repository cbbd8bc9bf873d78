"""Data-parallel training: one stage trained by several processes (ranks) at once, with
torch.distributed (NCCL on CUDA, gloo on the CPU).

Every rank builds the same loaders from the same seed, so all ranks draw the same document order
and the same global batches, and each trains on its own share of every batch's rows
(`DataParallel`): rank r of N takes rows [r * n // N, (r + 1) * n // N) of a batch of n. So
the N ranks together see each token of an epoch once. For the language model a rank always gets
the same rows, so the hidden state it carries from batch to batch is that of its own rows.
DistributedDataParallel averages the gradients; each rank's loss is weighted by its share of the
rows, so a step is the step one process would take on the whole batch, and batch size,
learning-rate schedule and gradual unfreezing stay the preset's. Validation is split the same
way and its sums are added up across ranks, so every rank records the metrics of the whole
validation set. Rank 0 alone writes checkpoints, models and metrics.

fastai's own `DistributedDL` deals out whole items (for the language model, parts of the
stream in the wrong order: fastai #1866, #1933) and needs Hugging Face Accelerate; this keeps
fastai's batches as they are and only cuts their rows.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from fastai.callback.core import Callback, CancelBatchException
from torch.nn.parallel import DistributedDataParallel

from ..errors import RendezvousFailed
from ..rendezvous import RENDEZVOUS_TIMEOUT_S

log = logging.getLogger("ulmfit")


def rank() -> int:
    """This process's rank in its training group (0 when it trains alone)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    """How many ranks train together (1 when this process trains alone)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextmanager
def process_group(rank: int, world: int, host: str, port: int,
                  timeout_s: float = RENDEZVOUS_TIMEOUT_S, device_index: int | None = None,
                  threads: int | None = None) -> Iterator[None]:
    """Join the training group of `world` ranks whose rank 0 listens at host:port (rank 0 opens
    it); a group that does not form within `timeout_s` fails with `RendezvousFailed` instead of
    waiting forever. On CUDA this rank uses GPU `device_index` (of those it sees); `threads`:
    its CPU threads."""
    cuda = torch.cuda.is_available()
    if cuda and device_index is not None:  # a worker that sees one GPU uses that one
        torch.cuda.set_device(device_index % torch.cuda.device_count())
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{host}:{port}",
                                rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistError) as exc:
        raise RendezvousFailed(
            f"rank {rank} of {world}: the ranks did not all meet at {host}:{port} within "
            f"{timeout_s:g} s ({str(exc).splitlines()[0]})") from exc
    log.info("rank %d of %d joined the group at %s:%d (%s, pid %d)", rank, world, host, port,
             socket.gethostname(), os.getpid())
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_rank(fn, args: tuple, kwargs: dict, rank: int, world: int, host: str, port: int,
             timeout_s: float = RENDEZVOUS_TIMEOUT_S, local_index: int = 0, on_host: int = 1,
             threads: int | None = None, log_to: logging.Handler | None = None):
    """`fn(*args, **kwargs)` as rank `rank` of a group of `world`: what each worker runs.
    `local_index` of the `on_host` ranks on this machine: its GPU; its CPU threads are
    `threads`, or its share of the machine's cores. The rank's log lines go to `log_to` (to
    the process that directs the ranks), else to this process's stderr."""
    from ..errors import STOP

    logger = logging.getLogger("ulmfit")
    if log_to is not None:
        logger.addHandler(log_to)
    elif not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    STOP.clear()  # a stop requested of an earlier group on this worker
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, cores // on_host)
    try:
        with process_group(rank, world, host, port, timeout_s, local_index, threads):
            if rank:  # rank 0 tells how training goes; the others only warn
                logger.setLevel(logging.WARNING)
            return fn(*args, **kwargs)
    finally:
        logger.removeHandler(log_to)


class _GroupSum(torch.autograd.Function):
    """The sum of a tensor over all ranks; its gradient is the sum of all ranks' gradients (each
    rank's loss depends on every rank's part of the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GroupBatchNorm(torch.nn.BatchNorm1d):
    """BatchNorm1d (the classifier head's) normalizing with the statistics of the whole batch,
    all ranks' rows together, as one process would; torch's SyncBatchNorm does this on GPUs
    only. Mean and variance are two exchanges (sum, then squared deviations), as exact as
    BatchNorm's own; gradients flow back through both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        x = x.float()  # BatchNorm runs in fp32 under autocast too
        count = _GroupSum.apply(x.new_tensor([float(len(x))]))
        mean = _GroupSum.apply(x.sum(0)) / count
        var = _GroupSum.apply(((x - mean) ** 2).sum(0)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def _batch_norms(model: torch.nn.Module, cls: type) -> None:
    """Switch every BatchNorm1d of `model` to `cls` in place (same parameters and buffers)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.__class__ = cls


class _DDP(DistributedDataParallel):
    """DistributedDataParallel that passes fastai's `reset` (the LSTM's hidden state) on."""

    def reset(self) -> None:
        if hasattr(self.module, "reset"):
            self.module.reset()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, also while `DataParallel` has it wrapped for a fit."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [lo, hi) of a batch of `n` rows that `rank` of `world` trains on."""
    return rank * n // world, (rank + 1) * n // world


class DataParallel(Callback):
    """Trains this rank on its share of every batch's rows, with gradients averaged over all
    ranks (see the module's docstring). The model is wrapped for each fit and unwrapped after
    it, because gradual unfreezing changes which parameters train between fits."""

    order = 5  # cut the batch before precision callbacks; add up validation before the Recorder

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def before_fit(self) -> None:
        from ..model.networks import AlignedSentenceEncoder

        self.aligned = [m for m in self.model.modules() if isinstance(m, AlignedSentenceEncoder)]
        _batch_norms(self.model, _GroupBatchNorm)
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # Wrapping draws from Python's generator in a group of several ranks; the document
        # order drawn next must be the one a single process draws for the seed.
        state = random.getstate()
        self.learn.model = _DDP(self.model, device_ids=ids)
        random.setstate(state)

    def after_fit(self) -> None:
        self.learn.model = unwrap(self.model)
        _batch_norms(self.model, torch.nn.BatchNorm1d)
        for encoder in self.aligned:
            encoder.batch_starts = None

    def before_batch(self) -> None:
        for encoder in self.aligned:  # chunked as the whole batch, not this rank's rows
            encoder.batch_starts = set((self.xb[0] == encoder.pad_idx).sum(1).tolist())
        n = len(self.yb[0])
        lo, hi = share(n, rank(), world())
        if hi == lo:  # a batch with fewer rows than ranks
            if not self.training:
                self.learn.yb = ()  # nothing to validate here: the Recorder skips the batch
                raise CancelBatchException
            # Training must still take part in the exchange of gradients: one row, weight 0.
            lo, hi, self.weight = 0, 1, 0.0
        else:
            self.weight = (hi - lo) * world() / n
        self.learn.xb = tuple(x[lo:hi] for x in self.xb)
        self.learn.yb = tuple(y[lo:hi] for y in self.yb)

    def after_loss(self) -> None:
        if self.training:
            self.learn.loss_grad = self.loss_grad * self.weight

    def after_validate(self) -> None:
        """Add up the validation sums (loss and metrics: total and count) of all ranks."""
        metrics = list(self.recorder._valid_mets)
        if not metrics:  # validation was cancelled
            return
        sums = torch.tensor([[float(m.total), float(m.count)] for m in metrics],
                            dtype=torch.float64, device=_collective_device())
        dist.all_reduce(sums)
        for m, (total, count) in zip(metrics, sums.cpu()):
            m.total, m.count = total.float(), int(count)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def check_batch(stage: str, bs: int) -> None:
    """Each rank needs at least one row of every training batch."""
    if bs < world():
        from ..errors import DataError

        raise DataError(f"{stage}: batch size {bs} is smaller than the {world()} ranks training "
                        "it; use fewer --train-workers or a larger batch")


def gather_ranks(info: dict) -> list[dict] | None:
    """Every rank's `info` (host, pid, device), in rank order; None when training alone."""
    if world() == 1:
        return None
    everyone: list = [None] * world()
    dist.all_gather_object(everyone, {"rank": rank(), **info})
    return everyone
