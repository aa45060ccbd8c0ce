"""Tokenizers: text to token ids and back, with an end-of-line token and an unknown token.

Every tokenizer maps each newline to its end-of-line id, so a corpus is one token stream
with an end-of-line token after every line. Tokenizers are saved as JSON, never pickled.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm.errors import UserError

EOL = "<eol>"
UNK = "<unk>"
UNK_TEXT = "\ufffd"  # how an unknown token is written out when decoding


class CharTokenizer:
    """One token per Unicode code point seen in the training split.

    Id 0 is the end-of-line token (written as a newline), id 1 the unknown token; the
    remaining ids are the training characters in code-point order.
    """

    kind = "char"
    eol_id = 0
    unk_id = 1

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars) - {"\n"})
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a character tokenizer's vocabulary holds single characters")
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._codepoints = codepoints  # sorted, because self.chars is
        self._pieces = [EOL, UNK, *self.chars]
        self._decode_table = ["\n", UNK_TEXT, *self.chars]

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        return cls(counts)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> np.ndarray:
        """Token ids for `text`; each newline becomes the end-of-line id."""
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.full(codepoints.shape, self.unk_id, dtype=np.int64)
        if len(self._codepoints):
            slot = np.minimum(np.searchsorted(self._codepoints, codepoints), len(self._codepoints) - 1)
            known = self._codepoints[slot] == codepoints
            ids[known] = slot[known] + 2
        ids[codepoints == 10] = self.eol_id
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        table = self._decode_table
        return "".join(table[i] for i in ids)

    def piece(self, token_id: int) -> str:
        """A readable name for one token, for per-token tables."""
        return self._pieces[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"])


Tokenizer = CharTokenizer
TOKENIZER_KINDS: dict[str, type[CharTokenizer]] = {"char": CharTokenizer}


def train_tokenizer(kind: str, texts: Iterable[str]) -> Tokenizer:
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    return TOKENIZER_KINDS[kind].train(texts)


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    from rnnlm.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TOKENIZER_KINDS[data["kind"]].from_dict(data)
    except FileNotFoundError:
        raise UserError(f"{path}: tokenizer file not found") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a valid rnnlm tokenizer file ({error})") from None
