"""fastai's default text rules and special tokens, written out so that they load without torch.

`apply_rules` gives what fastai's `fix_html`, `replace_rep`, `replace_wrep`, `spec_add_spaces`,
`rm_useless_spaces`, `replace_all_caps`, `replace_maj` and `lowercase` (which adds `xxbos`) give
in that order; importing them from `fastai.text.core` would load torch into every tokenizing
worker (about 200 MB and seconds of start-up). Some rules skip work fastai does where it cannot
change the text, as the comments say. Tests hold the output to fastai's on real reviews and odd inputs.
"""

from __future__ import annotations

import html
import itertools
import operator
import re

# fastai's special tokens, in fastai's order (its `defaults.text_spec_tok`).
UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ = SPECIAL_TOKENS = [
    "xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]

_HTML_FIXES = [("#39;", "'"), ("amp;", "&"), ("#146;", "'"), ("nbsp;", " "), ("#36;", "$"),
               ("\\n", "\n"), ("quot;", "'"), ("<br />", "\n"), ('\\"', '"'), ("<unk>", UNK),
               (" @.@ ", "."), (" @-@ ", "-"), ("...", " …")]
_REP = re.compile(r"(\S)(\1{2,})")
_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_MULTI_SPACE = re.compile(" {2,}")
# fastai's replace_all_caps marks a word of two or more characters that starts with a capital
# and has no lower-case letter, replace_maj one that starts with a capital and has no other; both
# lower-case what they match, which `lowercase` does at the end anyway. Marking by a zero-width
# match with a constant replacement keeps the regex engine from calling back into Python per
# word: a word both patterns fit ("A.", "I'") is all caps, so the second pattern asks for a
# lower-case letter, which is what replace_maj sees after replace_all_caps lower-cased those.
_ALL_CAPS = re.compile(r"(?<!\S)(?=[A-Z][^a-z\s]+(?:\s|$))")
_MAJ = re.compile(r"(?<!\S)(?=[A-Z][^A-Z\s]*[a-z][^A-Z\s]*(?:\s|$))")


def _rep(m: re.Match) -> str:
    return f" {TK_REP} {len(m[2]) + 1} {m[1]} "


def _wrep(m: re.Match) -> str:
    return f" {TK_WREP} {len(m[2].split()) + 2} {m[1]} {m[3]}"


def apply_rules(text: str) -> str:
    """fastai's default text rules, in fastai's order, with fastai's output."""
    for old, new in _HTML_FIXES:  # fix_html
        text = text.replace(old, new)
    text = _REP.sub(_rep, html.unescape(text))
    words = text.split()
    # replace_wrep can only match where a whole word comes twice in a row.
    if any(map(operator.eq, words, itertools.islice(words, 1, None))):
        text = _WREP.sub(_wrep, text)
    for char in "/#\\":  # spec_add_spaces
        text = text.replace(char, f" {char} ")
    if "  " in text:  # rm_useless_spaces (nothing to do without two spaces in a row)
        text = _MULTI_SPACE.sub(" ", text)
    text = _MAJ.sub(f"{TK_MAJ} ", _ALL_CAPS.sub(f"{TK_UP} ", text))
    return f"{BOS} " + text.lower().strip()  # lowercase


def replace_space(token: str) -> str:
    """fastai's post-rule: a space inside a token becomes "▁"."""
    return token.replace(" ", "▁")
