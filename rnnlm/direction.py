"""Backward (right-to-left) models: each line's tokens in reverse order, its end-of-line still last.

Keeping the end-of-line token at the end of every reversed line keeps a backward model's line
probabilities normalised, exactly as a forward model's are, so the two can be combined line by
line. A model records its direction in config.json (ModelConfig.reverse); training and every
scorer reverse their input through this module, so the rule lives in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from rnnlm.prepared_corpus import PreparedCorpus
from rnnlm.slices import SLICE_CHARS, cuts_anywhere, encode_slices, slice_text
from rnnlm.tokenizers import Tokenizer


def reverse_lines(tokens: np.ndarray, eol_id: int) -> np.ndarray:
    """A copy of a token stream with the tokens between end-of-line tokens reversed; a last line
    without its end-of-line token is reversed too."""
    tokens = np.asarray(tokens)
    if len(tokens) == 0:
        return tokens.copy()
    ends = np.flatnonzero(tokens == eol_id)
    starts = np.concatenate([[0], ends + 1])  # where each line begins
    stops = np.concatenate([ends, [len(tokens)]])  # where its end-of-line token is (or the stream ends)
    line_of = np.searchsorted(starts, np.arange(len(tokens)), side="right") - 1
    positions = np.arange(len(tokens))
    mirrored = starts[line_of] + stops[line_of] - 1 - positions
    source = np.where(tokens == eol_id, positions, mirrored)
    return tokens[source]


def reversed_corpus(corpus: PreparedCorpus) -> PreparedCorpus:
    """The corpus with every split (and every sampled training segmentation) read right to left.

    The reversed streams are held in memory: training a backward model needs RAM for its corpus.
    """
    eol_id = corpus.tokenizer.eol_id
    return replace(corpus, splits={name: reverse_lines(ids, eol_id) for name, ids in corpus.splits.items()},
                   train_samples=[reverse_lines(ids, eol_id) for ids in corpus.train_samples])


def encode_directed(tokenizer: Tokenizer, text: str, reverse: bool) -> Iterator[np.ndarray]:
    """The tokens of `text` (one line, or the start of one) slice by slice, in the order a model of
    that direction reads them. The slices' tokens are the text's tokens (rnnlm.slices), so a
    backward model's are the slices from the last, each reversed: one slice's tokens are held at a
    time, as for a forward model; only the slices' text (a copy of the line) is held too."""
    if not reverse:
        yield from encode_slices(tokenizer, text)
        return
    for piece in reversed(list(slice_text(text, SLICE_CHARS, cuts_anywhere(tokenizer)))):
        yield tokenizer.encode(piece)[::-1]
