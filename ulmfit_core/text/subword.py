"""Subword tokens with SentencePiece, as fastai's `SubwordTokenizer` makes them.

A unigram model is trained on rule-processed text with fastai's arguments (its special tokens,
prefixed with "▁", as user-defined symbols; unk after them; no pad/bos/eos); texts are then
rule-processed and cut into pieces with it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Iterator

from ..run.layout import SUBWORD_MODEL
from .rules import SPECIAL_TOKENS, apply_rules

# fastai's character coverage: 0.99999 for European languages, 0.9998 otherwise.
EU_LANGS = {"bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu", "it", "lt",
            "lv", "mt", "nl", "pl", "pt", "ro", "sk", "sl", "sv"}


def train_subword_model(texts: Iterable[str], vocab_size: int, out_dir: Path,
                        lang: str = "en") -> Path:
    """Train the unigram model on `texts` (rules applied here) into `out_dir/spm.model`."""
    from sentencepiece import SentencePieceTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, prefix = out_dir / "train.txt", out_dir / "spm"
    n = 0
    with open(corpus, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(apply_rules(text) + "\n")
            n += 1
    if n == 0:
        raise ValueError("subword: no training text to learn pieces from")
    special = ",".join("▁" + t for t in SPECIAL_TOKENS)
    coverage = 0.99999 if lang in EU_LANGS else 0.9998
    try:
        # Fixed paths and one thread: the same text gives a byte-identical model.
        SentencePieceTrainer.Train(
            f"--input={corpus} --vocab_size={vocab_size} --model_prefix={prefix} "
            f"--character_coverage={coverage} --model_type=unigram "
            f"--unk_id={len(SPECIAL_TOKENS)} --pad_id=-1 --bos_id=-1 --eos_id=-1 --minloglevel=2 "
            f"--user_defined_symbols={special} --hard_vocab_limit=false --num_threads=1"
        )
    except RuntimeError as exc:
        raise ValueError(f"subword: cannot train a {vocab_size}-piece model ({exc})") from exc
    finally:
        corpus.unlink(missing_ok=True)
        Path(f"{prefix}.vocab").unlink(missing_ok=True)
    return out_dir / SUBWORD_MODEL


class SubwordTokenizer:
    """fastai's rules, then SentencePiece pieces ("▁the", "▁xxmaj", ...)."""

    def __init__(self, model_path: str | Path, batch_size: int = 1000) -> None:
        from sentencepiece import SentencePieceProcessor

        self._sp = SentencePieceProcessor(model_file=str(model_path))
        self._batch_size = batch_size

    def __call__(self, texts: Iterable[str]) -> Iterator[list[str]]:
        texts = iter(texts)
        while batch := list(itertools.islice(texts, self._batch_size)):
            yield from self._sp.encode([apply_rules(t) for t in batch], out_type=str)


def detokenize_pieces(pieces: list[str]) -> list[str]:
    """Subword pieces back to word tokens ("▁xx", "maj" -> "xxmaj")."""
    return "".join(pieces).replace("▁", " ").split()
