"""The pipeline's stages as functions of a run directory.

Each stage reads what earlier stages wrote under the run directory, writes its own outputs there
(atomically), and returns a small JSON-able summary. The Prefect tasks call these and nothing else.

Modules that load torch, fastai or spaCy are imported inside the stages that use them: the
orchestrating process runs ingest and the Dask scheduler and should not carry a model stack.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from . import __version__
from .config import Preset
from .data import iter_raw_texts, load_docs, load_raw_labelled, seeded_unit
from .ingest import ingest, resolve_source
from .rundir import RunDir, read_json, write_json
from .shards import file_sha256, reusable, write_manifest

INGEST_MANIFEST = "_ingest.json"


def ingest_stage(run: RunDir, data: str, limit: int | None, seed: int,
                 shard_docs: int = 2000) -> dict:
    t0 = time.time()
    source = resolve_source(data)
    result = ingest(source, run.raw, limit=limit, seed=seed, shard_docs=shard_docs)
    _prune_stale(run, {Path(p).stem for p in result.shards})
    summary = {"source": str(source), "limit": limit, "seed": seed, "shards": result.shards,
               "docs": result.docs, "groups": result.groups, "skipped": result.skipped,
               "seconds": time.time() - t0}
    write_json(run.raw / INGEST_MANIFEST, summary)
    return summary


def _prune_stale(run: RunDir, stems: set[str]) -> None:
    """Remove token and id shards (and their side files) left from raw shards that are gone."""
    for folder in (run.tokens, run.ids):
        for path in folder.glob("*-*.*") if folder.exists() else []:
            if "part-" + path.stem.split("-")[-1] not in stems:
                path.unlink()


SUBWORD_SAMPLE_DOCS = 20_000


def tokenizer_stage(run: RunDir, preset: Preset, seed: int) -> dict:
    """Record the tokenizer; for subwords, train SentencePiece on a sample of the training text.

    The sample is every train/unsup document whose seeded draw falls under the share that
    gives about SUBWORD_SAMPLE_DOCS documents. A model made from the same raw shards and
    settings is reused.
    """
    from .subword import MODEL_FILE, train_subword_model

    cfg, folder = preset.tokenizer, run.tokenizer
    write_json(folder / "tokenizer.json", vars(cfg))
    model = folder / MODEL_FILE
    if cfg.kind == "word":
        for stale in (model, model.with_suffix(".json")):  # from an earlier subword run
            stale.unlink(missing_ok=True)
        return {"kind": "word"}

    manifest = read_json(run.raw / INGEST_MANIFEST)
    inputs = {Path(p).name: file_sha256(p) for p in manifest["shards"]}
    settings = {"tokenizer": vars(cfg), "seed": seed, "sample_docs": SUBWORD_SAMPLE_DOCS}
    summary = reusable(model, inputs, settings)
    if summary is not None:
        return summary
    candidates = sum(n for group, n in manifest["groups"].items() if not group.startswith("test/"))
    share = min(1.0, SUBWORD_SAMPLE_DOCS / max(candidates, 1))
    docs = iter_raw_texts(manifest["shards"], ["train", "unsup"])
    texts = (text for doc_id, text in docs if seeded_unit(seed, doc_id, "subword-sample") < share)
    t0 = time.time()
    train_subword_model(texts, cfg.subword_vocab_size, folder, cfg.lang)
    summary = {"kind": "subword", "vocab_size": cfg.subword_vocab_size, "seconds": time.time() - t0}
    write_manifest(model, [model], inputs, settings, summary)
    return summary


def token_paths(run: RunDir, raw_shard: str | Path) -> tuple[Path, Path]:
    """Where the token shard and the count table of a raw shard go."""
    stem = Path(raw_shard).stem  # part-00000
    return run.tokens / f"{stem}.parquet", run.tokens / f"counts-{stem[5:]}.parquet"


def _tokenizer_settings(preset: Preset) -> dict:
    import fastai
    import spacy

    return {"tokenizer": vars(preset.tokenizer), "fastai": fastai.__version__,
            "spacy": spacy.__version__, "ulmfit": __version__}


def tokenize_stage(run: RunDir, raw_shard: str, preset: Preset) -> dict:
    """Tokenize one raw shard, or reuse its token shard if made from the same input and settings."""
    out, counts = token_paths(run, raw_shard)
    inputs, settings = {Path(raw_shard).name: file_sha256(raw_shard)}, _tokenizer_settings(preset)
    if preset.tokenizer.kind == "subword":
        inputs["spm.model"] = file_sha256(run.require(run.tokenizer / "spm.model", "tokenizer"))
    summary = reusable(out, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    from .tokenize import tokenize_shard

    t0 = time.time()
    result = tokenize_shard(raw_shard, out, counts, preset.tokenizer, run.tokenizer)
    summary = {**result, "shard": str(out), "counts": str(counts), "seconds": time.time() - t0}
    write_manifest(out, [out, counts], inputs, settings, summary)
    return {**summary, "reused": False}


def vocab_stage(run: RunDir, preset: Preset, count_paths: list[str]) -> dict:
    from .vocab import Vocab, merge_counts

    counts = merge_counts(count_paths)
    vocab = Vocab.from_counts(counts, preset.vocab.max_vocab, preset.vocab.min_freq)
    vocab.save(run.vocab)
    return {"size": len(vocab), "distinct_tokens": len(counts), "path": str(run.vocab)}


def numericalize_stage(run: RunDir, token_shard: str) -> dict:
    """Encode one token shard with the vocab, or reuse its id shard if both are unchanged."""
    from .vocab import Vocab, numericalize_shard

    out = run.ids / Path(token_shard).name
    vocab_path = run.require(run.vocab, "vocab")
    inputs = {Path(token_shard).name: file_sha256(token_shard), "vocab.json": file_sha256(vocab_path)}
    summary = reusable(out, inputs, {})
    if summary is not None:
        return {**summary, "reused": True}
    summary = {**numericalize_shard(token_shard, Vocab.load(vocab_path), out), "shard": str(out)}
    write_manifest(out, [out], inputs, {}, summary)
    return {**summary, "reused": False}


def summarize_preprocess(run: RunDir, tokenized: list[dict], numericalized: list[dict],
                         vocab: dict, seconds: float) -> dict:
    manifest = read_json(run.raw / INGEST_MANIFEST)
    summary = {
        "docs": sum(r["docs"] for r in tokenized),
        "tokens": sum(r["tokens"] for r in tokenized),
        "unknown_tokens": sum(r["unknown"] for r in numericalized),
        "skipped": manifest["skipped"]["total"],
        "skipped_by_reason": manifest["skipped"]["by_reason"],
        "skipped_examples": manifest["skipped"]["examples"],
        "groups": manifest["groups"],
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


def _copy_text_assets(run: RunDir, folder: Path) -> None:
    """Make a model folder self-contained: its vocab and the tokenizer that feeds it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.require(run.vocab, "vocab"), folder / "vocab.json")
    for name in ("tokenizer.json", "spm.model"):
        if (run.tokenizer / name).exists():
            shutil.copyfile(run.tokenizer / name, folder / name)


