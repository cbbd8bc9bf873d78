"""Word tokenization exactly as fastai's `Tokenizer(SpacyTokenizer("en"))`, shard by shard.

fastai's text rules (`rules.apply_rules`) run on each text, spaCy's blank tokenizer splits it with
fastai's special tokens protected, and `replace_space` turns spaces inside a token into "▁" so
that a document joins and splits on " ".
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import TokenizerConfig
from ..run.layout import SUBWORD_MODEL, atomic_path
from .data import read_shard
from .rules import SPECIAL_TOKENS, apply_rules, replace_space
from .spacy_port import PLAIN, SPACE, AffixSplitter, import_spacy, irregular, spacy_runs, special_case_patterns


class WordTokenizer:
    """spaCy's blank-language tokenizer behind fastai's pre- and post-rules, memoized per piece.

    A text split on " " gives pieces; spaCy tokenizes every whitespace-delimited run on its own
    (a piece that ends in other whitespace, "\\n", takes the space after it into its run), then
    looks for special cases (emoticons, "''") over the whole token sequence. A match that spans
    a space, ":" "1" in "score: 1", is never applied, but it can keep a match inside the
    neighbouring piece from being applied. So a text's tokens are the concatenation of its
    pieces' tokens except where the tokens of neighbouring pieces spell a special case (about 2%
    of IMDB reviews: spaCy tokenizes those pieces together) or where its spaces are irregular
    (spaCy takes the whole text). This tokenizer keeps each piece's final tokens in a bounded
    cache and works out only pieces it has not seen, with spaCy's own affix splitting (`spacy_port.AffixSplitter`)
    instead of building a spaCy Doc per text. The output is fastai's
    `Tokenizer(SpacyTokenizer())` output (tested on real reviews and odd inputs).
    """

    def __init__(self, lang: str = "en", cache_size: int = 200_000, batch_size: int = 256) -> None:
        spacy = import_spacy()
        from spacy.symbols import ORTH

        nlp = spacy.blank(lang)
        for token in SPECIAL_TOKENS:
            nlp.tokenizer.add_special_case(token, [{ORTH: token}])
        # Lexical attributes (shape, like_num, ...) are computed for every new word but never
        # used by the tokenizer's splitting; skipping them halves spaCy's cost for texts it
        # tokenizes whole.
        nlp.vocab.lex_attr_getters = {}
        tok = self._spacy = nlp.tokenizer
        self._specials = {case: [t[ORTH] for t in tokens] for case, tokens in tok.rules.items()}
        self._cache: dict[str, list[str]] = {}
        split_cases, self._rewritten = special_case_patterns(nlp, self._specials)
        # (token, next token) -> the special cases' token lists with that pair at [j - 1], [j]
        self._crossing: dict[tuple[str, str], list[tuple[list[str], int]]] = {}
        for parts in split_cases.values():
            for j in range(1, len(parts)):
                self._crossing.setdefault((parts[j - 1], parts[j]), []).append((parts, j))
        self._window = max(map(len, split_cases.values()), default=1) - 1
        self._firsts = {a for a, _ in self._crossing}
        self._seconds = {b for _, b in self._crossing}
        # piece -> its last token before the matcher, if a special case may start there
        self._ends: dict[str, str] = {}
        # piece -> its first token before the matcher, if a special case may end there
        self._starts: dict[str, str] = {}
        self._merged: set[str] = set()  # pieces whose own tokens spaCy's matcher rewrote
        self._cache_size = cache_size
        self._batch_size = batch_size
        # No affix, infix or URL pattern of spaCy's English matches a run of lowercase ASCII
        # letters (the unit suffixes need a digit before them): such a piece is one token.
        self._split = AffixSplitter(tok, self._specials, PLAIN if lang == "en" else None).split

    def _forget_all_but(self, pieces: set[str]) -> None:
        self._cache = {p: t for p, t in self._cache.items() if p in pieces}
        self._ends = {p: t for p, t in self._ends.items() if p in pieces}
        self._starts = {p: t for p, t in self._starts.items() if p in pieces}
        self._merged &= pieces

    def _learn_piece(self, piece: str) -> None:
        # Pieces are never empty: texts with two spaces in a row or at an end are irregular.
        text = piece + " " if piece[-1].isspace() else piece  # with the space that follows it
        if SPACE.search(text):
            split = [replace_space(t) for run in spacy_runs(text) for t in self._split(run)]
        else:
            split = self._split(text)
        if self._matched_inside(split):
            self._merged.add(piece)
            self._cache[piece] = self._spacy_tokens(text)
        else:
            self._cache[piece] = split
        # The matcher sees the tokens before it merges any ("'" "'" rather than "''").
        if split and split[-1] in self._firsts:
            self._ends[piece] = split[-1]
        if split and split[0] in self._seconds:
            self._starts[piece] = split[0]

    def _spacy_tokens(self, text: str) -> list[str]:
        return [replace_space(t.text) for t in self._spacy(text)]

    def _matched_inside(self, tokens: list[str]) -> bool:
        """Whether spaCy's special-case matcher could rewrite these tokens of one piece."""
        if len(tokens) == 1:
            return tokens[0] in self._rewritten
        return (not self._crossing.keys().isdisjoint(zip(tokens, tokens[1:]))
                or not self._rewritten.isdisjoint(tokens))

    def _crossings(self, pieces: list[str]) -> list[int]:
        """The i where a special case spans the tokens of pieces[i - 1] and pieces[i]."""
        ends, starts, crossing = self._ends, self._starts, self._crossing
        if ends.keys().isdisjoint(pieces) or starts.keys().isdisjoint(pieces):
            return []
        pairs = list(zip(map(ends.get, pieces), map(starts.get, itertools.islice(pieces, 1, None))))
        if crossing.keys().isdisjoint(pairs):
            return []
        return [i for i, pair in enumerate(pairs, 1) if pair in crossing and self._crosses(pieces, i, pair)]

    def _crosses(self, pieces: list[str], i: int, pair: tuple[str, str]) -> bool:
        """Whether a special case's tokens run on both sides of the boundary before pieces[i]."""
        cache, window, merged = self._cache, self._window, self._merged
        before: list[str] = []
        for k in range(i - 1, -1, -1):
            if pieces[k] in merged:
                return True  # its tokens as the matcher sees them are not at hand: be safe
            before[:0] = cache[pieces[k]]
            if len(before) >= window:
                break
        after: list[str] = []
        for k in range(i, len(pieces)):
            if pieces[k] in merged:
                return True
            after += cache[pieces[k]]
            if len(after) >= window:
                break
        return any(before[len(before) - j:] == parts[:j] and after[:len(parts) - j] == parts[j:]
                   for parts, j in self._crossing[pair])

    def _tokens_with_crossings(self, pieces: list[str], crossings: list[int]) -> list[str]:
        """A text's tokens when special cases span some of its pieces: spaCy tokenizes each run
        of pieces tied by them as one text, the cache gives the others."""
        tokens: list[str] = []
        joined, i = set(crossings), 0
        while i < len(pieces):
            j = i + 1
            while j in joined:
                j += 1
            if j == i + 1:
                tokens += self._cache[pieces[i]]
            else:
                text = " ".join(pieces[i:j])
                tokens += self._spacy_tokens(text + " " if text[-1].isspace() else text)
            i = j
        return tokens

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        processed = [apply_rules(text) for text in texts]
        pieces = [None if irregular(text) else text.split(" ") for text in processed]
        in_batch = set(itertools.chain.from_iterable(doc for doc in pieces if doc is not None))
        unseen = in_batch.difference(self._cache)
        if len(self._cache) + len(unseen) > self._cache_size:
            self._forget_all_but(in_batch)  # bounded memory on corpora with endless new words
        for piece in unseen:
            self._learn_piece(piece)
        lookup, out = self._cache.__getitem__, []
        for text, doc in zip(processed, pieces):
            if doc is None:
                out.append(self._spacy_tokens(text))
            elif crossings := self._crossings(doc):
                out.append(self._tokens_with_crossings(doc, crossings))
            else:
                out.append(list(itertools.chain.from_iterable(map(lookup, doc))))
        return out

    def __call__(self, texts: Iterable[str]) -> Iterator[list[str]]:
        texts = iter(texts)
        while batch := list(itertools.islice(texts, self._batch_size)):
            yield from self.tokenize_many(batch)


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
    """The tokenizer `config` describes, a function from texts to token lists; a subword one
    reads `spm.model` from `folder`. It is built on its first call (once per process), so that a
    model loaded to classify id arrays never imports spaCy."""
    if config.kind == "word":
        return functools.partial(_tokenize_with, functools.partial(word_tokenizer, config.lang))
    model = Path(folder or ".") / SUBWORD_MODEL
    if not model.exists():
        raise FileNotFoundError(f"{model} is missing: the subword model is trained during preprocess")
    return functools.partial(_tokenize_with, functools.partial(_subword_tokenizer, str(model)))


def _tokenize_with(build, texts: Iterable[str]) -> Iterator[list[str]]:
    return build()(texts)


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
    table = read_shard(raw_path)
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
