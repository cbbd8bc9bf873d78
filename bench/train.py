"""Training throughput: the project's training against fastai's Learner and a plain PyTorch loop.

    python bench/train.py [--device cuda|cpu] [--data imdb] [--limit N] [--preset P]
                          [--tokens N] [--bs N] [--seq-len N] [--clas-bs N] [--clas-reviews N]
                          [--ranks 1 2 ...]

Three ways of training the same model on the same documents, on one device, in one run:

- plain: a hand-written PyTorch loop, the ceiling. All batches are built on the device before
  the clock starts; each step is autocast (fp16 with a GradScaler on CUDA, bf16 on CPU as the
  preset asks), the loss fastai's text Learners minimize (cross-entropy plus AR/TAR), backward
  and `torch.optim.AdamW`.
- fastai: fastai's own data loaders (`LMDataLoader`; `SortedDL` with `pad_input_chunk`) and
  Learners (`LMLearner`; `TextLearner` around `get_text_classifier`, fastai's SentenceEncoder)
  with `fit_one_cycle(1)`, fp16 through fastai's `to_fp16` on CUDA and the project's bf16
  autocast callback on CPU (fastai has none for the CPU).
- project: `train_language_model` and `train_classifier` as the pipeline runs them (progress
  log, per-epoch checkpoint, the device loader), their own tokens/s and seconds.

With `--ranks`, instead: the project's data-parallel training (`--train-workers`) with each
number of ranks, on a LocalCluster of that many worker processes (one GPU each on a machine with
several; on the CPU, each rank gets cores / max(ranks) threads, so one rank and N ranks use one
and N shares of the machine alike). It prints tokens/s (LM) and reviews/s (classifier), the
speedup over one rank and the scaling efficiency (speedup / N).

Language model: one epoch over the sample, tokens/s = tokens predicted (bs rows of the stream)
over the wall time of the epoch and its validation. Classifier: one unfrozen epoch over the
labelled train reviews (10% held out for validation, as the pipeline does), reviews/s over the
wall time of the epoch and its validation. Sizes: on CUDA the `gpu` preset's model, LM bs 128 x
seq 80; on the CPU the `cpu` preset's, on a small sample so the run takes a few minutes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.text.data import LMDataLoader, SortedDL, pad_input_chunk
from fastai.text.learner import LMLearner, TextLearner
from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_split, awd_lstm_lm_split
from fastai.text.models.core import get_text_classifier
from fastai.torch_core import set_seed

from ulmfit_core import stages
from ulmfit_core.config import Stage, get_preset
from ulmfit_core.model.networks import build_classifier, build_language_model, clas_config, encoder_of, pad_front
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.text.data import load_docs
from ulmfit_core.text.vocab import PAD_ID
from ulmfit_core.training import (Checkpoint, CPUBFloat16, classifier_dataloaders, lm_dataloaders, precision,
                               train_classifier, train_language_model, use_all_cores)
from ulmfit_core.training.loaders import sample_tokens

SEED = 0
# Per device: the preset whose sizes are timed, reviews per split/label read, LM tokens sampled.
DEFAULTS = {"cuda": {"preset": "gpu", "limit": 2500, "tokens": None},
            "cpu": {"preset": "cpu", "limit": 500, "tokens": 150_000}}


class Clock:
    """Wall seconds of a block, waiting for the device's queued work at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.t0


def autocast(device: torch.device, mode: str):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=mode != "fp32")


