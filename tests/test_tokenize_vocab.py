"""Tokens and vocab are fastai's, exactly: checked against fastai itself on real and odd text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastai.text.core import SpacyTokenizer, Tokenizer, defaults, replace_space
from fastai.text.data import Numericalize

from ulmfit_core.config import TokenizerConfig
from ulmfit_core.text.ingest import ingest
from ulmfit_core.text.rules import SPECIAL_TOKENS, apply_rules
from ulmfit_core.text.tokenize import tokenize_shard, tokenize_texts
from ulmfit_core.text.vocab import FAKE, UNK_ID, Vocab, merge_counts, numericalize_shard

HARD_CASES = [
    "",
    "   ",
    "This movie was AWFUL!!!! I mean, REALLY really really really bad.<br /><br />Don't watch.",
    "Great &amp; fun &quot;film&quot; &#39;ok&#39; &lt;3 &nbsp; 10/10 #best",
    "Soooooo goooood... wow wow wow wow!",
    "Ünïcödé — “quotes” ½ naïve café 日本語 映画",
    "emoji 😀😀😀 👍🏽 time",
    "control\x00chars\x07 and\ttabs\r\nand\u200bzero width",
    "I LOVED IT. A B C. Mr. Smith's U.S.A. trip on 12/25/2001 cost $1,000.50",
    "xxbos xxmaj fake special tokens <unk> in text",
    "line one\\nline two  \n\n  spaced   out",
    "http://example.com/a#b e-mail: someone@example.com",
    # spaCy's special cases span pieces here: those pieces go to spaCy together.
    "Whatcha talkin' 'bout?!\". It still stuns.",
    "''Empire Strikes Back'' ''Return of the Jedi'' is more",
    "a pair '''' their yours; Elvis' ''Love me''",
    "in perfect shape :) ) . and :( sad (: happy",
    "score: 1 out of 10 :'( and http: / / odd",
    # Capitals: one letter, capital + punctuation, non-ASCII after a capital, mixed case.
    "I LIKED IT. A. I' AÉ ΑΣ İstanbul hELLO McDONALD O'NEIL B- Ok OK oK",
    "the the the. word word\tword\nword THE THE THE \\ back#slash a/b",
]


def fastai_tokens(texts):
    """fastai's own output: Tokenizer(SpacyTokenizer("en")) with its default rules."""
    tok = Tokenizer(SpacyTokenizer("en"))
    return [[replace_space(t) for t in tok(text)] for text in texts]


def test_tokens_equal_fastai_on_hard_cases():
    ours = tokenize_texts(HARD_CASES)
    theirs = fastai_tokens(HARD_CASES)
    for text, a, b in zip(HARD_CASES, ours, theirs):
        assert a == b, text
    assert ours[0] == ["xxbos"]
    assert "xxrep" in ours[4] and "xxwrep" in ours[4] and "xxup" in ours[2]


def test_tokens_equal_fastai_on_real_reviews(sample_texts):
    assert tokenize_texts(sample_texts) == fastai_tokens(sample_texts)


def test_rules_equal_fastais(sample_texts):
    def fastai_rules(text):
        for rule in defaults.text_proc_rules:
            text = rule(text)
        return text

    for text in HARD_CASES + sample_texts:
        assert apply_rules(text) == fastai_rules(text), text
    assert SPECIAL_TOKENS == defaults.text_spec_tok


@pytest.mark.skipif(not os.environ.get("ULMFIT_IMDB"), reason="needs the IMDB tarball (ULMFIT_IMDB)")
def test_tokens_equal_fastai_on_2000_more_reviews():
    from conftest import real_reviews

    texts = [data.decode() for files in real_reviews(400).values() for _, data in files[40:]]
    assert len(texts) == 1800
    ours, theirs = tokenize_texts(texts), fastai_tokens(texts)
    assert [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b] == []


