"""Everything that saves and loads weights: model files and per-epoch training checkpoints.

Model files (`model.pth`, `encoder.pth`) hold a state dict with its metadata (kind, model
config, labels, vocab size), load with `weights_only=True` and are checked against the SHA-256
their manifest recorded before use.

A checkpoint, which a restarted task resumes from, holds the model, the optimizer, every random
number generator that training draws from (Python's, NumPy's, torch's and the data loaders' own)
and the schedule's resume point (stage and epoch, stored as `phase` and `epoch`), so training
resumed from it takes the same steps an uninterrupted run would.
It is written atomically with its own SHA-256 inside (a damaged file is refused, not resumed),
and loads with `weights_only=True`: plain data only. A fingerprint of the data and settings
guards it: a checkpoint from other data or settings is ignored.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import DamagedFile
from ..run.layout import atomic_path
from ..run.manifests import verify_outputs

MODEL_FORMAT = "ulmfit/1"
FORMAT = "ulmfit-checkpoint/2"


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
        if getattr(dl, "order_random", None) is not None:  # DeviceLMDataLoader's own shuffle
            entry["order_rng"] = _python_rng(dl.order_random.getstate())
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
        if getattr(dl, "order_random", None) is not None:
            dl.order_random.setstate(_python_rng_state(entry.get("order_rng", state["python"])))
        if "order" in entry:
            dl.items.idxs[:] = entry["order"].tolist()  # in place: the lengths share this list
            dl.make_chunks()


def save_checkpoint(path: Path, fingerprint: str, **state) -> Path:
    """The state, serialized, beside its own SHA-256, in one file written atomically (a hash in
    a second file could not be replaced in the same step as the checkpoint)."""
    body = _serialized(plain(state))
    # The body as a uint8 tensor: stored as raw bytes, not pickled.
    _write(path, _serialized({"format": FORMAT, "fingerprint": fingerprint,
                              "sha256": hashlib.sha256(body).hexdigest(),
                              "state": torch.frombuffer(body, dtype=torch.uint8)}))
    return path


def _serialized(obj) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _write(path: Path, data: memoryview) -> None:
    """Write bytes torch serialized, with Python's file: a full disk raises OSError(ENOSPC) and
    closes the file (torch's own writer raises a RuntimeError without errno and keeps the
    partial file open, its space held, until the error is collected)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def load_checkpoint(path: Path | None, fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it was made by training with this fingerprint, else None."""
    if path is None or not path.exists():
        return None
    damaged = f"{path}: damaged checkpoint ({{}}): delete it to train this stage from the start"
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or overwritten
        raise DamagedFile(damaged.format(f"unreadable, {type(exc).__name__}")) from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise DamagedFile(damaged.format(f"not a {FORMAT} file"))
    body = outer["state"].numpy().tobytes()
    if hashlib.sha256(body).hexdigest() != outer["sha256"]:
        raise DamagedFile(damaged.format("its SHA-256 differs from the one written with it"))
    if outer["fingerprint"] != fingerprint:
        return None
    return {"fingerprint": fingerprint, **torch.load(io.BytesIO(body), map_location="cpu",
                                                     weights_only=True)}


def save_model(path: str | Path, kind: str, state_dict: dict, **meta) -> Path:
    """Write `state_dict` with its metadata (config, labels, ...) as one weights-only file."""
    payload = {"format": MODEL_FORMAT, "kind": kind, **meta,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    _write(Path(path), _serialized(payload))
    return Path(path)


# The command that writes each kind of model file into a run directory.
_MADE_BY = {"language_model": "train-lm", "encoder": "train-lm", "classifier": "train-classifier"}


def _remedy(path: Path, kind: str) -> str:
    """What makes a damaged model file again: the command, where the file is a run directory's
    (lm/, export/, classifier/ or their -bwd twins)."""
    folder = path.parent.name
    if folder.removesuffix("-bwd") not in ("lm", "export", "classifier"):
        return "restore it or rerun the stage that writes it"
    backwards = " --backwards" if folder.endswith("-bwd") else ""
    return f"rebuild it with `ulmfit {_MADE_BY[kind]} --out {path.parent.parent}{backwards}`"


def load_model_file(path: str | Path, kind: str) -> dict:
    """Read a file written by `save_model`, refusing anything but plain data, after checking the
    files of its folder against the hashes their manifest recorded."""
    path = Path(path)
    remedy = _remedy(path, kind)
    verify_outputs(path, remedy)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated, overwritten, or not a torch file at all
        raise DamagedFile(f"{path}: unreadable model file ({type(exc).__name__}): {remedy}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a {MODEL_FORMAT} model file")
    if payload.get("kind") != kind:
        raise ValueError(f"{path}: holds a {payload.get('kind')!r}, expected a {kind!r}")
    return payload
