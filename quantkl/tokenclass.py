"""Classes of tokens by their text, for statistics by token class.

A token is "special" when the vocabulary marks it as a control or
end-of-generation token (chat markers, BOS, EOS); otherwise its text decides:
"whitespace" (only spaces, tabs, newlines), "digit" (digits, after any leading
whitespace), "punctuation" (no letter or digit: punctuation and symbols, code's
brackets and operators), "word start" (letters after leading whitespace, the
way BPE and SentencePiece vocabularies start a word) and "continuation"
(letters with no leading whitespace: the rest of a word).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TOKEN_CLASSES = ("word start", "continuation", "digit", "punctuation", "whitespace", "special")


def class_of_piece(piece: str, special: bool = False) -> int:
    """Index in TOKEN_CLASSES of a token with this text."""
    if special:
        return TOKEN_CLASSES.index("special")
    core = piece.lstrip()
    if not core:
        return TOKEN_CLASSES.index("whitespace")
    if core.isdigit():
        return TOKEN_CLASSES.index("digit")
    if not any(c.isalnum() for c in core):
        return TOKEN_CLASSES.index("punctuation")
    return TOKEN_CLASSES.index("word start" if core != piece else "continuation")


def token_classes(vocabulary, tokens: Sequence[int]) -> np.ndarray:
    """The class index of every token id in tokens (each distinct id looked up once)."""
    tokens = np.asarray(tokens, np.int64)
    ids, inverse = np.unique(tokens, return_inverse=True)
    bad = ids[(ids < 0) | (ids >= vocabulary.n_vocab)]
    if len(bad):
        raise ValueError(f"token id {int(bad[0])} is not in this vocabulary of "
                         f"{vocabulary.n_vocab} (another model's record?)")
    classes = np.array([class_of_piece(vocabulary.piece(t), vocabulary.is_special(t))
                        for t in ids], np.int8)
    return classes[inverse].reshape(tokens.shape)
