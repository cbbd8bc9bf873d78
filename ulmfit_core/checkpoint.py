"""Per-epoch training checkpoints that a restarted task resumes from.

A checkpoint holds the model, the optimizer, every random number generator that training draws
from (Python's, NumPy's, torch's and the data loaders' own) and the position in the schedule
(phase and epoch), so training resumed from it takes the same steps an uninterrupted run would.
It is written atomically and loads with `weights_only=True`: plain data only. A fingerprint of
the data and settings guards it: a checkpoint from other data or settings is ignored.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .rundir import atomic_path

FORMAT = "ulmfit-checkpoint/1"


def plain(x):
    """Numbers, strings, lists, dicts and tensors only (NumPy values become Python/torch ones,
    any other sequence a list)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    if torch.is_tensor(x):
        return x.detach().cpu()
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        return x
    return [plain(v) for v in x]  # lists, tuples, fastcore's L


def _python_rng(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_rng_state(saved: dict) -> tuple:
    return saved["version"], tuple(int(v) for v in saved["internal"].tolist()), saved["gauss"]


def rng_state(loaders: dict) -> dict:
    """The state of every generator training uses; `loaders` names fastai DataLoaders."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _python_rng(random.getstate()),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "loaders": {},
    }
    for key, dl in loaders.items():
        entry = {"rng": _python_rng(dl.rng.getstate())}
        order = getattr(getattr(dl, "items", None), "idxs", None)  # LMDataLoader's document order
        if order is not None:
            entry["order"] = torch.tensor(list(order), dtype=torch.int64)
        state["loaders"][key] = entry
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, loaders: dict) -> None:
    random.setstate(_python_rng_state(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, dl in loaders.items():
        entry = state["loaders"][key]
        dl.rng.setstate(_python_rng_state(entry["rng"]))
        if "order" in entry:
            dl.items.idxs[:] = entry["order"].tolist()  # in place: the lengths share this list
            dl.make_chunks()


def save_checkpoint(path: Path, fingerprint: str, **state) -> Path:
    with atomic_path(path) as tmp:
        torch.save(plain({"format": FORMAT, "fingerprint": fingerprint, **state}), tmp)
    return path


def load_checkpoint(path: Path | None, fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it was made by training with this fingerprint, else None."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file; delete it to train from the start")
    return state if state["fingerprint"] == fingerprint else None