def ar_tar(pred, alpha: float = 2.0, beta: float = 1.0) -> torch.Tensor:
    """fastai's RNNRegularizer (TextLearner's defaults): activation and temporal activation terms."""
    raw, dropped = pred[1], pred[2]
    temporal = (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return alpha * dropped.float().pow(2).mean() + beta * temporal


def plain_fit(model, train_batches, valid_batches, loss_of, lr: float, wd: float,
              device: torch.device, mode: str) -> float:
    """One epoch of plain steps and one validation pass over prepared batches; wall seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=wd)
    scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")
    with Clock(device) as clock:
        model.train()
        model.reset()
        for x, y in train_batches:
            with autocast(device, mode):
                pred = model(x)
                loss = loss_of(pred, y) + ar_tar(pred)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        model.eval()
        model.reset()
        with torch.no_grad(), autocast(device, mode):
            for x, y in valid_batches:
                loss_of(model(x), y)
    return clock.seconds


def lm_loss(pred, y) -> torch.Tensor:
    return F.cross_entropy(pred[0].float().flatten(0, 1), y.flatten())


def stream_batches(dl) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An LM loader's batches for its documents in their first order, built before the clock."""
    return [(x.as_subclass(torch.Tensor), y) for x, y in dl]


def bench_lm(docs, vocab_size: int, preset, device: torch.device, mode: str, tmp: Path) -> dict:
    cfg = preset.lm
    train, valid = docs.split(cfg.valid_pct, SEED, "lm-valid")
    ours = lm_dataloaders(train, valid, cfg, device, SEED)
    tokens = ours.train.bs * ours.train.bl  # predicted per epoch, the same for all three
    print(f"LM: {len(train)} / {len(valid)} documents, {train.n_tokens:,} / {valid.n_tokens:,} "
          f"tokens (train / valid), bs {cfg.bs} x seq {cfg.seq_len}, {len(ours.train)} batches, {mode}")
    rates = {}

    ours.valid.shuffle = ours.train.shuffle = False
    train_batches, valid_batches = stream_batches(ours.train), stream_batches(ours.valid)
    # A few untimed steps first: CUDA's (or oneDNN's) first calls set up kernels and handles.
    plain_fit(build_language_model(vocab_size, preset.model, cfg.drop_mult).to(device),
              train_batches[:5], [], lm_loss, cfg.lr, cfg.wd, device, mode)
    torch.manual_seed(SEED)
    model = build_language_model(vocab_size, preset.model, cfg.drop_mult).to(device)
    seconds = plain_fit(model, train_batches, valid_batches, lm_loss, cfg.lr, cfg.wd, device, mode)
    rates["plain"] = tokens / seconds
    train_ids, valid_ids, valid_bs = ours.train.items.coll, ours.valid.items.coll, ours.valid.bs
    del model, train_batches, valid_batches, ours
    free(device)

    set_seed(SEED, reproducible=True)
    dls = DataLoaders(LMDataLoader(train_ids, bs=cfg.bs, seq_len=cfg.seq_len, shuffle=True),
                      LMDataLoader(valid_ids, bs=valid_bs, seq_len=cfg.seq_len),
                      device=device)
    learn = LMLearner(dls, build_language_model(vocab_size, preset.model, cfg.drop_mult),
                      loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_lm_split,
                      metrics=[accuracy, Perplexity()], wd=cfg.wd)
    learn = with_precision(learn, mode)
    with Clock(device) as clock, learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, cfg.lr)
    rates["fastai"] = tokens / clock.seconds
    del learn, dls
    free(device)

    model, metrics = train_language_model(docs, vocab_size, preset, SEED, device=device,
                                          checkpoint=Checkpoint(tmp / "lm-checkpoint.pth"))
    rates["project"] = metrics["tokens_per_s"]
    report("tokens/s", rates, metrics)
    return encoder_of(model).state_dict()


