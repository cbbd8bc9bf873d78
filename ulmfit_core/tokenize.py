"""Word tokenization exactly as fastai's `Tokenizer(SpacyTokenizer("en"))`, shard by shard.

fastai's text rules (`fix_html`, `replace_rep`, `replace_wrep`, `spec_add_spaces`,
`rm_useless_spaces`, `replace_all_caps`, `replace_maj`, `lowercase` which adds `xxbos`) run on each
text, spaCy's blank tokenizer splits it with fastai's special tokens protected, and
`replace_space` turns spaces inside a token into "▁" so that a document joins and splits on " ".
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from fastai.text.core import defaults, replace_space
from spacy.attrs import IDX, LENGTH

from .config import TokenizerConfig
from .rundir import atomic_path

SPECIAL_TOKENS: list[str] = list(defaults.text_spec_tok)
TEXT_RULES = list(defaults.text_proc_rules)


def apply_rules(text: str, rules=TEXT_RULES) -> str:
    for rule in rules:
        text = rule(text)
    return text


# spaCy splits text into alternating runs of whitespace and non-whitespace and tokenizes each run
# on its own; a single " " right after a word only marks that word's trailing space.
_RUNS = re.compile(r"\S+|\s+")
# Texts where splitting on " " would not give spaCy's runs: whitespace on both sides of a space
# (one longer whitespace run), two spaces in a row, or a space at either end.
_IRREGULAR = re.compile(r"\s \s|  |^ | $")
_SPACE = re.compile(r"\s")
_SEPARATOR = " \n "


class WordTokenizer:
    """spaCy's blank-language tokenizer behind fastai's pre- and post-rules, memoized per piece.

    spaCy tokenizes every whitespace-delimited run of a text on its own (its own cache works
    the same way), then merges special cases over the whole token sequence: ":" + ")" becomes
    ":)" even across a space. So a text's tokens are the concatenation of its pieces' tokens
    unless two neighbouring pieces could meet in such a special case; those texts (about 4% of
    IMDB reviews) go to spaCy whole. This tokenizer keeps each piece's final tokens in a bounded
    cache and asks spaCy only about pieces it has not seen, instead of building one spaCy Doc
    per text. The output is fastai's `Tokenizer(SpacyTokenizer())` output (tested on real
    reviews and odd inputs).
    """

    def __init__(self, lang: str = "en", rules=TEXT_RULES, cache_size: int = 200_000,
                 batch_size: int = 256) -> None:
        import spacy
        from spacy.symbols import ORTH

        nlp = spacy.blank(lang)
        for token in SPECIAL_TOKENS:
            nlp.tokenizer.add_special_case(token, [{ORTH: token}])
        # Lexical attributes (shape, like_num, ...) are computed for every new word but never
        # used by the tokenizer's splitting; skipping them halves the cost of unseen words.
        nlp.vocab.lex_attr_getters = {}
        self._spacy = nlp.tokenizer
        self._rules = list(rules)
        self._cache: dict[str, list[str]] = {}
        self._split_cases = _split_special_cases(nlp)
        self._adjacent = {pair for parts in self._split_cases.values() for pair in zip(parts, parts[1:])}
        self._firsts = {a for a, _ in self._adjacent}
        self._seconds = {b for _, b in self._adjacent}
        self._ends: dict[str, str] = {}  # piece -> its last affix token, if it may start a match
        self._starts: dict[str, str] = {}  # piece -> its first affix token, if it may end one
        self._cache_size = cache_size
        self._batch_size = batch_size

    @staticmethod
    def _pieces(text: str) -> list[str]:
        """The keys whose tokens, concatenated, are the text's tokens."""
        if _IRREGULAR.search(text):
            pieces, after_word = [], False
            for match in _RUNS.finditer(text):
                run, is_space = match.group(), match.group()[0].isspace()
                if is_space and after_word and run[0] == " ":
                    run = run[1:]  # the space that ends the word before
                if run:
                    pieces.append(run)
                after_word = not is_space
            return pieces
        pieces = text.split(" ")
        # A piece ending in other whitespace ("\n") owns the space after it: spaCy keeps "\n "
        # as one whitespace run.
        return [p + " " if p[-1].isspace() else p for p in pieces[:-1]] + pieces[-1:]

    def _learn(self, pieces: set[str]) -> None:
        """Tokenize unseen pieces with spaCy, those without whitespace together in one call.

        They are joined by " \n ": the newline becomes a token of its own between two pieces, so
        no special case can join the end of one piece to the start of the next.
        """
        words = [p for p in pieces if not _SPACE.search(p)]
        for piece in pieces.difference(words):
            self._remember(piece, [replace_space(t.text) for t in self._spacy(piece)])
        if not words:
            return
        text = _SEPARATOR.join(words)
        starts = list(itertools.accumulate((len(w) + len(_SEPARATOR) for w in words[:-1]), initial=0))
        lists: list[list[str]] = [[] for _ in words]
        k = 0
        for start, length in self._spacy(text).to_array([IDX, LENGTH]).tolist():
            while k + 1 < len(words) and start >= starts[k + 1]:
                k += 1
            if start < starts[k] + len(words[k]):  # not the separator's newline token
                lists[k].append(text[start:start + length])  # no spaces inside: nothing to replace
        for word, tokens in zip(words, lists):
            self._remember(word, tokens)

    def _remember(self, piece: str, tokens: list[str]) -> None:
        self._cache[piece] = tokens
        if not tokens:
            return
        # spaCy matches special cases on the tokens before they are merged: "''" is "'" "'" then.
        last = self._split_cases.get(tokens[-1], tokens[-1:])[-1]
        first = self._split_cases.get(tokens[0], tokens[:1])[0]
        if last in self._firsts:
            self._ends[piece] = last
        if first in self._seconds:
            self._starts[piece] = first

    def _merges_across(self, pieces: list[str]) -> bool:
        """Whether two neighbouring pieces could meet in a special case."""
        ends, starts, adjacent = self._ends, self._starts, self._adjacent
        last = None
        for piece in pieces:
            if last is not None and (last, starts.get(piece)) in adjacent:
                return True
            last = ends.get(piece)
        return False

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        processed = [apply_rules(text, self._rules) for text in texts]
        pieces = [self._pieces(text) for text in processed]
        unseen = {p for doc in pieces for p in doc if p not in self._cache}
        if len(self._cache) + len(unseen) > self._cache_size:
            for table in (self._cache, self._ends, self._starts):
                table.clear()  # bounded memory on corpora with endless new words
            unseen = {p for doc in pieces for p in doc}
        if unseen:
            self._learn(unseen)
        cache = self._cache
        out = []
        for text, doc in zip(processed, pieces):
            if self._merges_across(doc):
                out.append([replace_space(t.text) for t in self._spacy(text)])
                continue
            tokens: list[str] = []
            for piece in doc:
                tokens += cache[piece]
            out.append(tokens)
        return out

    def __call__(self, texts: Iterable[str]) -> Iterator[list[str]]:
        texts = iter(texts)
        while batch := list(itertools.islice(texts, self._batch_size)):
            yield from self.tokenize_many(batch)


