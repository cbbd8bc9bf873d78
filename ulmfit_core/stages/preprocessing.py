"""The preprocessing stages as functions of a run directory: ingest, tokenizer, tokenize (per
shard), vocab, numericalize (per shard), and the summary; `tasks/preprocess.py` wraps them.

Each stage reads what earlier stages wrote under the run directory, writes its own outputs there
(atomically) with a manifest (`manifests.made_once`: reused when unchanged), and returns a small
JSON-able summary. This module never loads torch or fastai: Dask workers that tokenize import it.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path

from .. import __version__
from ..config import TEST_SHARE, Columns, Preset
from ..run.layout import SUBWORD_MODEL, TOKENIZER_SPEC, VOCAB, RunDir, read_json, write_json
from ..run.manifests import file_inputs, file_sha256, made_once, manifest_path
from ..text.data import iter_raw_texts, seeded_unit
from .ingesting import ingest_stage


SUBWORD_SAMPLE_DOCS = 20_000


def tokenizer_stage(run: RunDir, preset: Preset, seed: int) -> dict:
    """Record the tokenizer; for subwords, train SentencePiece on a sample of the training text.

    The sample is every train/unsup document whose seeded draw falls under the share that
    gives about SUBWORD_SAMPLE_DOCS documents. A model made from the same raw shards and
    settings is reused.
    """
    from ..text.subword import train_subword_model

    cfg, folder = preset.tokenizer, run.tokenizer
    spec = folder / TOKENIZER_SPEC
    recorded = spec.exists() and read_json(spec) == vars(cfg)
    if not recorded:
        write_json(spec, vars(cfg))
    model = folder / SUBWORD_MODEL
    if cfg.kind == "word":
        for stale in (model, manifest_path(model)):  # from an earlier subword run
            stale.unlink(missing_ok=True)
        return {"kind": "word", "reused": recorded}

    manifest = read_json(run.ingest_summary)
    shards = [run.path(p) for p in manifest["shards"]]
    inputs = {p.name: file_sha256(p) for p in shards}
    settings = {"tokenizer": vars(cfg), "seed": seed, "sample_docs": SUBWORD_SAMPLE_DOCS}

    def train():
        candidates = sum(n for group, n in manifest["groups"].items() if not group.startswith("test/"))
        share = min(1.0, SUBWORD_SAMPLE_DOCS / max(candidates, 1))
        docs = iter_raw_texts(shards, ["train", "unsup"])
        texts = (text for doc_id, text in docs if seeded_unit(seed, doc_id, "subword-sample") < share)
        t0 = time.time()
        train_subword_model(texts, cfg.subword_vocab_size, folder, cfg.lang)
        return {"kind": "subword", "vocab_size": cfg.subword_vocab_size,
                "seconds": time.time() - t0}, [model]

    return made_once(model, inputs, settings, train)


def token_paths(run: RunDir, raw_shard: str | Path) -> tuple[Path, Path]:
    """Where the token shard and the count table of a raw shard go."""
    stem = Path(raw_shard).stem  # part-00000
    return run.tokens / f"{stem}.parquet", run.tokens / f"counts-{stem[5:]}.parquet"


def token_files(run: RunDir, raw_shard: str | Path) -> list[Path]:
    """Every file the tokenize stage of a raw shard writes: token shard, counts, manifest."""
    out, counts = token_paths(run, raw_shard)
    return [out, counts, manifest_path(out)]


def id_files(run: RunDir, token_shard: str | Path) -> list[Path]:
    """The id shard the numericalize stage makes of a token shard, and its manifest."""
    out = run.ids / Path(token_shard).name
    return [out, manifest_path(out)]


def _tokenizer_settings(preset: Preset) -> dict:
    return {"tokenizer": vars(preset.tokenizer), "fastai": version("fastai"),
            "spacy": version("spacy"), "ulmfit": __version__}


def tokenize_stage(run: RunDir, raw_shard: str, preset: Preset) -> dict:
    """Tokenize one raw shard (a path relative to the run), or reuse its token shard if made from
    the same input and settings."""
    raw_shard = run.path(raw_shard)
    out, counts = token_paths(run, raw_shard)
    inputs, settings = {Path(raw_shard).name: file_sha256(raw_shard)}, _tokenizer_settings(preset)
    if preset.tokenizer.kind == "subword":
        inputs[SUBWORD_MODEL] = file_sha256(run.require(run.tokenizer / SUBWORD_MODEL, "tokenizer"))

    def tokenize():
        from ..text.tokenize import tokenize_shard

        t0 = time.time()
        result = tokenize_shard(raw_shard, out, counts, preset.tokenizer, run.tokenizer)
        return {**result, "shard": run.rel(out), "counts": run.rel(counts),
                "seconds": time.time() - t0}, [out, counts]

    return made_once(out, inputs, settings, tokenize)


def vocab_stage(run: RunDir, preset: Preset, count_paths: list[str]) -> dict:
    """fastai's vocab from the per-shard counts, merged in shard order; reused if unchanged."""
    from ..text.vocab import Vocab, merge_counts

    count_paths = [run.path(p) for p in count_paths]
    inputs, settings = file_inputs(run, count_paths), vars(preset.vocab)

    def build():
        counts = merge_counts(count_paths)
        vocab = Vocab.from_counts(counts, preset.vocab.max_vocab, preset.vocab.min_freq)
        vocab.save(run.vocab)
        return {"size": len(vocab), "distinct_tokens": len(counts), "path": run.rel(run.vocab)}, [run.vocab]

    return made_once(run.vocab, inputs, settings, build)


