"""Build fastai's AWD-LSTM language model and classifier, and save/load them safely.

A saved model is one `.pth` file holding plain data only (tensors, numbers, strings, lists,
dicts), so it loads with `torch.load(..., weights_only=True)` and no pickled code runs. Its
vocabulary is a JSON file beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config, awd_lstm_lm_config
from fastai.text.models.core import get_language_model, get_text_classifier

from .config import ClassifierConfig, ModelConfig
from .rundir import atomic_path

FORMAT = "ulmfit/1"


def lm_config(model: ModelConfig) -> dict:
    return {**awd_lstm_lm_config, **vars(model)}


def clas_config(model: ModelConfig) -> dict:
    return {**awd_lstm_clas_config, **vars(model)}


def build_language_model(vocab_size: int, model: ModelConfig, drop_mult: float) -> torch.nn.Module:
    return get_language_model(AWD_LSTM, vocab_size, config=lm_config(model), drop_mult=drop_mult)


def build_classifier(vocab_size: int, n_classes: int, model: ModelConfig,
                     cfg: ClassifierConfig) -> torch.nn.Module:
    return get_text_classifier(AWD_LSTM, vocab_size, n_classes, seq_len=cfg.seq_len,
                               config=clas_config(model), drop_mult=cfg.drop_mult, max_len=cfg.max_len)


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The AWD_LSTM inside a language model or a classifier."""
    encoder = model[0]
    return getattr(encoder, "module", encoder)


def save_model(path: str | Path, kind: str, state_dict: dict, **meta) -> Path:
    """Write `state_dict` with its metadata (config, labels, ...) as one weights-only file."""
    payload = {"format": FORMAT, "kind": kind, **meta,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model_file(path: str | Path, kind: str) -> dict:
    """Read a file written by `save_model`, refusing anything but plain data."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} model file")
    if payload.get("kind") != kind:
        raise ValueError(f"{path}: holds a {payload.get('kind')!r}, expected a {kind!r}")
    return payload
