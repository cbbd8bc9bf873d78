"""The pipeline's stages as functions of a run directory.

Each stage reads what earlier stages wrote under the run directory, writes its own outputs there
(atomically), and returns a small JSON-able summary. The Prefect tasks call these and nothing else.

Modules that load torch, fastai or spaCy are imported inside the stages that use them: the
orchestrating process runs ingest and the Dask scheduler and should not carry a model stack.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from . import __version__
from .config import Preset
from .data import iter_raw_texts, load_docs, load_raw_labelled, seeded_unit
from .ingest import ingest, resolve_source, source_digest
from .rundir import RunDir, atomic_path, read_json, write_json
from .shards import file_sha256, reusable, write_manifest

INGEST_MANIFEST = "_ingest.json"
LABEL_SAMPLE = "train-labels.json"  # the reviews a classifier trained on few labels saw


def file_inputs(run: RunDir, paths) -> dict[str, str]:
    """{path relative to the run: SHA-256} of the files a stage reads."""
    return {run.rel(p): file_sha256(p) for p in paths}


def ingest_stage(run: RunDir, data: str, limit: int | None, seed: int,
                 shard_docs: int = 2000) -> dict:
    """Read the source into raw shards; reused when the source's content and the settings are
    those of the raw shards already there. They are written into a folder beside raw/ that
    replaces it only once the whole source was read, so a failed ingest leaves the earlier run
    as it was instead of raw shards of two sources side by side."""
    t0 = time.time()
    source = resolve_source(data)
    inputs = {"source": source_digest(source)}
    settings = {"limit": limit, "seed": seed, "shard_docs": shard_docs}
    summary = reusable(run.raw / INGEST_MANIFEST, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    partial, old = run.root / ".raw.partial", run.root / ".raw.old"
    for folder in (partial, old):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        result = ingest(source, partial, limit=limit, seed=seed, shard_docs=shard_docs)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if run.raw.exists():
        run.raw.rename(old)
    partial.rename(run.raw)
    shutil.rmtree(old, ignore_errors=True)
    shards = [run.raw / Path(p).name for p in result.shards]
    _prune_stale(run, {p.stem for p in shards})
    summary = {"source": str(source), "limit": limit, "seed": seed,
               "shards": [run.rel(p) for p in shards],
               "docs": result.docs, "groups": result.groups, "skipped": result.skipped,
               "seconds": time.time() - t0}
    write_json(run.raw / INGEST_MANIFEST, summary)
    write_manifest(run.raw / INGEST_MANIFEST, [run.raw / INGEST_MANIFEST, *shards], inputs, settings, summary)
    return {**summary, "reused": False}


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
    spec = folder / "tokenizer.json"
    recorded = spec.exists() and read_json(spec) == vars(cfg)
    if not recorded:
        write_json(spec, vars(cfg))
    model = folder / MODEL_FILE
    if cfg.kind == "word":
        for stale in (model, model.with_suffix(".json")):  # from an earlier subword run
            stale.unlink(missing_ok=True)
        return {"kind": "word", "reused": recorded}

    manifest = read_json(run.raw / INGEST_MANIFEST)
    shards = [run.path(p) for p in manifest["shards"]]
    inputs = {p.name: file_sha256(p) for p in shards}
    settings = {"tokenizer": vars(cfg), "seed": seed, "sample_docs": SUBWORD_SAMPLE_DOCS}
    summary = reusable(model, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    candidates = sum(n for group, n in manifest["groups"].items() if not group.startswith("test/"))
    share = min(1.0, SUBWORD_SAMPLE_DOCS / max(candidates, 1))
    docs = iter_raw_texts(shards, ["train", "unsup"])
    texts = (text for doc_id, text in docs if seeded_unit(seed, doc_id, "subword-sample") < share)
    t0 = time.time()
    train_subword_model(texts, cfg.subword_vocab_size, folder, cfg.lang)
    summary = {"kind": "subword", "vocab_size": cfg.subword_vocab_size, "seconds": time.time() - t0}
    write_manifest(model, [model], inputs, settings, summary)
    return {**summary, "reused": False}


def token_paths(run: RunDir, raw_shard: str | Path) -> tuple[Path, Path]:
    """Where the token shard and the count table of a raw shard go."""
    stem = Path(raw_shard).stem  # part-00000
    return run.tokens / f"{stem}.parquet", run.tokens / f"counts-{stem[5:]}.parquet"


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
        inputs["spm.model"] = file_sha256(run.require(run.tokenizer / "spm.model", "tokenizer"))
    summary = reusable(out, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    from .tokenize import tokenize_shard

    t0 = time.time()
    result = tokenize_shard(raw_shard, out, counts, preset.tokenizer, run.tokenizer)
    summary = {**result, "shard": run.rel(out), "counts": run.rel(counts), "seconds": time.time() - t0}
    write_manifest(out, [out, counts], inputs, settings, summary)
    return {**summary, "reused": False}


def vocab_stage(run: RunDir, preset: Preset, count_paths: list[str]) -> dict:
    """fastai's vocab from the per-shard counts, merged in shard order; reused if unchanged."""
    from .vocab import Vocab, merge_counts

    count_paths = [run.path(p) for p in count_paths]
    inputs, settings = file_inputs(run, count_paths), vars(preset.vocab)
    summary = reusable(run.vocab, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    counts = merge_counts(count_paths)
    vocab = Vocab.from_counts(counts, preset.vocab.max_vocab, preset.vocab.min_freq)
    vocab.save(run.vocab)
    summary = {"size": len(vocab), "distinct_tokens": len(counts), "path": run.rel(run.vocab)}
    write_manifest(run.vocab, [run.vocab], inputs, settings, summary)
    return {**summary, "reused": False}


def numericalize_stage(run: RunDir, token_shard: str) -> dict:
    """Encode one token shard with the vocab, or reuse its id shard if both are unchanged."""
    from .vocab import Vocab, numericalize_shard

    token_shard = run.path(token_shard)
    out = run.ids / token_shard.name
    vocab_path = run.require(run.vocab, "vocab")
    inputs = {token_shard.name: file_sha256(token_shard), "vocab.json": file_sha256(vocab_path)}
    summary = reusable(out, inputs, {})
    if summary is not None:
        return {**summary, "reused": True}
    summary = {**numericalize_shard(token_shard, Vocab.load(vocab_path), out), "shard": run.rel(out)}
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


def preprocess_in_process(run: RunDir, data: str, preset: Preset, limit: int | None = None,
                          seed: int = 0, shard_docs: int = 2000) -> dict:
    """The preprocess flow's stages one after another in this process, without Prefect or Dask
    (notebooks, benchmarks, tests): raw shards, tokenizer, token shards, vocab, id shards and
    preprocess.json. Returns its summary with each shard's `tokenized` and `numericalized`."""
    t0 = time.time()
    ingested = ingest_stage(run, data, limit, seed, shard_docs)
    tokenizer_stage(run, preset, seed)
    tokenized = [tokenize_stage(run, shard, preset) for shard in ingested["shards"]]
    vocab = vocab_stage(run, preset, [t["counts"] for t in tokenized])
    numericalized = [numericalize_stage(run, t["shard"]) for t in tokenized]
    summary = summarize_preprocess(run, tokenized, numericalized, vocab, time.time() - t0)
    return {**summary, "tokenized": tokenized, "numericalized": numericalized}


def _copy_text_assets(run: RunDir, folder: Path) -> None:
    """Make a model folder self-contained: its vocab and the tokenizer that feeds it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.require(run.vocab, "vocab"), folder / "vocab.json")
    for name in ("tokenizer.json", "spm.model"):
        if (run.tokenizer / name).exists():
            shutil.copyfile(run.tokenizer / name, folder / name)


CHECKPOINT = "checkpoint.pth"


def fingerprint(inputs: dict, settings: dict) -> str:
    return hashlib.sha256(json.dumps({"inputs": inputs, "settings": settings}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def _training_settings(preset: Preset, part: str, seed: int, run: RunDir, **extra) -> dict:
    config = preset.to_dict()
    return {"model": config["model"], part: config[part], "fp16": preset.fp16,
            "cpu_bf16": preset.cpu_bf16, "seed": seed, "backwards": run.backwards,
            "ulmfit": __version__, **extra}


def training_docs(run: RunDir, **kwargs):
    """The documents of the id shards as this direction trains on them (reversed for backward)."""
    docs = load_docs(run.shards(run.ids), **kwargs)
    return docs.reversed() if run.backwards else docs


def _model_outputs(folder: Path, *names: str) -> list[Path]:
    return [folder / n for n in (*names, "vocab.json", "tokenizer.json", "spm.model")
            if (folder / n).exists()]


def check_classifier_data(run: RunDir, preset: Preset, seed: int,
                          train_labels: int | None = None) -> dict:
    """Refuse, before the language model trains, labelled data the classifier could not use."""
    from .data import classifier_split

    docs = training_docs(run, splits=["train"], labelled=True)  # what the classifier will train on
    labels, train, valid = classifier_split(docs, preset.classifier.valid_pct, seed, train_labels)
    return {"labels": labels, "train_docs": len(train), "valid_docs": len(valid)}


def lm_stage(run: RunDir, preset: Preset, seed: int, pretrained: str = "none",
             progress=None) -> dict:
    """Fine-tune the LM on all text; `pretrained` is "none", "wt103" or a weights folder/file.

    A language model made from the same vocab, id shards and settings is reused. Otherwise each
    epoch is checkpointed under lm/, and a rerun after a crash resumes from the last one.
    """
    from .models import save_model
    from .parallel import rank
    from .pretrained import load_pretrained
    from .train import train_language_model
    from .vocab import Vocab

    vocab_path = run.require(run.vocab, "vocab")
    if run.backwards and pretrained == "wt103":
        pretrained = "wt103-bwd"
    inputs = file_inputs(run, [vocab_path, *run.shards(run.ids)])
    settings = _training_settings(preset, "lm", seed, run, pretrained=pretrained)
    summary = reusable(run.lm / "model.pth", inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    vocab = Vocab.load(vocab_path)
    start, source = None, None
    if pretrained != "none":
        start, source = load_pretrained(pretrained, vocab.itos, preset.model)
    docs = training_docs(run)  # all text, labels unused
    checkpoint = run.lm / CHECKPOINT
    model, metrics = train_language_model(docs, len(vocab), preset, seed, pretrained=start,
                                          checkpoint=checkpoint,
                                          fingerprint=fingerprint(inputs, settings),
                                          progress=progress)
    metrics.update(pretrained=source, backwards=run.backwards)
    if rank() != 0:  # rank 0 of a data-parallel training writes the model
        return {**metrics, "reused": False}
    _copy_text_assets(run, run.lm)
    save_model(run.lm / "model.pth", "language_model", model.state_dict(),
               model=vars(preset.model), drop_mult=preset.lm.drop_mult, vocab_size=len(vocab),
               backwards=run.backwards)
    write_json(run.lm / "metrics.json", metrics)
    write_manifest(run.lm / "model.pth", _model_outputs(run.lm, "model.pth", "metrics.json"),
                   inputs, settings, metrics)
    checkpoint.unlink()
    return {**metrics, "reused": False}


def export_stage(run: RunDir) -> dict:
    """The encoder of the fine-tuned LM, with its vocab and model config, for the classifier."""
    from .models import load_model_file, save_model

    lm_path = run.require(run.lm / "model.pth", "train-lm")
    inputs = file_inputs(run, [lm_path])
    summary = reusable(run.export / "encoder.pth", inputs, {})
    if summary is not None:
        return {**summary, "reused": True}
    payload = load_model_file(lm_path, "language_model")
    prefix = "0."
    encoder = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    _copy_text_assets(run, run.export)
    path = save_model(run.export / "encoder.pth", "encoder", encoder, model=payload["model"],
                      vocab_size=payload["vocab_size"], backwards=run.backwards)
    write_json(run.export / "config.json", {"arch": "AWD_LSTM", "model": payload["model"],
                                            "vocab_size": payload["vocab_size"],
                                            "backwards": run.backwards})
    summary = {"path": run.rel(path), "parameters": int(sum(v.numel() for v in encoder.values()))}
    write_manifest(path, _model_outputs(run.export, "encoder.pth", "config.json"), inputs, {}, summary)
    return {**summary, "reused": False}


def classifier_stage(run: RunDir, preset: Preset, seed: int, progress=None,
                     train_labels: int | None = None) -> dict:
    """Gradual unfreezing on the labelled train split (or a class-balanced sample of
    `train_labels` of its reviews, whose ids go to train-labels.json); reused when the encoder,
    id shards and settings are unchanged, else checkpointed (and resumed) per epoch."""
    from .models import load_model_file, save_model
    from .parallel import rank
    from .train import train_classifier

    encoder_path = run.require(run.export / "encoder.pth", "encoder export")
    inputs = file_inputs(run, [encoder_path, *run.shards(run.ids)])
    settings = _training_settings(preset, "classifier", seed, run)
    if train_labels is not None:
        settings["train_labels"] = train_labels
    summary = reusable(run.classifier / "model.pth", inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    # Scores of an earlier classifier, and the sample it was trained on.
    for stale in ("test.json", PREDICTIONS, "baseline.json", LABEL_SAMPLE):
        (run.classifier / stale).unlink(missing_ok=True)
    run.ensemble.unlink(missing_ok=True)
    encoder = load_model_file(encoder_path, "encoder")
    if encoder["model"] != vars(preset.model):
        raise ValueError(f"the exported encoder has model {encoder['model']}, but preset "
                         f"'{preset.name}' builds {vars(preset.model)}: use the LM's preset")
    docs = training_docs(run, splits=["train"], labelled=True)
    checkpoint = run.classifier / CHECKPOINT
    model, labels, metrics = train_classifier(docs, encoder["state_dict"], encoder["vocab_size"],
                                              preset, seed, checkpoint=checkpoint,
                                              fingerprint=fingerprint(inputs, settings),
                                              progress=progress, train_labels=train_labels)
    metrics["backwards"] = run.backwards
    sample = metrics.pop("sample", None)
    if rank() != 0:
        return {**metrics, "reused": False}
    if sample is not None:
        write_json(run.classifier / LABEL_SAMPLE, {"n": train_labels, "seed": seed, **sample})
    _copy_text_assets(run, run.classifier)
    save_model(run.classifier / "model.pth", "classifier", model.state_dict(), labels=labels,
               model=vars(preset.model), classifier=preset.to_dict()["classifier"],
               vocab_size=encoder["vocab_size"], backwards=run.backwards)
    write_json(run.classifier / "metrics.json", metrics)
    write_manifest(run.classifier / "model.pth",
                   _model_outputs(run.classifier, "model.pth", "metrics.json", LABEL_SAMPLE),
                   inputs, settings, metrics)
    checkpoint.unlink()
    return {**metrics, "reused": False}


PREDICTIONS = "test-predictions.parquet"


def evaluate_stage(run: RunDir, progress=None) -> dict:
    """Accuracy on the labelled test split; per-review probabilities go to a Parquet file."""
    from .predict import Classifier, evaluate

    t0 = time.time()
    model_path = run.require(run.classifier / "model.pth", "train-classifier")
    inputs = file_inputs(run, [model_path, *run.shards(run.ids)])
    summary = reusable(run.classifier / "test.json", inputs, {})
    if summary is not None:
        return {**summary, "reused": True}
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    classifier = Classifier.load(run.classifier)  # reverses the ids itself if it reads backwards
    unknown = sorted(set(docs.labels) - set(classifier.labels))
    if unknown:
        raise ValueError(f"test split has labels {unknown} that the classifier never saw")
    outputs = [run.classifier / "test.json"]
    if len(docs):
        probs = classifier.predict_ids(docs.ids, progress=progress)
        result = evaluate(probs, classifier.labels, docs.labels)
        result["top_losses"] = _top_losses(run, docs, probs, classifier.labels)
        outputs.append(write_predictions(run.classifier / PREDICTIONS, docs, probs, classifier.labels))
    else:
        result = {"n": 0, "accuracy": None, "labels": classifier.labels, "confusion": None}
    result["label_counts"] = dict(Counter(docs.labels))
    result["backwards"] = run.backwards
    result["seconds"] = time.time() - t0
    write_json(run.classifier / "test.json", result)
    write_manifest(run.classifier / "test.json", outputs, inputs, {}, result)
    return {**result, "reused": False}


def write_predictions(path: Path, docs, probs, labels: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": docs.doc_ids, "label": docs.labels,
                      **{f"p_{y}": probs[:, i] for i, y in enumerate(labels)}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def ensemble_stage(run: RunDir) -> dict:
    """The forward and backward classifiers' averaged probabilities on the test split."""
    import numpy as np
    import pyarrow.parquet as pq

    from .predict import evaluate

    fwd, bwd = (pq.read_table(run.direction(b).require(run.direction(b).classifier / PREDICTIONS,
                                                       "evaluate")) for b in (False, True))
    if fwd.column("id").to_pylist() != bwd.column("id").to_pylist():
        raise ValueError("forward and backward test predictions cover different reviews")
    columns = [c for c in fwd.column_names if c.startswith("p_")]
    labels = [c[2:] for c in columns]
    probs = {name: np.stack([t.column(c).to_numpy() for c in columns], axis=1)
             for name, t in (("forward", fwd), ("backward", bwd))}
    probs["ensemble"] = (probs["forward"] + probs["backward"]) / 2
    truth = fwd.column("label").to_pylist()
    result = {name: evaluate(p, labels, truth) for name, p in probs.items()}
    write_json(run.ensemble, result)
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
    """The classical NB-LR baseline on the same train and test reviews as the classifier (its
    sample, when it was trained on one); reused while those are unchanged."""
    from .baseline import nb_logistic_regression

    raw = run.shards(run.raw)
    sample = run.classifier / LABEL_SAMPLE
    inputs = file_inputs(run, [*raw, *([sample] if sample.exists() else [])])
    result = reusable(run.classifier / "baseline.json", inputs, {})
    if result is not None:
        return {**result, "reused": True}
    train_ids, train_texts, train_labels = load_raw_labelled(raw, "train")
    if sample.exists():
        chosen = read_json(sample)
        keep = set(chosen["train"]) | set(chosen["valid"])
        picked = [i for i, doc_id in enumerate(train_ids) if doc_id in keep]
        train_texts, train_labels = [train_texts[i] for i in picked], [train_labels[i] for i in picked]
    _, test_texts, test_labels = load_raw_labelled(raw, "test")
    result = nb_logistic_regression(train_texts, train_labels, test_texts, test_labels)
    write_json(run.classifier / "baseline.json", result)
    write_manifest(run.classifier / "baseline.json", [run.classifier / "baseline.json"], inputs, {}, result)
    return {**result, "reused": False}
