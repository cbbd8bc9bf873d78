"""LM training throughput: the project's training function against a plain fastai Learner.

    python bench/train.py [--data imdb] [--limit 1000] [--preset cpu] [--tokens 400000]

Same documents, model (fastai's AWD-LSTM at the preset's size), batch size, sequence length,
one-cycle schedule and machine, in one run. fastai: `LMDataLoader` + `LMLearner(..., metrics=
[accuracy, Perplexity()]).fit_one_cycle(1, lr)` (the Learner `language_model_learner` builds).
Project: `train_language_model` (progress
logging, per-epoch checkpoint included), once in fp32 (the like-for-like ratio) and once as the
preset runs (bf16 autocast on CPU when the preset asks). Training tokens per second of wall time,
validation included for both.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder goes last on the path: its tokenize.py must not shadow the standard library's.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import argparse
import logging
import tempfile
import time
from dataclasses import replace

from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.torch_core import set_seed
from fastai.text.learner import LMLearner
from fastai.text.models.awdlstm import awd_lstm_lm_split
from sample_run import preprocessed_run

from ulmfit_core.config import get_preset
from ulmfit_core.data import load_docs
from ulmfit_core.models import build_language_model
from ulmfit_core.rundir import read_json
from ulmfit_core.train import lm_dataloaders, sample_tokens, train_language_model, use_all_cores


def fastai_tokens_per_s(docs, vocab_size: int, preset, seed: int) -> float:
    cfg = preset.lm
    set_seed(seed, reproducible=True)
    train, valid = docs.split(cfg.valid_pct, seed, "lm-valid")
    dls = lm_dataloaders(train, valid, cfg, device=__import__("torch").device("cpu"))
    model = build_language_model(vocab_size, preset.model, cfg.drop_mult)
    learn = LMLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_lm_split,
                    metrics=[accuracy, Perplexity()], wd=cfg.wd)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, cfg.lr)
    return len(dls.train) * cfg.bs * cfg.seq_len / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--limit", type=int, default=1000, help="documents per split/label")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--tokens", type=int, default=400_000, help="LM sample size in tokens")
    args = parser.parse_args()
    logging.getLogger("ulmfit").setLevel(logging.WARNING)

    base = get_preset(args.preset)
    preset = replace(base, lm=replace(base.lm, epochs=1, sample_tokens=None))
    with tempfile.TemporaryDirectory() as tmp:
        run = preprocessed_run(args.data, args.limit, Path(tmp) / "run", preset)
        vocab_size = len(read_json(run.vocab))
        docs = sample_tokens(load_docs(run.shards(run.ids)), args.tokens, seed=0)
        threads = use_all_cores()
        print(f"{len(docs)} documents, {docs.n_tokens} tokens, vocab {vocab_size}, model "
              f"{vars(preset.model)}, bs {preset.lm.bs} x seq {preset.lm.seq_len}, {threads} threads")
        fastai_tps = fastai_tokens_per_s(docs, vocab_size, preset, seed=0)
        print(f"fastai LMLearner (fp32):     {fastai_tps:8.0f} tokens/s")
        results = {}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            variant = replace(preset, cpu_bf16=bf16)
            _, metrics = train_language_model(docs, vocab_size, variant, seed=0,
                                              checkpoint=Path(tmp) / f"ckpt-{name}.pth")
            results[name] = metrics["tokens_per_s"]
            print(f"project ({name}):            {results[name]:8.0f} tokens/s "
                  f"(valid loss {metrics['valid_loss']:.3f})")
        print(f"ratio project/fastai, both fp32: {results['fp32'] / fastai_tps:.2f}")
        print(f"ratio project bf16/fastai fp32: {results['bf16'] / fastai_tps:.2f}")


if __name__ == "__main__":
    main()
