"""Long lines in bounded memory: text cut into slices whose tokens are the tokens of the whole,
and token streams cut into the model's windows.

A line of many megabytes would otherwise become one token array, one padded batch row and
one array of per-token results at once, several times its size. Cut just before a space or
just after a newline, no token straddles the cut for any tokenizer: a word tokenizer splits on
white space; the sentencepiece models split lines apart and, without a dummy prefix, start a
new piece at every space; a character tokenizer may even cut anywhere. The tokens of the
slices, one after the other, are therefore the tokens of the whole text (tests check this
for every tokenizer), and a reader holds one slice's tokens at a time. A run of text with no
such cut, longer than a slice, stays whole (except for a character tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from rnnlm.tokenizers import Tokenizer, count_words

SLICE_CHARS = 1 << 16  # characters tokenised at a time; a longer line is read in slices


def cuts_anywhere(tokenizer: Tokenizer) -> bool:
    """Whether a cut between any two characters keeps the tokens unchanged (one token per character)."""
    return tokenizer.kind == "char"


def _cut(text: str, start: int, end: int) -> int:
    """The last cut (before a space, after a newline) in start+1..end, else the first after end and
    before the end of the text, else -1."""
    cut = max(text.rfind(" ", start + 1, end + 1), text.rfind("\n", start, end) + 1)
    if cut > start:
        return cut
    later = [at for at in (text.find(" ", end), text.find("\n", end) + 1) if end < at < len(text)]
    return min(later, default=-1)


def slice_text(text: str, size: int = SLICE_CHARS, anywhere: bool = False) -> Iterator[str]:
    """`text` in consecutive slices of at most `size` characters, cut before a space or after a
    newline (`anywhere`: at exactly `size`); a longer stretch without such a cut stays whole."""
    start = 0
    while len(text) - start > size:
        end = start + size if anywhere else _cut(text, start, start + size)
        if end < 0:
            break
        yield text[start:end]
        start = end
    yield text[start:]


def encode_slices(tokenizer: Tokenizer, text: str, size: int = SLICE_CHARS) -> Iterator[np.ndarray]:
    """The token ids of `text`, slice by slice; concatenated, they equal tokenizer.encode(text)."""
    for piece in slice_text(text, size, cuts_anywhere(tokenizer)):
        yield tokenizer.encode(piece)


def count_words_sliced(text: str, size: int = SLICE_CHARS) -> int:
    """count_words(text) a slice at a time: whole, it builds arrays several times the text's size."""
    return sum(count_words(piece) for piece in slice_text(text, size))


def token_windows(pieces: Iterable[np.ndarray], start_token: int, window: int) -> Iterator[np.ndarray]:
    """Blocks of one context token and up to `window` targets, cut from a token stream that comes
    in pieces of any size: the windows fall where they would on the whole stream at once, and
    only one piece and the tokens left over from the one before are held."""
    pending = np.array([start_token], dtype=np.int64)
    for piece in pieces:
        stream = np.concatenate([pending, np.asarray(piece, dtype=np.int64)])
        end = (len(stream) - 1) // window * window
        for column in range(0, end, window):
            yield stream[column : column + window + 1]
        pending = stream[end:]
    if len(pending) > 1:
        yield pending