def _split_special_cases(nlp) -> dict[str, list[str]]:
    """Special cases that affix splitting cuts into several tokens, with those tokens.

    spaCy finds these over the token sequence of a whole text, so one can join the last token
    of a piece with the first of the next only if that pair sits side by side in it.
    """
    from spacy.tokenizer import Tokenizer

    tok = nlp.tokenizer
    affixes_only = Tokenizer(nlp.vocab, rules={}, prefix_search=tok.prefix_search,
                             suffix_search=tok.suffix_search, infix_finditer=tok.infix_finditer,
                             token_match=tok.token_match, url_match=tok.url_match)
    cases = {case: [t.text for t in affixes_only(case)] for case in tok.rules}
    return {case: parts for case, parts in cases.items() if len(parts) > 1}


@functools.lru_cache(maxsize=4)
def word_tokenizer(lang: str = "en") -> WordTokenizer:
    """One tokenizer per process and language: spaCy loads once and the piece cache stays warm
    across the shards a worker tokenizes."""
    return WordTokenizer(lang)


@functools.lru_cache(maxsize=4)
def _subword_tokenizer(model_path: str):
    from .subword import SubwordTokenizer

    return SubwordTokenizer(model_path)


def text_tokenizer(config: TokenizerConfig, folder: str | Path | None = None):
    """The tokenizer `config` describes; a subword one reads `spm.model` from `folder`."""
    if config.kind == "word":
        return word_tokenizer(config.lang)
    model = Path(folder or ".") / "spm.model"
    if not model.exists():
        raise FileNotFoundError(f"{model} is missing: the subword model is trained during preprocess")
    return _subword_tokenizer(str(model))


def tokenize_texts(texts: Iterable[str], config: TokenizerConfig = TokenizerConfig(),
                   folder: str | Path | None = None) -> list[list[str]]:
    return list(text_tokenizer(config, folder)(texts))


def _count_table(counts: Counter) -> pa.Table:
    # Kept in first-occurrence order: merging shards in order then reproduces the corpus-wide
    # Counter that fastai builds, including its tie order in most_common().
    return pa.table({"token": pa.array(list(counts.keys()), pa.string()),
                     "count": pa.array(list(counts.values()), pa.int64())})


def tokenize_shard(raw_path: str | Path, out_path: str | Path, counts_path: str | Path,
                   config: TokenizerConfig = TokenizerConfig(), folder: str | Path | None = None) -> dict:
    """Tokenize one raw shard into a token shard and a token-count table.

    Returns small figures only (documents, tokens), so that a task's result stays tiny.
    """
    table = pq.read_table(raw_path)
    tokens = tokenize_texts(table.column("text").to_pylist(), config, folder)
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
