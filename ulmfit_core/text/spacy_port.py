"""spaCy's blank tokenizer as this project reproduces it without building a Doc: how it cuts a text
into runs, its affix splitting of one run (a line-by-line port), and what its special-case
matcher looks for afterwards; `tokenize.WordTokenizer` puts them together and checks the result
against spaCy itself.
"""

from __future__ import annotations

import re
import sys


def import_spacy():
    """spaCy, imported without torch where torch is not loaded yet.

    Only building a word tokenizer imports it, not importing this module: training and
    evaluation on id shards never need spaCy, and GPU nodes may not have it.

    spaCy's model library thinc imports torch, when it is installed, only to offer torch-backed
    layers, which the rule-based tokenizer never uses; it would cost each tokenizing worker
    about 200 MB and seconds of start-up. Torch itself stays importable afterwards.
    """
    if "thinc" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which thinc expects
        try:
            import spacy
        finally:
            del sys.modules["torch"]
    import spacy

    return spacy


# spaCy splits text into alternating runs of whitespace and non-whitespace and tokenizes each run
# on its own; a single " " right after a word only marks that word's trailing space.
_RUNS = re.compile(r"\S+|\s+")
SPACE = re.compile(r"\s")
_WHITESPACE_AROUND_SPACE = re.compile(r"\s \s")
_NEVER = re.compile("a^")  # for a language without some kind of affix
PLAIN = re.compile("[a-z]+")


def spacy_runs(text: str) -> list[str]:
    """The runs spaCy tokenizes one by one (see `_RUNS`)."""
    runs, after_word = [], False
    for match in _RUNS.finditer(text):
        run = match.group()
        is_space = run[0].isspace()
        if is_space and after_word and run[0] == " ":
            run = run[1:]
        if run:
            runs.append(run)
        after_word = not is_space
    return runs


def irregular(text: str) -> bool:
    """Whether splitting on " " would not give spaCy's runs: two spaces in a row, a space at
    either end, or whitespace on both sides of a space (one longer whitespace run)."""
    return ("  " in text or text.startswith(" ") or text.endswith(" ")
            or _WHITESPACE_AROUND_SPACE.search(text) is not None)


class AffixSplitter:
    """spaCy's affix splitting of one run with a tokenizer's patterns and special cases."""

    def __init__(self, tokenizer, specials: dict[str, list[str]], plain: re.Pattern | None) -> None:
        self._specials, self._plain = specials, plain
        self._token_match, self._url_match = tokenizer.token_match, tokenizer.url_match
        self._prefix_search = tokenizer.prefix_search or _NEVER.search
        self._suffix_search = tokenizer.suffix_search or _NEVER.search
        self._infix_finditer = tokenizer.infix_finditer or _NEVER.finditer

    def split(self, string: str) -> list[str]:
        """spaCy's affix splitting of one run (no whitespace, or only whitespace), without a Doc.

        A line-by-line port of `Tokenizer._split_affixes` and `Tokenizer._attach_tokens` (spaCy
        3.8) on the tokenizer's own patterns and special cases, plus a shortcut for what is left
        once it is plain lowercase letters; spaCy's later pass that matches special cases over
        the token sequence is left to `WordTokenizer._matched_inside`.
        """
        specials, token_match, plain = self._specials, self._token_match, self._plain
        if string in specials:
            return list(specials[string])
        prefixes: list[str] = []
        suffixes: list[str] = []
        last_size = 0
        while string and len(string) != last_size:
            if token_match and token_match(string):
                break
            if string in specials:
                break
            if plain and plain.fullmatch(string):  # what is left is one token
                return [*prefixes, string, *reversed(suffixes)]
            last_size = len(string)
            match = self._prefix_search(string)
            pre_len = match.end() - match.start() if match else 0
            if pre_len:
                prefix, minus_pre = string[:pre_len], string[pre_len:]
                if minus_pre and minus_pre in specials:
                    string = minus_pre
                    prefixes.append(prefix)
                    break
            match = self._suffix_search(string[pre_len:])
            suf_len = match.end() - match.start() if match else 0
            if suf_len:
                suffix, minus_suf = string[-suf_len:], string[:-suf_len]
                if minus_suf and minus_suf in specials:
                    string = minus_suf
                    suffixes.append(suffix)
                    break
            if pre_len and suf_len and pre_len + suf_len <= len(string):
                string = string[pre_len:-suf_len]
                prefixes.append(prefix)
                suffixes.append(suffix)
            elif pre_len:
                string = minus_pre
                prefixes.append(prefix)
            elif suf_len:
                string = minus_suf
                suffixes.append(suffix)
        tokens = prefixes
        if not string:
            pass
        elif string in specials:
            tokens += specials[string]
        elif (token_match and token_match(string)) or (self._url_match and self._url_match(string)):
            tokens.append(string)
        else:
            start = 0
            for match in self._infix_finditer(string):
                infix_start, infix_end = match.span()
                if infix_start == 0:
                    continue
                if infix_start != start:
                    tokens.append(string[start:infix_start])
                if infix_start != infix_end:
                    tokens.append(string[infix_start:infix_end])
                start = infix_end
            if string[start:]:
                tokens.append(string[start:])
        tokens += reversed(suffixes)
        return tokens


def special_case_patterns(nlp, specials: dict[str, list[str]]) -> tuple[dict[str, list[str]], set[str]]:
    """What spaCy's special-case matcher looks for after affix splitting.

    Returns the special cases that affix splitting cuts into several tokens, with those tokens
    (one can join the last token of a piece with the first of the next only if that pair sits
    side by side in it), and the single tokens the matcher would replace by different ones.
    """
    from spacy.tokenizer import Tokenizer

    tok = nlp.tokenizer
    affixes_only = Tokenizer(nlp.vocab, rules={}, prefix_search=tok.prefix_search,
                             suffix_search=tok.suffix_search, infix_finditer=tok.infix_finditer,
                             token_match=tok.token_match, url_match=tok.url_match)
    # The matcher knows the cases that have an affix or a space (all of them without spaCy's
    # faster heuristics).
    cases = {case: [t.text for t in affixes_only(case)] for case in tok.rules
             if not tok.faster_heuristics or " " in case or tok.find_prefix(case)
             or tok.find_suffix(case) or tok.find_infix(case)}
    split = {case: parts for case, parts in cases.items() if len(parts) > 1}
    rewritten = {case for case, parts in cases.items() if len(parts) == 1 and specials[case] != parts}
    return split, rewritten
