"""The pipeline's stages called as plain functions on real reviews (no Prefect, no Dask)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from ulmfit_core import stages
from ulmfit_core.config import LMConfig, get_preset
from ulmfit_core.data import load_docs
from ulmfit_core.models import load_model_file
from ulmfit_core.predict import Classifier, LanguageModel
from ulmfit_core.report import write_report
from ulmfit_core.rundir import RunDir, read_json
from ulmfit_core.train import classifier_dataloaders, lm_dataloaders, train_language_model
from ulmfit_core.vocab import PAD_ID

SEED = 3


@pytest.fixture(scope="module")
def preset():
    tiny = get_preset("tiny")
    return replace(tiny, lm=replace(tiny.lm, epochs=2))


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_tarball, preset) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("run"))
    ingested = stages.ingest_stage(run, str(sample_tarball), limit=None, seed=SEED, shard_docs=60)
    tokenized = [stages.tokenize_stage(run, s, preset) for s in ingested["shards"]]
    vocab = stages.vocab_stage(run, preset, [t["counts"] for t in tokenized])
    numericalized = [stages.numericalize_stage(run, t["shard"]) for t in tokenized]
    stages.summarize_preprocess(run, tokenized, numericalized, vocab, seconds=1.0)
    stages.lm_stage(run, preset, SEED)
    stages.export_stage(run)
    stages.classifier_stage(run, preset, SEED)
    stages.evaluate_stage(run)
    stages.baseline_stage(run)
    write_report(run, {"preset": preset.name, "seed": SEED}, SEED)
    return run


def test_preprocess_summary(run):
    pre = read_json(run.preprocess_metrics)
    assert pre["docs"] == 200 and pre["shards"] == 4 and pre["skipped"] == 0
    assert pre["vocab_size"] == len(read_json(run.vocab))
    assert pre["tokens"] > 200 * 10


def test_language_model_learns(run):
    lm = read_json(run.lm / "metrics.json")
    vocab_size = len(read_json(run.vocab))
    assert lm["valid_loss"] < math.log(vocab_size) - 1.0
    assert lm["history"][-1]["valid_loss"] < lm["history"][0]["valid_loss"]
    assert math.isclose(lm["perplexity"], math.exp(lm["valid_loss"]), rel_tol=1e-3)
    assert 0 < lm["accuracy"] < 1


def test_exported_encoder_loads_without_pickled_code(run, preset):
    payload = torch.load(run.export / "encoder.pth", weights_only=True)
    assert payload["kind"] == "encoder" and payload["model"] == vars(preset.model)
    assert payload["state_dict"]["encoder.weight"].shape == (payload["vocab_size"], preset.model.emb_sz)
    assert read_json(run.export / "vocab.json") == read_json(run.vocab)
    with pytest.raises(ValueError, match="expected a 'classifier'"):
        load_model_file(run.export / "encoder.pth", "classifier")


def test_classifier_stages_and_test_metrics(run, preset):
    clas = read_json(run.classifier / "metrics.json")
    assert [s["name"] for s in clas["stages"]] == [s.name for s in preset.classifier.stages]
    assert clas["labels"] == ["neg", "pos"]
    test = read_json(run.classifier / "test.json")
    assert test["n"] == 80 and sum(map(sum, test["confusion"])) == 80
    assert test["label_counts"] == {"neg": 40, "pos": 40}


def test_metrics_and_report(run):
    metrics = read_json(run.metrics)
    for key in ("docs", "tokens", "skipped"):
        assert key in metrics["preprocess"]
    assert metrics["vocab"]["size"] > 8
    assert {"valid_loss", "accuracy", "perplexity"} <= set(metrics["lm"])
    assert metrics["test"]["n"] == 80 and metrics["device"] == "cpu"
    assert all(isinstance(v, float) for k, v in metrics["seconds"].items() if k != "evaluate")
    report = run.report.read_text()
    assert "Test accuracy" in report and "freeze_to(-2)" in report
    assert "NB-LR baseline on the same split" in report and "![training curves](curves.png)" in report
    assert (run.root / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["baseline"]["n"] == 80 and 0 <= metrics["baseline"]["accuracy"] <= 1
    worst = metrics["test"]["top_losses"]
    assert len(worst) == 5
    assert [w["p_label"] for w in worst] == sorted(w["p_label"] for w in worst)
    assert all(w["id"].startswith("test/") and len(w["text"]) > 20 for w in worst)
    assert len(metrics["samples"]) == 2 and all(s.startswith("I liked this movie because")
                                                for s in metrics["samples"])


def test_batched_and_single_predictions_agree(run):
    classifier = Classifier.load(run.root)
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    batched = classifier.predict_ids(docs.ids[:24], bs=8)
    single = np.concatenate([classifier.predict_ids([d], bs=1) for d in docs.ids[:24]])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(1), 1, atol=1e-5)
    texts = classifier.predict_texts(["What a wonderful, moving film.", "Dull."])
    assert texts.shape == (2, 2)


def test_generation(run):
    lm = LanguageModel.load(run.root)
    a = lm.generate("The acting was", n_words=12, temperature=0.75, n=2, seed=5)
    b = lm.generate("The acting was", n_words=12, temperature=0.75, n=2, seed=5)
    assert a == b and len(a) == 2 and a[0] != a[1]
    assert all(t.startswith("The acting was ") and len(t.split()) > 5 for t in a)
    assert "xxunk" not in " ".join(a) and "xxpad" not in " ".join(a)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate("x", temperature=0)


def test_lm_batches_are_one_contiguous_stream(run, preset):
    docs = load_docs(run.shards(run.ids))
    cfg = LMConfig(bs=4, seq_len=10)
    dls = lm_dataloaders(docs, docs, cfg, torch.device("cpu"))
    x, y = dls.valid.one_batch()  # valid: unshuffled
    stream = np.concatenate(docs.ids)
    row_len = (len(stream) - 1) // cfg.bs
    for row in range(cfg.bs):
        start = row * row_len
        assert x[row].tolist() == stream[start:start + cfg.seq_len].tolist()
        assert y[row].tolist() == stream[start + 1:start + cfg.seq_len + 1].tolist()


def test_classifier_batches_are_bucketed_and_lose_no_tokens(run, preset):
    docs = load_docs(run.shards(run.ids), splits=["train"], labelled=True)
    dls = classifier_dataloaders(docs, docs, {"neg": 0, "pos": 1}, preset.classifier, torch.device("cpu"))
    by_content = {tuple(d.tolist()) for d in docs.ids}
    seen = 0
    for dl in (dls.train, dls.valid):
        for x, _ in dl:
            lengths = (x != PAD_ID).sum(1).tolist()
            assert lengths == sorted(lengths, reverse=True)  # longest first, as the encoder needs
            for row in x:
                assert tuple(row[row != PAD_ID].tolist()) in by_content
                seen += 1
    assert seen >= len(docs)


def test_non_finite_loss_stops_training(run, preset):
    docs = load_docs(run.shards(run.ids))
    broken = replace(preset, lm=replace(preset.lm, lr=float("nan"), epochs=1))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_language_model(docs, len(read_json(run.vocab)), broken, seed=0)


def test_core_imports_no_orchestrator():
    code = ("import sys, ulmfit_core.stages, ulmfit_core.report, ulmfit_core.predict; "
            "print(any(m == 'prefect' or m.startswith(('prefect.', 'dask', 'distributed')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seeded_training_repeats_exactly(run, preset):
    docs = load_docs(run.shards(run.ids))
    one_epoch = replace(preset, lm=replace(preset.lm, epochs=1))
    vocab_size = len(read_json(run.vocab))
    _, first = train_language_model(docs, vocab_size, one_epoch, seed=11)
    _, again = train_language_model(docs, vocab_size, one_epoch, seed=11)
    assert first["history"] == again["history"]
