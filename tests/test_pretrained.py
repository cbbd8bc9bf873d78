"""Pretrained LM weights in fastai's format: safe loading, embedding matching, staged start."""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import replace

import pytest
import torch

from ulmfit_core import stages
from ulmfit_core.config import ModelConfig, get_preset
from ulmfit_core.errors import DataError
from ulmfit_core.model.networks import build_language_model
from ulmfit_core.model.pretrained import load_itos, load_pretrained
from ulmfit_core.run.layout import RunDir, read_json


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_tarball) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("run"))
    stages.preprocess_in_process(run, str(sample_tarball), get_preset("tiny"), shard_docs=50)
    return run


def save_pretrained(folder, itos, model: ModelConfig):
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    lm = build_language_model(len(itos), model, 0.3)
    torch.save(lm.state_dict(), folder / "lm_fwd.pth")
    with open(folder / "itos_fwd.pkl", "wb") as f:
        pickle.dump(itos, f)
    return lm.state_dict()


def test_shared_words_keep_their_rows_and_new_words_get_the_mean(run, tmp_path):
    new_itos = read_json(run.vocab)
    old_itos = new_itos[: len(new_itos) // 2] + [f"oldword{i}" for i in range(30)]
    old = save_pretrained(tmp_path / "wt", old_itos, get_preset("tiny").model)
    state, info = load_pretrained(str(tmp_path / "wt"), new_itos, get_preset("tiny").model)
    emb, old_emb = state["0.encoder.weight"], old["0.encoder.weight"]
    assert emb.shape == (len(new_itos), old_emb.shape[1])
    shared, fresh = new_itos.index("the"), len(new_itos) - 1
    assert torch.equal(emb[shared], old_emb[old_itos.index("the")])
    assert torch.allclose(emb[fresh], old_emb.mean(0))
    assert torch.equal(state["1.decoder.weight"], emb) and torch.equal(state["0.encoder_dp.emb.weight"], emb)
    assert torch.allclose(state["1.decoder.bias"][fresh], old["1.decoder.bias"].mean())
    new_words = sum(w not in set(old_itos) for w in new_itos)
    assert info["new_words"] == new_words and math.isclose(info["new_word_share"], new_words / len(new_itos))


def test_vocabulary_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "itos.pkl"
    evil.write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(DataError, match="refusing to load posix.system"):
        load_itos(evil)
    assert not marker.exists()
    evil.write_bytes(pickle.dumps({"the": 1}))
    with pytest.raises(DataError, match="must hold a list of strings"):
        load_itos(evil)
    evil.write_bytes(pickle.dumps(["xxunk", "the"]))
    assert load_itos(evil) == ["xxunk", "the"]


def test_weights_of_another_shape_fail_clearly(run, tmp_path):
    itos = read_json(run.vocab)
    save_pretrained(tmp_path / "big", itos, ModelConfig(emb_sz=32, n_hid=64, n_layers=2))
    with pytest.raises(DataError, match="emb_sz 96"):
        load_pretrained(str(tmp_path / "big"), itos, get_preset("tiny").model)
    save_pretrained(tmp_path / "wide", itos, ModelConfig(emb_sz=96, n_hid=64, n_layers=2))
    with pytest.raises(DataError, match="hidden size 64, but this preset builds n_hid 192"):
        load_pretrained(str(tmp_path / "wide"), itos, get_preset("tiny").model)
    with pytest.raises(DataError, match="expected one .pth weights file and one .pkl"):
        load_pretrained(str(tmp_path), itos, get_preset("tiny").model)


def test_lm_stage_starts_from_pretrained_weights(run, tmp_path):
    tiny = get_preset("tiny")
    preset = replace(tiny, lm=replace(tiny.lm, epochs=1))
    save_pretrained(tmp_path / "wt", read_json(run.vocab)[:200], tiny.model)
    metrics = stages.lm_stage(run, preset, seed=0, pretrained=str(tmp_path / "wt"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]  # frozen cycle, then unfrozen
    assert metrics["pretrained"]["pretrained_vocab"] == 200 and metrics["pretrained"]["new_words"] > 0
    assert math.isfinite(metrics["valid_loss"])