def numericalize_stage(run: RunDir, token_shard: str) -> dict:
    """Encode one token shard with the vocab, or reuse its id shard if both are unchanged."""
    from ..text.vocab import Vocab, numericalize_shard

    token_shard = run.path(token_shard)
    out = id_files(run, token_shard)[0]
    vocab_path = run.require(run.vocab, "vocab")
    inputs = {token_shard.name: file_sha256(token_shard), VOCAB: file_sha256(vocab_path)}
    return made_once(out, inputs, {}, lambda: (
        {**numericalize_shard(token_shard, Vocab.load(vocab_path), out), "shard": run.rel(out)}, [out]))


def summarize_preprocess(run: RunDir, tokenized: list[dict], numericalized: list[dict],
                         vocab: dict, seconds: float) -> dict:
    manifest = read_json(run.ingest_summary)
    summary = {
        "docs": sum(r["docs"] for r in tokenized),
        "tokens": sum(r["tokens"] for r in tokenized),
        "unknown_tokens": sum(r["unknown"] for r in numericalized),
        "skipped": manifest["skipped"]["total"],
        "skipped_by_reason": manifest["skipped"]["by_reason"],
        "skipped_examples": manifest["skipped"]["examples"],
        "groups": manifest["groups"],
        "columns": manifest.get("columns"),
        "test_split": manifest.get("test_split"),
        "shards": len(tokenized),
        "reused_shards": {"tokens": sum(r["reused"] for r in tokenized),
                          "ids": sum(r["reused"] for r in numericalized)},
        "source": manifest["source"],
        "vocab_size": vocab["size"],
        "distinct_tokens": vocab["distinct_tokens"],
        "seconds": seconds,
    }
    write_json(run.preprocess_metrics, summary)
    return summary


def preprocess_in_process(run: RunDir, data: str, preset: Preset, limit: int | None = None,
                          seed: int = 0, shard_docs: int = 2000, columns: Columns = Columns(),
                          test_share: float = TEST_SHARE) -> dict:
    """The preprocess flow's stages one after another in this process, without Prefect or Dask
    (notebooks, benchmarks, tests): raw shards, tokenizer, token shards, vocab, id shards and
    preprocess.json. Returns its summary with each shard's `tokenized` and `numericalized`."""
    t0 = time.time()
    ingested = ingest_stage(run, data, limit, seed, shard_docs, columns, test_share)
    tokenizer_stage(run, preset, seed)
    tokenized = [tokenize_stage(run, shard, preset) for shard in ingested["shards"]]
    vocab = vocab_stage(run, preset, [t["counts"] for t in tokenized])
    numericalized = [numericalize_stage(run, t["shard"]) for t in tokenized]
    summary = summarize_preprocess(run, tokenized, numericalized, vocab, time.time() - t0)
    return {**summary, "tokenized": tokenized, "numericalized": numericalized}