def lm_stage(run: RunDir, preset: Preset, seed: int, pretrained: str = "none") -> dict:
    """Fine-tune the LM on all text; `pretrained` is "none", "wt103" or a weights folder/file."""
    from .models import save_model
    from .pretrained import load_pretrained
    from .train import train_language_model
    from .vocab import Vocab

    vocab = Vocab.load(run.require(run.vocab, "vocab"))
    start, source = None, None
    if pretrained != "none":
        start, source = load_pretrained(pretrained, vocab.itos, preset.model)
    docs = load_docs(run.shards(run.ids))  # all text, labels unused
    model, metrics = train_language_model(docs, len(vocab), preset, seed, pretrained=start)
    metrics["pretrained"] = source
    _copy_text_assets(run, run.lm)
    save_model(run.lm / "model.pth", "language_model", model.state_dict(),
               model=vars(preset.model), drop_mult=preset.lm.drop_mult, vocab_size=len(vocab))
    write_json(run.lm / "metrics.json", metrics)
    return metrics


def export_stage(run: RunDir) -> dict:
    """The encoder of the fine-tuned LM, with its vocab and model config, for the classifier."""
    from .models import load_model_file, save_model

    payload = load_model_file(run.require(run.lm / "model.pth", "train-lm"), "language_model")
    prefix = "0."
    encoder = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    _copy_text_assets(run, run.export)
    path = save_model(run.export / "encoder.pth", "encoder", encoder, model=payload["model"],
                      vocab_size=payload["vocab_size"])
    write_json(run.export / "config.json", {"arch": "AWD_LSTM", "model": payload["model"],
                                            "vocab_size": payload["vocab_size"]})
    return {"path": str(path), "parameters": int(sum(v.numel() for v in encoder.values()))}


