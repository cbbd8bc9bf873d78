"""Inference: batched classification, test-set evaluation, and text generation.

Saved models are rebuilt from their weights-only files and JSON vocab; the tokenizer is built
once per model, not once per text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from fastai.text.learner import decode_spec_tokens

from ..config import ClassifierConfig, ModelConfig, TokenizerConfig
from ..errors import check_stop
from ..progress import Bar
from ..run.layout import TOKENIZER_SPEC, ModelDir, model_folder, read_json
from ..run.store import model_copy
from ..text.sources import usable_text
from ..text.subword import detokenize_pieces
from ..text.tokenize import text_tokenizer
from ..text.vocab import PAD_ID, UNK_ID, Vocab, FAKE
from .metrics import classification_scores
from .networks import build_classifier, build_language_model, pad_front, pick_device
from .weights import load_model_file



@torch.no_grad()
def predict_proba(model: torch.nn.Module, ids: Sequence[np.ndarray], bs: int = 64,
                  device: torch.device | str = "cpu", progress=None, every_s: float = 10.0) -> np.ndarray:
    """Class probabilities for id arrays, in batches of similar length. `progress(fraction,
    message)` is called every `every_s` seconds and at the end."""
    model = model.to(device).eval()
    order = np.argsort([-len(d) for d in ids], kind="stable")
    out = np.zeros((len(ids), 0), dtype=np.float32)
    last = time.time()
    with Bar("classifying", len(order)) as bar:
        for start in range(0, len(order), bs):
            check_stop("classifying")
            if progress and time.time() - last >= every_s:
                last = time.time()
                progress(start / len(order), f"{start}/{len(order)} texts classified")
            batch = order[start:start + bs]
            samples = [(torch.from_numpy(ids[i].astype(np.int64)),) for i in batch]
            x = torch.stack([p[0] for p in pad_front(samples, PAD_ID)]).to(device)
            probs = torch.softmax(model(x)[0].float(), dim=-1).cpu().numpy()
            if out.shape[1] == 0:
                out = np.zeros((len(ids), probs.shape[1]), dtype=np.float32)
            out[batch] = probs
            bar.update(completed=start + len(batch))
    if progress:
        progress(1.0, f"{len(order)}/{len(order)} texts classified")
    return out


def evaluate(probs: np.ndarray, labels: Sequence[str], truth: Sequence[str]) -> dict:
    """Scores of the most probable label against the truth (`metrics.classification_scores`)."""
    index = {y: i for i, y in enumerate(labels)}
    return classification_scores(probs.argmax(1), [index[t] for t in truth], labels)


def load_tokenizer(folder: Path):
    """The tokenizer a model folder was trained with (word tokens when it says nothing)."""
    spec = folder / TOKENIZER_SPEC
    config = TokenizerConfig(**read_json(spec)) if spec.exists() else TokenizerConfig()
    return config, text_tokenizer(config, folder)


def _open(path: str | Path, sub: str, kind: str | None = None) -> tuple[ModelDir, dict, Vocab]:
    """A model folder (given directly or as a run directory), its weights and vocab."""
    folder = model_folder(path, sub)
    return folder, load_model_file(folder.model, kind or sub), Vocab.load(folder.vocab)


def _ready(model: torch.nn.Module, payload: dict, device: torch.device) -> torch.nn.Module:
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


@dataclass
class Classifier:
    model: torch.nn.Module
    vocab: Vocab
    labels: list[str]
    device: torch.device
    tokenizer: object
    backwards: bool = False  # trained on documents read last token first

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "Classifier":
        with model_copy(path, "classifier") as local:
            folder, payload, vocab = _open(local, "classifier")
            tokenizer = load_tokenizer(folder)[1]
        cfg = ClassifierConfig(**{k: v for k, v in payload["classifier"].items() if k != "stages"})
        model = build_classifier(len(vocab), len(payload["labels"]), ModelConfig(**payload["model"]), cfg)
        device = torch.device(device) if device else pick_device()
        return cls(_ready(model, payload, device), vocab, list(payload["labels"]), device,
                   tokenizer, bool(payload.get("backwards", False)))

    def predict_ids(self, ids: Sequence[np.ndarray], bs: int = 64, progress=None) -> np.ndarray:
        if self.backwards:
            ids = [d[::-1] for d in ids]
        return predict_proba(self.model, ids, bs, self.device, progress)

    def predict_texts(self, texts: Sequence[str], bs: int = 64) -> np.ndarray:
        tokens = self.tokenizer(texts)
        return self.predict_ids([self.vocab.encode(t) for t in tokens], bs)

    def predict_raw(self, texts: Sequence, bs: int = 64) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities for texts as users send them, and for each the reason it was skipped:
        empty, whitespace-only, missing or undecodable texts get no label (a row of NaN), as
        preprocessing skips them."""
        checked = [usable_text(t) for t in texts]
        keep = [i for i, (_, why) in enumerate(checked) if why is None]
        probs = np.full((len(texts), len(self.labels)), np.nan, dtype=np.float32)
        if keep:
            probs[keep] = self.predict_texts([checked[i][0] for i in keep], bs)
        return probs, [why for _, why in checked]


@dataclass
class LanguageModel:
    model: torch.nn.Module
    vocab: Vocab
    device: torch.device
    tokenizer_config: TokenizerConfig
    tokenizer: object

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "LanguageModel":
        with model_copy(path, "lm") as local:
            folder, payload, vocab = _open(local, "lm", "language_model")
            tokenizer = load_tokenizer(folder)
        if payload.get("backwards"):
            raise ValueError(f"{path}: a backward language model continues text to the left; "
                             "generate with the forward one")
        model = build_language_model(len(vocab), ModelConfig(**payload["model"]), payload["drop_mult"])
        device = torch.device(device) if device else pick_device()
        return cls(_ready(model, payload, device), vocab, device, *tokenizer)

    @torch.no_grad()
    def generate(self, prompt: str, n_words: int = 40, temperature: float = 0.75, n: int = 1,
                 seed: int | None = None) -> list[str]:
        """`n` continuations of `prompt`, sampling `n_words` tokens at `temperature`."""
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        prompt_tokens = next(iter(self.tokenizer([prompt])))
        x = torch.from_numpy(self.vocab.encode(prompt_tokens).astype(np.int64))
        x = x.unsqueeze(0).repeat(n, 1).to(self.device)  # (n, prompt_len)
        banned = [UNK_ID, PAD_ID] + [i for i, t in enumerate(self.vocab.itos) if t == FAKE]
        self.model.reset()
        logits = self.model(x)[0][:, -1].float()  # (n, vocab)
        out = []
        for _ in range(n_words):
            logits[:, banned] = -float("inf")
            probs = torch.softmax(logits / temperature, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen)  # (n, 1)
            out.append(nxt)
            logits = self.model(nxt.to(self.device))[0][:, -1].float()
        generated = torch.cat(out, dim=1).tolist()
        subword = self.tokenizer_config.kind == "subword"
        return [f"{prompt} {detokenize(self.vocab.decode(ids), subword)}" for ids in generated]


def detokenize(tokens: list[str], subword: bool = False) -> str:
    """Readable text from tokens: xxmaj/xxup/xxrep/xxwrep undone, newlines kept."""
    if subword:
        tokens = detokenize_pieces(tokens)
    words = [t for t in decode_spec_tokens(tokens) if t not in ("xxbos", "xxeos")]
    return " ".join(words).replace(" \n ", "\n").strip()

