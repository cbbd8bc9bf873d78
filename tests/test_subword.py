"""Subword tokens: fastai's SentencePiece setup, and the whole pipeline on subword ids."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from fastai.text.core import SentencePieceTokenizer, TokenizeWithRules
from sentencepiece import SentencePieceProcessor

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.model.predict import Classifier, LanguageModel
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.run.manifests import file_sha256
from ulmfit_core.text.rules import SPECIAL_TOKENS
from ulmfit_core.text.subword import SubwordTokenizer, train_subword_model


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory, sample_texts):
    return train_subword_model(sample_texts, 400, tmp_path_factory.mktemp("spm"))


def test_model_has_fastais_special_pieces_and_unk(spm_model):
    sp = SentencePieceProcessor(model_file=str(spm_model))
    assert [sp.id_to_piece(i) for i in range(len(SPECIAL_TOKENS))] == ["▁" + t for t in SPECIAL_TOKENS]
    assert sp.unk_id() == len(SPECIAL_TOKENS) and sp.get_piece_size() <= 400


def test_pieces_equal_fastais_subword_tokenizer(spm_model, sample_texts, tmp_path):
    ours = list(SubwordTokenizer(spm_model)(sample_texts))
    fastai_tok = TokenizeWithRules(SentencePieceTokenizer(sp_model=spm_model, cache_dir=tmp_path))
    assert ours == [list(t) for t in fastai_tok(sample_texts)]
    assert ours[0][0] == "▁xxbos"
    words = [w for w in "".join(ours[0]).replace("▁", " ").split() if not w.startswith("xx")]
    letters = re.findall(r"[a-z]+", " ".join(words))  # the text again, rules' markers aside
    assert letters[:10] == re.findall(r"[a-z]+", sample_texts[0].lower())[:10]


def pieces(model):
    sp = SentencePieceProcessor(model_file=str(model))
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def test_training_is_reproducible(spm_model, sample_texts, tmp_path):
    first = file_sha256(train_subword_model(sample_texts, 400, tmp_path))
    assert file_sha256(train_subword_model(sample_texts, 400, tmp_path)) == first  # byte for byte
    assert pieces(tmp_path / "spm.model") == pieces(spm_model)  # elsewhere: same pieces and scores
    with pytest.raises(ValueError, match="cannot train a 3-piece model"):
        train_subword_model(sample_texts, 3, tmp_path / "small")


def test_pipeline_on_subwords(tmp_path, sample_tarball):
    tiny = get_preset("tiny", tokenizer="subword", vocab_size=500)
    preset = replace(tiny, lm=replace(tiny.lm, epochs=1))
    run = RunDir(tmp_path)
    ingested = stages.ingest_stage(run, str(sample_tarball), limit=None, seed=0, shard_docs=100)
    assert stages.tokenizer_stage(run, preset, seed=0)["kind"] == "subword"
    tokenized = [stages.tokenize_stage(run, s, preset) for s in ingested["shards"]]
    vocab = stages.vocab_stage(run, preset, [t["counts"] for t in tokenized])
    assert vocab["size"] <= 500 + len(SPECIAL_TOKENS) + 8
    for t in tokenized:
        stages.numericalize_stage(run, t["shard"])
    # Same raw shards and settings: the model and every token shard are reused.
    made = (run.tokenizer / "spm.model").stat().st_mtime_ns
    stages.tokenizer_stage(run, preset, seed=0)
    assert (run.tokenizer / "spm.model").stat().st_mtime_ns == made
    assert all(stages.tokenize_stage(run, s, preset)["reused"] for s in ingested["shards"])

    lm = stages.lm_stage(run, preset, seed=0)
    assert lm["valid_loss"] < np.log(vocab["size"])
    stages.export_stage(run)
    stages.classifier_stage(run, preset, seed=0)
    test = stages.evaluate_stage(run)
    assert test["n"] == 80
    assert read_json(run.classifier / "tokenizer.json")["kind"] == "subword"
    assert (run.classifier / "spm.model").exists() and (run.lm / "spm.model").exists()

    probs = Classifier.load(run.root).predict_texts(["A lovely film.", "Awful, boring."])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    (text,) = LanguageModel.load(run.root).generate("The film", n_words=15, seed=1)
    assert text.startswith("The film ") and "▁" not in text