def test_tokenizing_and_numericalizing_do_not_load_torch(sample_tarball, tmp_path):
    """Tokenizing workers stay small: neither spaCy's thinc nor fastai pulls torch in."""
    code = f"""
import sys
from ulmfit_core.config import TokenizerConfig
from ulmfit_core.text.ingest import ingest
from ulmfit_core.text.tokenize import tokenize_shard
from ulmfit_core.text.vocab import Vocab, merge_counts, numericalize_shard
from pathlib import Path
shard = ingest(Path({str(sample_tarball)!r}), Path({str(tmp_path / "raw")!r}), limit=8).shards[0]
tokenize_shard(shard, {str(tmp_path / "tok.parquet")!r}, {str(tmp_path / "counts.parquet")!r}, TokenizerConfig())
vocab = Vocab.from_counts(merge_counts([{str(tmp_path / "counts.parquet")!r}]), min_freq=1)
numericalize_shard({str(tmp_path / "tok.parquet")!r}, vocab, {str(tmp_path / "ids.parquet")!r})
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "fastai")))
import torch  # still importable afterwards
print(torch.ones(2).sum().item())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "2.0"]
    ids = pq.read_table(tmp_path / "ids.parquet").column("ids").to_pylist()
    assert len(ids) == 40 and all(doc[0] == 2 for doc in ids)  # 8 per split and label, xxbos first


def test_vocab_equals_fastai_numericalize(sample_texts, tmp_path):
    docs = tokenize_texts(sample_texts)
    for max_vocab, min_freq in [(60_000, 3), (300, 2), (1000, 1)]:
        num = Numericalize(min_freq=min_freq, max_vocab=max_vocab)
        num.setup(docs)
        ours = Vocab.from_counts(Counter(t for d in docs for t in d), max_vocab, min_freq)
        assert ours.itos == list(num.vocab)
        assert len(ours) % 8 == 0 and ours.itos[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
        ids = ours.encode(docs[0])
        assert ids.tolist() == num(docs[0]).tolist()


def test_sharded_counts_rebuild_the_corpus_counter_in_order(sample_tarball, tmp_path):
    result = ingest(sample_tarball, tmp_path / "raw", shard_docs=37)
    texts, count_paths = [], []
    for i, shard in enumerate(result.shards):
        texts += pq.read_table(shard).column("text").to_pylist()
        count_paths.append(tmp_path / f"counts-{i}.parquet")
        tokenize_shard(shard, tmp_path / f"tok-{i}.parquet", count_paths[-1], TokenizerConfig())
    whole = Counter(t for d in tokenize_texts(texts) for t in d)
    merged = merge_counts(count_paths)
    assert merged == whole
    assert list(merged) == list(whole)  # first-occurrence order: fastai's tie order
    assert merged.most_common() == whole.most_common()


def test_token_shard_keeps_document_columns(sample_tarball, tmp_path):
    shard = ingest(sample_tarball, tmp_path / "raw", limit=3).shards[0]
    info = tokenize_shard(shard, tmp_path / "tok.parquet", tmp_path / "counts.parquet", TokenizerConfig())
    raw, tok = pq.read_table(shard), pq.read_table(tmp_path / "tok.parquet")
    assert tok.column_names == ["id", "split", "label", "tokens"]
    assert tok.column("id").to_pylist() == raw.column("id").to_pylist()
    assert tok.column("tokens").to_pylist() == tokenize_texts(raw.column("text").to_pylist())
    assert info == {"docs": raw.num_rows, "tokens": sum(len(t) for t in tok.column("tokens").to_pylist())}
    meta = json.loads(tok.schema.metadata[b"ulmfit.tokenizer"])
    assert meta["kind"] == "word"


def test_vocab_round_trip_and_unknowns(tmp_path, sample_texts):
    docs = tokenize_texts(sample_texts[:50])
    vocab = Vocab.from_counts(Counter(t for d in docs for t in d), min_freq=2)
    loaded = Vocab.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded.itos == vocab.itos
    assert json.loads((tmp_path / "vocab.json").read_text())[:2] == ["xxunk", "xxpad"]
    known = [t for t in docs[0] if t in vocab.stoi]
    assert loaded.decode(loaded.encode(known)) == known
    assert loaded.encode(["never-seen-token", FAKE]).tolist() == [UNK_ID, UNK_ID]


def test_vocab_file_must_be_a_list_of_strings(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of strings"):
        Vocab.load(path)
    path.write_text('["a", "b"]')
    with pytest.raises(ValueError, match="special tokens"):
        Vocab.load(path)
    path.write_text(json.dumps(SPECIAL_TOKENS + ["movie", "film", "movie"]))
    with pytest.raises(ValueError, match="'movie' twice"):
        Vocab.load(path)


def test_numericalized_shard(sample_tarball, tmp_path):
    shard = ingest(sample_tarball, tmp_path / "raw", limit=4).shards[0]
    tokenize_shard(shard, tmp_path / "tok.parquet", tmp_path / "counts.parquet", TokenizerConfig())
    vocab = Vocab.from_counts(merge_counts([tmp_path / "counts.parquet"]), min_freq=2)
    info = numericalize_shard(tmp_path / "tok.parquet", vocab, tmp_path / "ids.parquet")
    ids = pq.read_table(tmp_path / "ids.parquet")
    tokens = pq.read_table(tmp_path / "tok.parquet").column("tokens").to_pylist()
    assert ids.schema.field("ids").type.value_type == "int32"
    decoded = [vocab.decode(d) for d in ids.column("ids").to_pylist()]
    expected = [[t if t in vocab.stoi else "xxunk" for t in doc] for doc in tokens]
    assert decoded == expected
    assert info["unknown"] == sum(d.count("xxunk") for d in expected)
    assert info["tokens"] == int(np.sum([len(d) for d in tokens]))


def test_piece_cache_stays_bounded_and_tokens_do_not_change(sample_texts):
    from ulmfit_core.text.tokenize import WordTokenizer

    small = WordTokenizer(cache_size=300)
    tokens = []
    for start in range(0, len(sample_texts), 16):
        batch = sample_texts[start:start + 16]
        tokens += small.tokenize_many(batch)
        in_batch = {p for text in batch for p in apply_rules(text).split(" ")}
        assert len(small._cache) <= max(300, len(in_batch))
    assert tokens == tokenize_texts(sample_texts)
