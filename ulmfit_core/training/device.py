"""Where training runs: the cores and the device, its precision, its GPU's name and peak memory, and
an out-of-memory error told as one line.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import torch

from ..config import Preset
from ..errors import OutOfDeviceMemory
from . import parallel
from .resume import Checkpoint


def executed_on() -> dict:
    """Which machine and process trained (to check where a scheduler sent the work)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def use_all_cores() -> int:
    """Dask workers start with one thread for math libraries; training wants all the cores
    (a rank of data-parallel training keeps the share its launcher gave it)."""
    if parallel.world() > 1:
        return torch.get_num_threads()
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def precision(device: torch.device, preset: Preset) -> str:
    """fp16 mixed precision on CUDA, bf16 autocast on CPU, or plain fp32, as the preset allows."""
    if device.type == "cuda":
        return "fp16" if preset.fp16 else "fp32"
    return "bf16" if preset.cpu_bf16 else "fp32"


def gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def reset_gpu_peak(device: torch.device) -> None:
    """Start counting a stage's peak GPU memory from what it already holds."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_usage(device: torch.device) -> dict:
    """The GPU a stage trained on and the most memory its tensors held since `reset_gpu_peak`
    (None on the CPU)."""
    if device.type != "cuda":
        return {"gpu": None, "peak_gpu_memory_mb": None}
    return {"gpu": gpu_name(device),
            "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


@contextmanager
def explain_out_of_memory(stage: str, preset: Preset, bs: int, device: torch.device,
                          checkpoint: Checkpoint):
    """Turn torch's out-of-memory error during training into one line naming the preset and
    the batch size to lower, and what was kept of the stage (its last per-epoch checkpoint)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        state = checkpoint.load()
        kept = ("" if checkpoint.path is None else
                "; no epoch had finished, so there is no checkpoint" if state is None else
                f"; the checkpoint of the last finished epoch ({len(state['history'])} epoch(s) "
                f"done) was kept at {checkpoint.path}, and a rerun with the same settings resumes from it")
        raise OutOfDeviceMemory(
            f"{stage}: out of memory on {gpu_name(device) or device} with preset '{preset.name}' "
            f"at batch size {bs}: lower {stage}.bs of preset '{preset.name}' or use a smaller "
            f"preset{kept}") from exc