def classifier_stage(run: RunDir, preset: Preset, seed: int) -> dict:
    from .models import load_model_file, save_model
    from .train import train_classifier

    for stale in ("test.json", "baseline.json"):  # scores of an earlier classifier
        (run.classifier / stale).unlink(missing_ok=True)
    encoder = load_model_file(run.require(run.export / "encoder.pth", "encoder export"), "encoder")
    if encoder["model"] != vars(preset.model):
        raise ValueError(f"the exported encoder has model {encoder['model']}, but preset "
                         f"'{preset.name}' builds {vars(preset.model)}: use the LM's preset")
    docs = load_docs(run.shards(run.ids), splits=["train"], labelled=True)
    model, labels, metrics = train_classifier(docs, encoder["state_dict"], encoder["vocab_size"],
                                              preset, seed)
    _copy_text_assets(run, run.classifier)
    save_model(run.classifier / "model.pth", "classifier", model.state_dict(), labels=labels,
               model=vars(preset.model), classifier=preset.to_dict()["classifier"],
               vocab_size=encoder["vocab_size"])
    write_json(run.classifier / "metrics.json", metrics)
    return metrics


def evaluate_stage(run: RunDir) -> dict:
    from .predict import Classifier, evaluate

    t0 = time.time()
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    classifier = Classifier.load(run.classifier)
    unknown = sorted(set(docs.labels) - set(classifier.labels))
    if unknown:
        raise ValueError(f"test split has labels {unknown} that the classifier never saw")
    if len(docs):
        probs = classifier.predict_ids(docs.ids)
        result = evaluate(probs, classifier.labels, docs.labels)
        result["top_losses"] = _top_losses(run, docs, probs, classifier.labels)
    else:
        result = {"n": 0, "accuracy": None, "labels": classifier.labels, "confusion": None}
    result["label_counts"] = dict(Counter(docs.labels))
    result["seconds"] = time.time() - t0
    write_json(run.classifier / "test.json", result)
    return result


def _top_losses(run: RunDir, docs, probs, labels: list[str], k: int = 5) -> list[dict]:
    """The k test reviews the classifier got most confidently wrong (or least right)."""
    truth = [labels.index(y) for y in docs.labels]
    p_true = probs[range(len(truth)), truth]
    worst = [int(i) for i in p_true.argsort()[:k]]
    ids, texts, _ = load_raw_labelled(run.shards(run.raw), "test")
    text_of = dict(zip(ids, texts))
    return [{"id": docs.doc_ids[i], "label": docs.labels[i], "predicted": labels[int(probs[i].argmax())],
             "p_label": float(p_true[i]), "text": text_of.get(docs.doc_ids[i], "")[:400]}
            for i in worst]


def baseline_stage(run: RunDir) -> dict:
    """The classical NB-LR baseline on the same train and test reviews as the classifier."""
    from .baseline import nb_logistic_regression

    _, train_texts, train_labels = load_raw_labelled(run.shards(run.raw), "train")
    _, test_texts, test_labels = load_raw_labelled(run.shards(run.raw), "test")
    result = nb_logistic_regression(train_texts, train_labels, test_texts, test_labels)
    write_json(run.classifier / "baseline.json", result)
    return result
