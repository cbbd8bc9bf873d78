"""The ULMFiT pipeline as Prefect flows.

    preprocess      ingest → tokenize shards on Dask → vocab → numericalize shards on Dask
    train-lm        fine-tune the AWD-LSTM language model → export its encoder
    train-classifier  staged classifier on the encoder → evaluate on the test split
    ulmfit          all three, then the report
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from tasks import preprocess as prep
from tasks import report as rep
from tasks import train
from ulmfit_core.config import get_preset
from ulmfit_core.rundir import RunDir, tracked_run

from .runtime import dask_task_runner


@flow(name="ulmfit-preprocess", log_prints=True)
def preprocess_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                    seed: int = 0, shard_docs: int = 2000, tokenizer: str | None = None,
                    vocab_size: int | None = None) -> dict:
    """Raw shards → (subword model) → token shards (in parallel) → vocab → id shards (in parallel)."""
    settings = get_preset(preset, tokenizer, vocab_size)
    t0 = time.time()
    ingested = prep.ingest(out, data, limit, seed, shard_docs)
    print(f"ingested {ingested['docs']} documents into {len(ingested['shards'])} shards "
          f"(skipped {ingested['skipped']['total']})")
    prep.train_tokenizer.submit(out, settings, seed).result()
    tokenized = prep.tokenize_shard.map(unmapped(out), ingested["shards"], unmapped(settings)).result()
    # On a worker: the vocab needs fastai, which the orchestrating process does not load.
    vocab = prep.build_vocab.submit(out, settings, [r["counts"] for r in tokenized]).result()
    print(f"vocab: {vocab['size']} entries from {vocab['distinct_tokens']} distinct tokens")
    token_shards = [r["shard"] for r in tokenized]
    numericalized = prep.numericalize_shard.map(unmapped(out), token_shards).result()
    return prep.summarize(out, tokenized, numericalized, vocab, time.time() - t0)


@flow(name="ulmfit-train-lm", log_prints=True)
def train_lm_flow(out: str, preset: str = "tiny", seed: int = 0, pretrained: str = "none") -> dict:
    """Fine-tune the language model on all the text (from pretrained weights when given),
    then export its encoder."""
    metrics = train.train_lm(out, get_preset(preset), seed, pretrained)
    print(f"language model: valid loss {metrics['valid_loss']:.4f}, accuracy "
          f"{metrics['accuracy']:.4f}, perplexity {metrics['perplexity']:.2f}")
    train.export_encoder(out)
    return metrics


@flow(name="ulmfit-train-classifier", log_prints=True)
def train_classifier_flow(out: str, preset: str = "tiny", seed: int = 0) -> dict:
    """Gradual unfreezing on the labelled train split, then accuracy on the test split, beside
    the classical NB-LR baseline trained on the same reviews."""
    train.train_classifier(out, get_preset(preset), seed)
    result = train.evaluate(out)
    if result["accuracy"] is not None:
        base = train.baseline(out)
        print(f"test accuracy {result['accuracy']:.4f} on {result['n']} reviews "
              f"(NB-LR baseline {base['accuracy']:.4f})")
    return result


@flow(name="ulmfit", log_prints=True)
def ulmfit_flow(out: str, data: str = "imdb", preset: str = "tiny", limit: int | None = None,
                seed: int = 0, dask_address: str | None = None, workers: int | None = None,
                shard_docs: int = 2000, tokenizer: str | None = None,
                vocab_size: int | None = None, pretrained: str = "none") -> dict:
    """The whole recipe, from a corpus to a report."""
    params = {"data": data, "preset": preset, "limit": limit, "seed": seed, "out": out,
              "tokenizer": tokenizer or "word", "vocab_size": vocab_size, "pretrained": pretrained}
    with tracked_run(RunDir(out), params):
        runner = dask_task_runner(dask_address, workers)
        preprocess_flow.with_options(task_runner=runner)(out, data, preset, limit, seed, shard_docs,
                                                         tokenizer, vocab_size)
        train_lm_flow(out, preset, seed, pretrained)
        train_classifier_flow(out, preset, seed)
        metrics = rep.report(out, params, seed)
    print(f"report: {RunDir(out).report}")
    return metrics
