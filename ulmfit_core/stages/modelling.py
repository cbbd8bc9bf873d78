"""The modelling stages as functions of a run directory: language model, encoder export and
classifier (their scoring on the test split: `evaluating`); `tasks/train.py` wraps them.

Each stage reads what earlier stages wrote under the run directory, writes its own outputs there
(atomically) with a manifest (`manifests.made_once`: reused when unchanged; training also
checkpoints every epoch), and returns a small JSON-able summary. torch and fastai are imported
inside the stages, so that importing this module stays light.
"""

from __future__ import annotations

import hashlib
import json
import shutil

from .. import __version__
from ..config import Preset
from ..errors import DataError
from ..run.layout import TEXT_ASSETS, ModelDir, RunDir, read_json, write_json
from ..run.manifests import file_inputs, made_once, verify_outputs
from ..text.data import training_docs


def copy_text_assets(run: RunDir, folder: ModelDir) -> None:
    """Make a model folder self-contained: its vocab and the tokenizer that feeds it."""
    folder.path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.require(run.vocab, "vocab"), folder.vocab)
    for name in TEXT_ASSETS[1:]:
        if (run.tokenizer / name).exists():
            shutil.copyfile(run.tokenizer / name, folder / name)


def fingerprint(inputs: dict, settings: dict) -> str:
    return hashlib.sha256(json.dumps({"inputs": inputs, "settings": settings}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def _training_settings(preset: Preset, part: str, seed: int, run: RunDir, **extra) -> dict:
    config = preset.to_dict()
    return {"model": config["model"], part: config[part], "fp16": preset.fp16,
            "cpu_bf16": preset.cpu_bf16, "seed": seed, "backwards": run.backwards,
            "ulmfit": __version__, **extra}


def check_classifier_data(run: RunDir, preset: Preset, seed: int,
                          train_labels: int | None = None) -> dict:
    """Refuse, before the language model trains, labelled data the classifier, its evaluation
    or the baseline could not use: fewer than two labels among the train documents, a label
    only in the test split, a validation or sample the train documents cannot give. Errors name
    the source (and its label column). Returns the classifier's labels and split sizes, and the
    classes with fewer than FEW_PER_CLASS training documents."""
    from ..text.data import classifier_split
    from ..text.ingest import FEW_PER_CLASS, label_counts

    ingested = read_json(run.ingest_summary)
    where = ingested["source"]
    if where.lower().endswith((".csv", ".parquet")):
        where += f": label column '{(ingested.get('columns') or {}).get('label', 'label')}'"
    counts = label_counts(ingested["groups"])
    train, test = counts.get("train", {}), counts.get("test", {})
    if len(train) < 2:
        raise DataError(f"{where}: the classifier needs train documents of at least two labels, "
                        f"found {sorted(train) or 'none'}; add labelled train rows to the corpus")
    unseen = {y: n for y, n in test.items() if y not in train}
    if unseen:
        raise DataError(f"{where}: label(s) {sorted(unseen)} are in the test split "
                        f"({sum(unseen.values())} documents) but in no train document, so the "
                        "classifier could never predict them")
    docs = training_docs(run, splits=["train"], labelled=True)  # what the classifier will train on
    labels, train_docs, valid = classifier_split(docs, preset.classifier.valid_pct, seed, train_labels)
    return {"labels": labels, "train_docs": len(train_docs), "valid_docs": len(valid),
            "few": {y: n for y, n in sorted(train.items()) if n < FEW_PER_CLASS}}


def check_inputs(run: RunDir, encoder: bool) -> None:
    """Before a stage command trains or scores: the vocab and id shards it reads, and with
    `encoder` the exported encoder it starts from, are the files their manifests recorded. A
    damaged or missing one is named with the command that makes it again, before anything in
    the run directory changes."""
    source = read_json(run.ingest_summary)["source"] if run.ingest_summary.exists() else "CORPUS"
    preprocess = (f"rebuild it with `ulmfit preprocess --out {run.root} --data {source}` and the "
                  "other options the run was made with")
    for path in (run.vocab, *run.shards(run.ids)):
        verify_outputs(path, preprocess)
    if encoder:
        verify_outputs(run.export.encoder, f"rebuild it with `ulmfit train-lm --out {run.root}"
                                           f"{' --backwards' if run.backwards else ''}`")


def lm_stage(run: RunDir, preset: Preset, seed: int, pretrained: str = "none",
             progress=None) -> dict:
    """Fine-tune the LM on all text; `pretrained` is "none", "wt103" or a weights folder/file.

    A language model made from the same vocab, id shards and settings is reused. Otherwise each
    epoch is checkpointed under lm/, and a rerun after a crash resumes from the last one.
    """
    from ..model.pretrained import load_pretrained
    from ..model.weights import save_model
    from ..reporting.show import write_preview
    from ..text.vocab import Vocab
    from ..training import Checkpoint, train_language_model
    from ..training.parallel import rank

    vocab_path = run.require(run.vocab, "vocab")
    if run.backwards and pretrained == "wt103":
        pretrained = "wt103-bwd"
    inputs = file_inputs(run, [vocab_path, *run.shards(run.ids)])
    settings = _training_settings(preset, "lm", seed, run, pretrained=pretrained)
    folder = run.lm

    def train():
        vocab = Vocab.load(vocab_path)
        start, source = None, None
        if pretrained != "none":
            start, source = load_pretrained(pretrained, vocab.itos, preset.model)
        docs = training_docs(run)  # all text, labels unused
        checkpoint = Checkpoint(folder.checkpoint, fingerprint(inputs, settings))
        model, metrics = train_language_model(docs, len(vocab), preset, seed, pretrained=start,
                                              checkpoint=checkpoint, progress=progress)
        metrics.update(pretrained=source, backwards=run.backwards)
        if rank() != 0:  # rank 0 of a data-parallel training writes the model
            return metrics, None
        copy_text_assets(run, folder)
        save_model(folder.model, "language_model", model.state_dict(),
                   model=vars(preset.model), drop_mult=preset.lm.drop_mult, vocab_size=len(vocab),
                   backwards=run.backwards)
        write_preview(folder, "lm", docs, vocab, preset, seed)
        write_json(folder.metrics, metrics)
        return metrics, folder.existing(folder.model, folder.metrics, folder.preview)

    result = made_once(folder.model, inputs, settings, train)
    if rank() == 0:
        folder.checkpoint.unlink(missing_ok=True)  # only once the model's manifest is written
    return result


def export_stage(run: RunDir) -> dict:
    """The encoder of the fine-tuned LM, with its vocab and model config, for the classifier."""
    from ..model.weights import load_model_file, save_model

    lm_path = run.require(run.lm.model, "train-lm")
    inputs = file_inputs(run, [lm_path])
    folder = run.export

    def export():
        payload = load_model_file(lm_path, "language_model")
        prefix = "0."
        encoder = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
        copy_text_assets(run, folder)
        path = save_model(folder.encoder, "encoder", encoder, model=payload["model"],
                          vocab_size=payload["vocab_size"], backwards=run.backwards)
        write_json(folder.encoder_config, {"arch": "AWD_LSTM", "model": payload["model"],
                                           "vocab_size": payload["vocab_size"],
                                           "backwards": run.backwards})
        return ({"path": run.rel(path), "parameters": int(sum(v.numel() for v in encoder.values()))},
                folder.existing(folder.encoder, folder.encoder_config))

    return made_once(folder.encoder, inputs, {}, export)


# What the forward language model's samples in the report continue, and how.
PROMPT, SAMPLES, SAMPLE_WORDS, TEMPERATURE = "I liked this movie because", 2, 40, 0.75


def samples_stage(run: RunDir, seed: int) -> dict:
    """lm/samples.json: SAMPLES continuations of PROMPT by the forward language model, for the
    report; reused while the model is unchanged, nothing without a forward model. The prompt is
    text, so this loads the run's tokenizer (spaCy for word tokens): it runs where
    preprocessing can, not on a node that only trains."""
    from ..model.predict import LanguageModel

    folder, target = run.direction(False).lm, run.samples
    if not folder.model.exists():
        return {"samples": None}
    settings = {"prompt": PROMPT, "n": SAMPLES, "words": SAMPLE_WORDS, "temperature": TEMPERATURE,
                "seed": seed}

    def generate():
        lm = LanguageModel.load(folder)
        samples = lm.generate(PROMPT, SAMPLE_WORDS, TEMPERATURE, SAMPLES, seed)
        write_json(target, {**settings, "samples": samples})
        return {"samples": samples}, [target]

    return made_once(target, file_inputs(run, [folder.model]), settings, generate)


def classifier_stage(run: RunDir, preset: Preset, seed: int, progress=None,
                     train_labels: int | None = None) -> dict:
    """Gradual unfreezing on the labelled train split (or a class-balanced sample of
    `train_labels` of its reviews, whose ids go to train-labels.json); reused when the encoder,
    id shards and settings are unchanged, else checkpointed (and resumed) per epoch."""
    from ..model.weights import load_model_file, save_model
    from ..reporting.show import write_preview
    from ..text.vocab import Vocab
    from ..training import Checkpoint, train_classifier
    from ..training.parallel import rank

    encoder_path = run.require(run.export.encoder, "encoder export")
    inputs = file_inputs(run, [encoder_path, *run.shards(run.ids)])
    settings = _training_settings(preset, "classifier", seed, run)
    if train_labels is not None:
        settings["train_labels"] = train_labels
    folder = run.classifier

    def train():
        # Scores of an earlier classifier, the sample it was trained on, its preview.
        for stale in (folder.test_scores, folder.predictions, folder.baseline, folder.label_sample,
                      folder.preview):
            stale.unlink(missing_ok=True)
        run.ensemble.unlink(missing_ok=True)
        encoder = load_model_file(encoder_path, "encoder")
        if encoder["model"] != vars(preset.model):
            raise ValueError(f"the exported encoder has model {encoder['model']}, but preset "
                             f"'{preset.name}' builds {vars(preset.model)}: use the LM's preset")
        docs = training_docs(run, splits=["train"], labelled=True)
        checkpoint = Checkpoint(folder.checkpoint, fingerprint(inputs, settings))
        model, labels, metrics = train_classifier(docs, encoder["state_dict"], encoder["vocab_size"],
                                                  preset, seed, checkpoint=checkpoint,
                                                  progress=progress, train_labels=train_labels)
        metrics["backwards"] = run.backwards
        sample = metrics.pop("sample", None)
        if rank() != 0:
            return metrics, None
        if sample is not None:
            write_json(folder.label_sample, {"n": train_labels, "seed": seed, **sample})
        copy_text_assets(run, folder)
        save_model(folder.model, "classifier", model.state_dict(), labels=labels,
                   model=vars(preset.model), classifier=preset.to_dict()["classifier"],
                   vocab_size=encoder["vocab_size"], backwards=run.backwards)
        if train_labels is None:  # the run's own classifier, not a point of the label curve
            write_preview(folder, "classifier", docs, Vocab.load(run.vocab), preset, seed)
        write_json(folder.metrics, metrics)
        return metrics, folder.existing(folder.model, folder.metrics, folder.label_sample, folder.preview)

    result = made_once(folder.model, inputs, settings, train)
    if rank() == 0:
        folder.checkpoint.unlink(missing_ok=True)
    return result
