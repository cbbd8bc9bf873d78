"""Batch prediction throughput against fastai's `learn.predict` loop, same model, same reviews.

    python bench/predict.py [--data imdb] [--preset cpu] [--reviews 1000] [--fastai-reviews 200]

One classifier (fastai's AWD-LSTM classifier at the preset's size, seeded weights; throughput and
agreement do not need a trained model) over raw test reviews. fastai: a `TextDataLoaders` with the
same vocabulary and fastai's own tokenizer, `text_classifier_learner` carrying the same weights,
and `learn.predict(text)` per review. Project: `Classifier.predict_texts(texts)` (bulk
tokenization, length-sorted batches). `max_len` is raised above the longest review so both read
every token; then predictions must agree to float precision. Prints reviews/s, the ratio and the
largest probability difference.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.text.all import AWD_LSTM, TextDataLoaders, text_classifier_learner

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.model.networks import build_classifier, clas_config
from ulmfit_core.model.predict import Classifier
from ulmfit_core.model.weights import save_model
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.stages import copy_text_assets
from ulmfit_core.text.data import load_raw_labelled
from ulmfit_core.training import use_all_cores


def seeded_classifier(run: RunDir, data: str, preset, reviews: int) -> torch.nn.Module:
    """Preprocess `reviews` // 2 reviews per split and label of `data` into `run` and save there a
    classifier at the preset's size with seeded weights, as a trained run's would be saved."""
    stages.preprocess_in_process(run, data, preset, limit=reviews // 2)
    itos = read_json(run.vocab)
    torch.manual_seed(0)
    model = build_classifier(len(itos), 2, preset.model, preset.classifier)
    copy_text_assets(run, run.classifier)
    save_model(run.classifier.model, "classifier", model.state_dict(), labels=["neg", "pos"],
               model=vars(preset.model), classifier=preset.to_dict()["classifier"],
               vocab_size=len(itos))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--reviews", type=int, default=1000, help="reviews for the project")
    parser.add_argument("--fastai-reviews", type=int, default=200, help="reviews for learn.predict")
    args = parser.parse_args()
    logging.getLogger("ulmfit").setLevel(logging.WARNING)
    threads = use_all_cores()

    base = get_preset(args.preset)
    preset = replace(base, classifier=replace(base.classifier, max_len=1_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        model = seeded_classifier(run, args.data, preset, args.reviews)
        itos = read_json(run.vocab)
        _, texts, labels = load_raw_labelled(run.shards(run.raw), "test")
        ours = Classifier.load(run.classifier, device="cpu")
        t0 = time.perf_counter()
        probs = ours.predict_texts(texts)
        ours_rate = len(texts) / (time.perf_counter() - t0)

        pick = [i for y in ("neg", "pos") for i in [j for j, l in enumerate(labels) if l == y][:32]]
        df = pd.DataFrame({"text": [texts[i] for i in pick], "label": [labels[i] for i in pick]})
        dls = TextDataLoaders.from_df(df, text_col="text", label_col="label", text_vocab=itos,
                                      bs=8, valid_pct=0.25, seed=0)
        learn = text_classifier_learner(dls, AWD_LSTM, config=clas_config(preset.model),
                                        pretrained=False, drop_mult=preset.classifier.drop_mult,
                                        seq_len=preset.classifier.seq_len,
                                        max_len=preset.classifier.max_len)
        learn.model.load_state_dict(model.state_dict())
        assert list(learn.dls.vocab[1]) == ["neg", "pos"]
        n = min(args.fastai_reviews, len(texts))
        t0 = time.perf_counter()
        with learn.no_bar():
            theirs = np.stack([learn.predict(t)[2].numpy() for t in texts[:n]])
        fastai_rate = n / (time.perf_counter() - t0)

    diff = float(np.abs(theirs - probs[:n]).max())
    agree = int((theirs.argmax(1) == probs[:n].argmax(1)).sum())
    print(f"model {vars(preset.model)}, vocab {len(itos)}, {threads} threads")
    print(f"fastai learn.predict loop: {fastai_rate:8.1f} reviews/s ({n} reviews)")
    print(f"project predict_texts:     {ours_rate:8.1f} reviews/s ({len(texts)} reviews)")
    print(f"ratio: {ours_rate / fastai_rate:.1f}x")
    print(f"predictions: labels agree on {agree}/{n}, largest probability difference {diff:.2e}")


if __name__ == "__main__":
    main()
