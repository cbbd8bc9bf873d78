"""Word tokenization exactly as fastai's `Tokenizer(SpacyTokenizer("en"))`, shard by shard.

fastai's text rules (`fix_html`, `replace_rep`, `replace_wrep`, `spec_add_spaces`,
`rm_useless_spaces`, `replace_all_caps`, `replace_maj`, `lowercase` which adds `xxbos`) run on each
text, spaCy's blank tokenizer splits it with fastai's special tokens protected, and
`replace_space` turns spaces inside a token into "▁" so that a document joins and splits on " ".
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from fastai.text.core import defaults, replace_space

from .config import TokenizerConfig
from .rundir import atomic_path

SPECIAL_TOKENS: list[str] = list(defaults.text_spec_tok)
TEXT_RULES = list(defaults.text_proc_rules)


def apply_rules(text: str, rules=TEXT_RULES) -> str:
    for rule in rules:
        text = rule(text)
    return text


class WordTokenizer:
    """spaCy's blank-language tokenizer behind fastai's pre- and post-rules."""

    def __init__(self, lang: str = "en", rules=TEXT_RULES, batch_size: int = 1000) -> None:
        import spacy
        from spacy.symbols import ORTH

        nlp = spacy.blank(lang)
        for token in SPECIAL_TOKENS:
            nlp.tokenizer.add_special_case(token, [{ORTH: token}])
        self._tokenizer = nlp.tokenizer
        self._rules = list(rules)
        self._batch_size = batch_size

    def __call__(self, texts: Iterable[str]) -> Iterator[list[str]]:
        processed = (apply_rules(text, self._rules) for text in texts)
        for doc in self._tokenizer.pipe(processed, batch_size=self._batch_size):
            yield [replace_space(tok.text) for tok in doc]


def tokenize_texts(texts: Iterable[str], config: TokenizerConfig = TokenizerConfig()) -> list[list[str]]:
    return list(WordTokenizer(config.lang)(texts))


def _count_table(counts: Counter) -> pa.Table:
    # Kept in first-occurrence order: merging shards in order then reproduces the corpus-wide
    # Counter that fastai builds, including its tie order in most_common().
    return pa.table({"token": pa.array(list(counts.keys()), pa.string()),
                     "count": pa.array(list(counts.values()), pa.int64())})


def tokenize_shard(raw_path: str | Path, out_path: str | Path, counts_path: str | Path,
                   config: TokenizerConfig = TokenizerConfig()) -> dict:
    """Tokenize one raw shard into a token shard and a token-count table.

    Returns small figures only (documents, tokens), so that a task's result stays tiny.
    """
    table = pq.read_table(raw_path)
    tokens = list(WordTokenizer(config.lang)(table.column("text").to_pylist()))
    counts: Counter = Counter()
    for doc in tokens:
        counts.update(doc)
    out = table.drop_columns(["text"]).append_column(
        "tokens", pa.array(tokens, type=pa.list_(pa.string()))
    )
    out = out.replace_schema_metadata({"ulmfit.tokenizer": json.dumps(config.__dict__)})
    with atomic_path(out_path) as tmp:
        pq.write_table(out, tmp)
    with atomic_path(counts_path) as tmp:
        pq.write_table(_count_table(counts), tmp)
    return {"docs": table.num_rows, "tokens": sum(len(t) for t in tokens)}