def free(device: torch.device) -> None:
    """Give back the GPU memory of the last contender, so the project's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def with_precision(learn, mode: str):
    if mode == "fp16":
        return learn.to_fp16()
    if mode == "bf16":
        learn.add_cb(CPUBFloat16())
    return learn


def clas_loss(pred, y) -> torch.Tensor:
    return F.cross_entropy(pred[0].float(), y)


def padded_batches(dataset, bs: int, device: torch.device, shuffle: bool) -> list:
    """Reviews sorted by length, cut into batches padded at the front, moved to the device."""
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i][0]), reverse=True)
    batches = []
    for start in range(0, len(order), bs):
        samples = pad_front([dataset[i] for i in order[start:start + bs]], pad_idx=PAD_ID)
        batches.append((torch.stack([s[0] for s in samples]).to(device),
                        torch.stack([s[1] for s in samples]).to(device)))
    if shuffle:
        random.Random(SEED).shuffle(batches)
    return batches


def bench_classifier(docs, encoder_state: dict, vocab_size: int, preset, device: torch.device,
                     mode: str, tmp: Path) -> None:
    cfg = preset.classifier
    labels = sorted({y for y in docs.labels if y is not None})
    train, valid = docs.split(cfg.valid_pct, SEED, "classifier-valid")
    ours = classifier_dataloaders(train, valid, {y: i for i, y in enumerate(labels)}, cfg, device)
    print(f"classifier: {len(train)} / {len(valid)} reviews, {train.n_tokens:,} / {valid.n_tokens:,} "
          f"tokens (train / valid), bs {cfg.bs}, one unfrozen epoch, {mode}")
    rates = {}

    torch.manual_seed(SEED)
    model = build_classifier(vocab_size, len(labels), preset.model, cfg).to(device)
    encoder_of(model).load_state_dict(encoder_state)
    seconds = plain_fit(model, padded_batches(ours.train.dataset, cfg.bs, device, shuffle=True),
                        padded_batches(ours.valid.dataset, cfg.bs * 2, device, shuffle=False),
                        clas_loss, cfg.stages[0].lr, cfg.wd, device, mode)
    rates["plain"] = len(train) / seconds
    del model
    free(device)

    set_seed(SEED, reproducible=True)
    pad = partial(pad_input_chunk, pad_idx=PAD_ID, seq_len=cfg.seq_len)
    dls = DataLoaders(SortedDL(ours.train.dataset, res=ours.train.res, bs=cfg.bs, shuffle=True,
                               before_batch=pad),
                      SortedDL(ours.valid.dataset, res=ours.valid.res, bs=cfg.bs * 2, before_batch=pad),
                      device=device)
    model = get_text_classifier(AWD_LSTM, vocab_size, len(labels), seq_len=cfg.seq_len,
                                config=clas_config(preset.model), drop_mult=cfg.drop_mult,
                                max_len=cfg.max_len)
    encoder_of(model).load_state_dict(encoder_state)
    learn = TextLearner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=awd_lstm_clas_split,
                        metrics=accuracy, wd=cfg.wd)
    learn = with_precision(learn, mode)
    learn.unfreeze()
    with Clock(device) as clock, learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, cfg.stages[0].lr)
    rates["fastai"] = len(train) / clock.seconds
    del learn, model, dls, ours
    free(device)

    _, _, metrics = train_classifier(docs, encoder_state, vocab_size, preset, SEED, device=device,
                                     checkpoint=Checkpoint(tmp / "classifier-checkpoint.pth"))
    rates["project"] = metrics["train_docs"] / metrics["seconds"]
    report("reviews/s", rates, metrics)


def report(unit: str, rates: dict, metrics: dict) -> None:
    names = {"plain": "plain PyTorch step", "fastai": "fastai Learner + loader", "project": "project"}
    for key, name in names.items():
        print(f"  {name:<26}{rates[key]:>12,.1f} {unit}")
    peak = metrics["peak_gpu_memory_mb"]
    print(f"  project/plain {rates['project'] / rates['plain']:.2f}, project/fastai "
          f"{rates['project'] / rates['fastai']:.2f}; project {metrics['tokens_per_s']:,.0f} "
          f"tokens/s" + ("" if peak is None else f", peak GPU memory {peak:,.0f} MB"))


def _rank_rates(root: str, preset, tokens: int | None) -> dict:
    """One LM epoch and one classifier epoch as a rank trains them; rank 0 reports the rates."""
    run = RunDir(root)
    vocab_size = len(read_json(run.vocab))
    docs = sample_tokens(load_docs(run.shards(run.ids)), tokens, seed=SEED)
    model, lm = train_language_model(docs, vocab_size, preset, SEED)
    labelled = load_docs(run.shards(run.ids), splits=["train"], labelled=True)
    _, _, clas = train_classifier(labelled, encoder_of(model).state_dict(), vocab_size, preset, SEED)
    return {"lm": lm["tokens_per_s"], "classifier": clas["train_docs"] / clas["seconds"],
            "threads": lm["threads"]}


def bench_ranks(root: Path, preset, tokens: int | None, counts: list[int], device: torch.device) -> None:
    from tasks.ranks import Ranks, run_ranks

    cores = len(os.sched_getaffinity(0))
    threads = None if device.type == "cuda" else max(1, cores // max(counts))
    rates = {n: run_ranks(Ranks(n, threads=threads), _rank_rates, str(root), preset, tokens)[0]
             for n in counts}
    base = rates[counts[0]]
    print(f"data-parallel ranks on {device.type} ({threads or 'all'} threads per rank), "
          f"against {counts[0]} rank(s):")
    for n, rate in rates.items():
        ratio = {k: rate[k] / base[k] * counts[0] for k in ("lm", "classifier")}
        print(f"  {n} rank(s): LM {rate['lm']:>10,.0f} tokens/s (speedup {ratio['lm']:.2f}, "
              f"efficiency {ratio['lm'] / n:.2f}); classifier {rate['classifier']:>8,.1f} reviews/s "
              f"(speedup {ratio['classifier']:.2f}, efficiency {ratio['classifier'] / n:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--limit", type=int, help="reviews per split/label (default: per device)")
    parser.add_argument("--preset", help="model sizes and settings (default: gpu on cuda, cpu on cpu)")
    parser.add_argument("--tokens", type=int,
                        help="LM sample in tokens (default: all on cuda, 150,000 on cpu)")
    parser.add_argument("--bs", type=int, help="LM batch size (default: the preset's)")
    parser.add_argument("--seq-len", type=int, help="LM sequence length (default: the preset's)")
    parser.add_argument("--clas-bs", type=int, help="classifier batch size (default: the preset's)")
    parser.add_argument("--clas-reviews", type=int, help="labelled train reviews for the classifier "
                                                         "(default: all that --limit reads)")
    parser.add_argument("--ranks", type=int, nargs="+",
                        help="time data-parallel training with these numbers of ranks instead")
    args = parser.parse_args()
    logging.getLogger("ulmfit").setLevel(logging.WARNING)
    device = torch.device(args.device)
    defaults = DEFAULTS[device.type]
    limit = args.limit or defaults["limit"]
    tokens = args.tokens or defaults["tokens"]

    base = get_preset(args.preset or defaults["preset"])
    clas = base.classifier
    preset = replace(
        base,
        lm=replace(base.lm, epochs=1, sample_tokens=None, bs=args.bs or base.lm.bs,
                   seq_len=args.seq_len or base.lm.seq_len),
        classifier=replace(clas, bs=args.clas_bs or clas.bs,
                           stages=(Stage("unfreeze", None, 1, clas.stages[-1].lr),)),
    )
    threads = use_all_cores()
    mode = precision(device, preset)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} threads"
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        stages.preprocess_in_process(run, args.data, preset, limit=limit)
        vocab_size = len(read_json(run.vocab))
        print(f"{device.type} ({where}), preset {preset.name}: model {vars(preset.model)}, "
              f"vocab {vocab_size}")
        if args.ranks:
            bench_ranks(run.root, preset, tokens, args.ranks, device)
            return
        docs = sample_tokens(load_docs(run.shards(run.ids)), tokens, seed=SEED)
        encoder_state = bench_lm(docs, vocab_size, preset, device, mode, Path(tmp))
        labelled = load_docs(run.shards(run.ids), splits=["train"], labelled=True)
        if args.clas_reviews:
            labelled = labelled.subset([i < args.clas_reviews for i in range(len(labelled))])
        bench_classifier(labelled, encoder_state, vocab_size, preset, device, mode, Path(tmp))


if __name__ == "__main__":
    main()
