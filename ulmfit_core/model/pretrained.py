"""Pretrained language-model weights (fastai's WikiText-103 AWD-LSTM, or any in its format).

fastai publishes a `.pth` of weights and a `.pkl` vocabulary (`itos`, a list of strings). The
weights load with `torch.load(..., weights_only=True)`; the vocabulary with an unpickler that
accepts no classes at all, so a pickle carrying code is refused instead of run. Rows of words
shared with the new vocabulary are copied, new words get the mean row (fastai's `match_embeds`),
in the encoder and the tied decoder.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from fastai.text.learner import clean_raw_keys, match_embeds

from ..config import ModelConfig
from ..errors import DataError


class _NoClasses(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a vocabulary is a list of strings")


def load_itos(path: str | Path) -> list[str]:
    """A fastai vocabulary pickle, read without running any code it might carry."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        itos = _NoClasses(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
        raise DataError(f"{path}: a vocabulary pickle must hold a list of strings")
    return itos


def resolve_pretrained(spec: str) -> tuple[Path, Path]:
    """(weights .pth, vocab .pkl) for "wt103" / "wt103-bwd" (fastai's forward / backward
    download) or a folder/.pth path."""
    if spec in ("wt103", "wt103-bwd"):
        from fastai.data.external import untar_data
        from fastai.text.models.awdlstm import AWD_LSTM
        from fastai.text.models.core import _model_meta

        url = _model_meta[AWD_LSTM]["url" if spec == "wt103" else "url_bwd"]
        try:
            spec = str(untar_data(url, c_key="model"))
        except Exception as exc:  # offline, interrupted download, ...
            raise DataError(f"--pretrained {spec}: downloading {url} failed ({exc})") from exc
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    weights = [path] if path.suffix == ".pth" else sorted(folder.glob("*.pth"))
    vocabs = sorted(folder.glob("*.pkl"))
    if len(weights) != 1 or len(vocabs) != 1:
        raise DataError(f"{spec}: expected one .pth weights file and one .pkl vocabulary "
                        f"(found {len(weights)} and {len(vocabs)})")
    return weights[0], vocabs[0]


def load_pretrained(spec: str, new_itos: list[str], model: ModelConfig) -> tuple[dict, dict]:
    """Weights adapted to `new_itos`, and a summary (source, shared and new words)."""
    weights_path, vocab_path = resolve_pretrained(spec)
    old_itos = load_itos(vocab_path)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = clean_raw_keys(state.get("model", state))
    emb = state.get("0.encoder.weight")
    if emb is None:
        raise DataError(f"{weights_path}: no '0.encoder.weight': not an AWD-LSTM language model")
    if tuple(emb.shape) != (len(old_itos), model.emb_sz):
        raise DataError(f"{weights_path}: embedding {tuple(emb.shape)} does not fit its vocabulary "
                        f"({len(old_itos)}) and this preset's emb_sz {model.emb_sz}")
    hidden = state.get("0.rnns.0.weight_hh_l0_raw")  # (4 * n_hid, n_hid) for the first layer
    if hidden is not None and model.n_layers > 1 and hidden.shape[1] != model.n_hid:
        raise DataError(f"{weights_path}: hidden size {hidden.shape[1]}, but this preset builds "
                        f"n_hid {model.n_hid}: choose the preset the weights were trained with")
    known = set(old_itos)
    new_words = sum(1 for w in new_itos if w not in known)
    state = match_embeds(dict(state), old_itos, new_itos)
    return state, {"source": str(weights_path), "pretrained_vocab": len(old_itos),
                   "new_words": new_words, "new_word_share": new_words / len(new_itos)}
