"""A preprocessed run directory for the training and prediction benches (stage functions only)."""

from __future__ import annotations

from pathlib import Path

from ulmfit_core import stages
from ulmfit_core.config import Preset
from ulmfit_core.rundir import RunDir


def preprocessed_run(data: str, limit: int | None, out: Path, preset: Preset) -> RunDir:
    """Ingest `data` (at most `limit` documents per split/label), tokenize, build the vocab, encode."""
    run = RunDir(out)
    ingested = stages.ingest_stage(run, data, limit=limit, seed=0)
    tokenized = [stages.tokenize_stage(run, s, preset) for s in ingested["shards"]]
    vocab = stages.vocab_stage(run, preset, [t["counts"] for t in tokenized])
    numericalized = [stages.numericalize_stage(run, t["shard"]) for t in tokenized]
    stages.summarize_preprocess(run, tokenized, numericalized, vocab, seconds=0.0)
    return run
