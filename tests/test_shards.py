"""Shards are verifiable and reusable: same inputs and settings reuse, any change recomputes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ulmfit_core import stages
from ulmfit_core.config import TokenizerConfig, get_preset
from ulmfit_core.run.layout import RunDir
from ulmfit_core.run.manifests import file_sha256


def preprocess(run: RunDir, source, preset, limit=None):
    done = stages.preprocess_in_process(run, str(source), preset, limit=limit, shard_docs=50)
    return done["tokenized"], done["numericalized"]


def hashes(folder):
    return {p.name: file_sha256(p) for p in sorted(folder.glob("*.parquet"))}


def test_rerun_reuses_and_damage_or_changes_recompute(tmp_path, sample_tarball):
    run, tiny = RunDir(tmp_path), get_preset("tiny")
    tokenized, numericalized = preprocess(run, sample_tarball, tiny)
    assert len(tokenized) == 4 and not any(t["reused"] for t in tokenized + numericalized)
    tokens, ids = hashes(run.tokens), hashes(run.ids)

    tokenized, numericalized = preprocess(run, sample_tarball, tiny)
    assert all(t["reused"] for t in tokenized + numericalized)
    assert (hashes(run.tokens), hashes(run.ids)) == (tokens, ids)

    damaged = run.tokens / "part-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    tokenized, _ = preprocess(run, sample_tarball, tiny)
    assert [t["reused"] for t in tokenized] == [True, True, False, True]
    assert hashes(run.tokens) == tokens

    # A new vocab setting re-encodes the ids but keeps the tokens.
    fewer = replace(tiny, vocab=replace(tiny.vocab, min_freq=5))
    tokenized, numericalized = preprocess(run, sample_tarball, fewer)
    assert all(t["reused"] for t in tokenized) and not any(n["reused"] for n in numericalized)
    assert hashes(run.ids) != ids

    # A new tokenizer setting re-tokenizes everything.
    other = replace(tiny, tokenizer=TokenizerConfig(subword_vocab_size=123))
    tokenized, _ = preprocess(run, sample_tarball, other)
    assert not any(t["reused"] for t in tokenized)


def test_stale_shards_are_removed_when_the_corpus_shrinks(tmp_path, sample_tarball):
    run, tiny = RunDir(tmp_path), get_preset("tiny")
    preprocess(run, sample_tarball, tiny)
    tokenized, _ = preprocess(run, sample_tarball, tiny, limit=8)
    assert len(tokenized) == 1
    assert sorted(p.name for p in run.tokens.iterdir()) == [
        "counts-00000.parquet", "part-00000.json", "part-00000.parquet"]
    assert sorted(p.name for p in run.ids.iterdir()) == ["part-00000.json", "part-00000.parquet"]


def test_unknown_tokenizer_setting_is_refused():
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'"):
        TokenizerConfig(kind="bpe")
