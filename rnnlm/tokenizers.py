"""Tokenizers: text to token ids and back, with an end-of-line token and an unknown token.

Every tokenizer maps each newline to its end-of-line id, so a corpus is one token stream
with an end-of-line token after every line; the text of a line never reaches the subword
models. Decoding gives back the exact text (words: the whitespace-normalised text), so
word and character counts, and with them per-word perplexity and bits per character,
mean the same for every tokenizer. Tokenizers are saved as JSON, never pickled.

Training reads the text as chunks that end on line boundaries, so a corpus need not fit
in memory.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rnnlm.choices import TOKENIZERS
from rnnlm.errors import UserError

EOL = "<eol>"
UNK = "<unk>"
UNK_TEXT = "\ufffd"  # how an unknown token is written out when decoding (word models write UNK)
SPACE_SYMBOL = "\u2581"  # sentencepiece's stand-in for a space inside pieces
DEFAULT_SUBWORD_VOCAB = 8000
# sentencepiece's names for its end-of-line and unknown pieces: it leaves text spelling a reserved
# name out of training, so they must not be words that corpora contain (PTB's `<unk>`)
_SP_EOL, _SP_UNK = "<rnnlm:eol>", "<rnnlm:unk>"

class Tokenizer(Protocol):
    """What scoring, generation and prepare need from every tokenizer."""

    kind: str
    eol_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def starts_character(self, token_id: int) -> bool: ...  # so the text decoded before it is complete
    def piece(self, token_id: int) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TokenizerSettings:
    """How to build a vocabulary: its size cap, the word count floor, the subword training sample."""

    vocab_size: int | None = None  # total, specials included; None: every word, or DEFAULT_SUBWORD_VOCAB
    min_count: int = 1  # word: keep words seen at least this often in the training text
    sample_lines: int | None = None  # bpe/unigram: lines sentencepiece samples to train on (None: all)


DEFAULT_SETTINGS = TokenizerSettings()


# ---------------------------------------------------------------------------------------
# Vectorised helpers: code points and whitespace words


def codepoints(text: str) -> np.ndarray:
    """The code points of `text`: its bytes when it is ASCII (the fast path), else UTF-32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# Every code point that str.split() splits on lies below U+3001; the last slot stands for all above.
_IS_SPACE = np.array([chr(c).isspace() for c in range(0x3001)] + [False])
_ASCII_SPACE = bytes(chr(b).isspace() for b in range(128)) + bytes(128)  # a bytes.translate table: 1 for whitespace


def _word_start_mask(text: str) -> np.ndarray:
    """True at each code point where a whitespace-separated word begins, exactly as str.split() cuts."""
    if text.isascii():  # translating bytes is twice as fast as a table lookup
        space = np.frombuffer(text.encode("ascii").translate(_ASCII_SPACE), dtype=np.bool_)
    else:
        space = _IS_SPACE[np.minimum(codepoints(text), len(_IS_SPACE) - 1)]
    starts = np.empty(len(space), dtype=np.bool_)
    starts[:1] = ~space[:1]
    np.greater(space[:-1], space[1:], out=starts[1:])  # a space, then a non-space
    return starts


def count_words(text: str) -> int:
    """len(text.split()), without building the words."""
    return int(np.count_nonzero(_word_start_mask(text)))


def _insert_end_of_lines(text: str, word_ids: np.ndarray, eol_id: int) -> np.ndarray:
    """The ids of the words of `text` with `eol_id` after each line's words, where its newlines are."""
    if "\n" not in text:
        return word_ids
    newlines = np.flatnonzero(codepoints(text) == ord("\n"))
    return np.insert(word_ids, np.searchsorted(np.flatnonzero(_word_start_mask(text)), newlines), eol_id)


def _join_lines(lines: list[list[int]], eol_id: int) -> np.ndarray:
    """The ids of each line in turn, with an end-of-line id between consecutive lines."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ids = np.fromiter(chain.from_iterable(lines), dtype=np.int64, count=int(lengths.sum()))
    return np.insert(ids, np.cumsum(lengths)[:-1], eol_id)


# ---------------------------------------------------------------------------------------
# Characters


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
        self._pieces = [EOL, UNK, *self.chars]
        self._decode_table = ["\n", UNK_TEXT, *self.chars]
        # id of every code point up to the largest known one (and at least all bytes); the last slot is "unknown"
        highest = max([255, *map(ord, self.chars)])
        self._lookup = np.full(highest + 2, self.unk_id, dtype=np.int64)
        self._lookup[[ord(c) for c in self.chars]] = np.arange(2, len(self.chars) + 2)
        self._lookup[ord("\n")] = self.eol_id

    @classmethod
    def train(cls, texts: Iterable[str], settings: TokenizerSettings = DEFAULT_SETTINGS) -> CharTokenizer:
        points: set[int] = set()
        for text in texts:
            points.update(np.flatnonzero(np.bincount(codepoints(text))).tolist())
        return cls(map(chr, points))

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> np.ndarray:
        """Token ids for `text`; each newline becomes the end-of-line id."""
        points = codepoints(text)
        if points.dtype != np.uint8:
            points = np.minimum(points, len(self._lookup) - 1)
        return self._lookup[points]

    def decode(self, ids: Iterable[int]) -> str:
        table = self._decode_table
        return "".join(table[i] for i in ids)

    def starts_character(self, token_id: int) -> bool:
        """Every token is whole characters, so the text before any token is complete."""
        return True

    def piece(self, token_id: int) -> str:
        """A readable name for one token, for per-token tables."""
        return self._pieces[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"])

    def __reduce__(self) -> tuple[Any, ...]:  # sent to worker processes as its JSON form
        return tokenizer_from_dict, (self.to_dict(),)


# ---------------------------------------------------------------------------------------
# Words


class WordNumbering:
    """Numbers for whitespace words in order of first appearance, kept across the texts given.

    `prepare` counts and encodes words in one pass with it: numbers as the text comes, token
    ids once the counts have made the vocabulary.
    """

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    @property
    def words(self) -> list[str]:
        """The words numbered so far, in the order of their numbers."""
        return list(self.numbers)

    def __call__(self, text: str) -> np.ndarray:
        """`text` as word numbers (from 1), with 0 after each line's words."""
        words = text.split()
        numbers = np.fromiter(map(self.numbers.get, words, repeat(0)), dtype=np.uint32, count=len(words))
        for position in np.flatnonzero(numbers == 0).tolist():  # words not seen before
            numbers[position] = self.numbers.setdefault(words[position], len(self.numbers) + 1)
        return _insert_end_of_lines(text, numbers, 0)


class WordTokenizer:
    """One token per whitespace-separated word of the training split's vocabulary.

    Id 0 is the end-of-line token, id 1 the unknown token (a literal `<unk>` in the text,
    as in PTB, is that token); then the words by descending count, ties by string.
    Decoding joins a line's words with single spaces.
    """

    kind = "word"
    eol_id = 0
    unk_id = 1

    def __init__(self, words: Iterable[str]) -> None:
        self.words = list(words)
        if any(not w or w != "".join(w.split()) or w == UNK for w in self.words):
            raise ValueError(f"a word vocabulary holds non-empty words without whitespace, other than {UNK}")
        self._index = {word: i for i, word in enumerate(self.words, start=2)}
        if len(self._index) != len(self.words):
            raise ValueError("a word vocabulary holds each word once")
        self._pieces = [EOL, UNK, *self.words]

    @classmethod
    def train(cls, texts: Iterable[str], settings: TokenizerSettings = DEFAULT_SETTINGS) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.split())
        return cls.from_counts(counts, settings)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], settings: TokenizerSettings = DEFAULT_SETTINGS) -> WordTokenizer:
        """The vocabulary of words counted in the training text: a literal `<unk>` is the unknown token."""
        kept = [w for w, c in counts.items() if c >= settings.min_count and w != UNK]
        ranked = sorted(kept, key=lambda w: (-counts[w], w))
        if settings.vocab_size is not None:
            ranked = ranked[: max(0, settings.vocab_size - 2)]
        return cls(ranked)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> np.ndarray:
        """Word ids of `text`; each newline becomes the end-of-line id, after its line's words."""
        words = text.split()
        ids = np.fromiter(map(self._index.get, words, repeat(self.unk_id)), dtype=np.int64, count=len(words))
        return _insert_end_of_lines(text, ids, self.eol_id)

    def decode(self, ids: Iterable[int]) -> str:
        pieces = self._pieces
        lines: list[list[str]] = [[]]
        for token in ids:
            if token == self.eol_id:
                lines.append([])
            else:
                lines[-1].append(pieces[token])
        return "\n".join(" ".join(words) for words in lines)

    def starts_character(self, token_id: int) -> bool:
        """Every token is a whole word or the end of a line."""
        return True

    def piece(self, token_id: int) -> str:
        return self._pieces[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": self.words}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        if not all(isinstance(w, str) for w in data["words"]):
            raise ValueError("words must be strings")
        return cls(data["words"])

    def __reduce__(self) -> tuple[Any, ...]:
        return tokenizer_from_dict, (self.to_dict(),)


# ---------------------------------------------------------------------------------------
# Subwords (sentencepiece)


class SentencePieceTokenizer:
    """A sentencepiece BPE or unigram model, trained on lines of the training split.

    The model's own ids are the token ids: 0 is end-of-line (sentencepiece's end-of-sentence
    control symbol, never produced from text), 1 unknown, then 256 byte pieces (byte fallback:
    no text is ever out of vocabulary), then the learned pieces. Text is kept as it is
    (identity normalisation, spaces kept, no dummy prefix), so decoding is plain concatenation
    of the pieces and round-trips exactly; a literal U+2581 is encoded as its bytes.
    """

    kind = ""
    model_type = ""
    eol_id = 0
    unk_id = 1

    def __init__(self, model: bytes) -> None:
        import sentencepiece

        self.model = model
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        size = self._processor.get_piece_size()
        if size < 258 or not self._processor.is_control(self.eol_id) or not self._processor.is_unknown(self.unk_id):
            raise ValueError("not an rnnlm sentencepiece model (end-of-line 0, unknown 1, byte fallback)")
        self._bytes = [self._piece_bytes(i) for i in range(size)]
        self._pieces = [EOL, UNK, *map(self._processor.id_to_piece, range(2, size))]
        self._space_symbol_ids = [self._processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode()]

    def _piece_bytes(self, token_id: int) -> bytes:
        """What one piece decodes to, as UTF-8 bytes (a byte piece: its single byte)."""
        processor = self._processor
        piece = processor.id_to_piece(token_id)
        if token_id == self.eol_id:
            return b"\n"
        if processor.is_byte(token_id):
            return bytes([int(piece[1:-1], 16)])
        if processor.is_unknown(token_id) or processor.is_control(token_id):
            return UNK_TEXT.encode()
        return piece.replace(SPACE_SYMBOL, " ").encode()

    @classmethod
    def train(cls, texts: Iterable[str], settings: TokenizerSettings = DEFAULT_SETTINGS) -> SentencePieceTokenizer:
        """Train on the lines of `texts`; sentencepiece samples `settings.sample_lines` of them itself."""
        import sentencepiece

        vocab_size = settings.vocab_size or DEFAULT_SUBWORD_VOCAB
        lines = (line for text in texts for line in text.split("\n") if line)
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=lines, model_writer=model, model_type=cls.model_type, vocab_size=vocab_size,
                hard_vocab_limit=False, byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False, split_by_whitespace=True,
                eos_id=cls.eol_id, eos_piece=_SP_EOL, unk_id=cls.unk_id, unk_piece=_SP_UNK, bos_id=-1, pad_id=-1,
                input_sentence_size=settings.sample_lines or 0, shuffle_input_sentence=True,
                max_sentence_length=1 << 16, num_threads=len(os.sched_getaffinity(0)), minloglevel=2,
            )
        except RuntimeError as error:
            reason = str(error).split("] ", 1)[-1].splitlines()[0]
            raise UserError(f"cannot build the {cls.kind} vocabulary of {vocab_size} tokens: {reason}") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def encode(self, text: str) -> np.ndarray:
        """Token ids for `text`, line by line; each newline becomes the end-of-line id."""
        return self._encode(text, {})

    def encode_sampled(self, text: str, alpha: float) -> np.ndarray:
        """A random segmentation of `text` (subword regularisation): BPE-dropout with probability
        `alpha` for bpe, a draw from the unigram lattice smoothed by `alpha` for unigram.

        Sentencepiece's sampling cannot be made reproducible across processes (seeding it
        repeats draws only within one process), so none is attempted.
        """
        return self._encode(text, {"enable_sampling": True, "alpha": alpha, "nbest_size": -1})

    def _encode(self, text: str, sampling: dict[str, Any]) -> np.ndarray:
        lines = text.split("\n")
        encoded = self._processor.encode(lines, num_threads=1, **sampling)
        if SPACE_SYMBOL in text:  # sentencepiece would read it as a space: encode it as its bytes
            for index, line in enumerate(lines):
                if SPACE_SYMBOL in line:
                    parts = self._processor.encode(line.split(SPACE_SYMBOL), num_threads=1, **sampling)
                    encoded[index] = [*parts[0], *chain.from_iterable([*self._space_symbol_ids, *p] for p in parts[1:])]
        return _join_lines(encoded, self.eol_id)

    def decode(self, ids: Iterable[int]) -> str:
        table = self._bytes
        return b"".join([table[i] for i in ids]).decode("utf-8", "replace")

    def starts_character(self, token_id: int) -> bool:
        """False for a byte piece that continues a UTF-8 character (bytes 0x80-0xBF): until a
        token that starts one, the text decoded so far may end in an incomplete character."""
        first = self._bytes[token_id][:1]
        return first != b"" and not 0x80 <= first[0] < 0xC0

    def piece(self, token_id: int) -> str:
        return self._pieces[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": base64.b64encode(self.model).decode("ascii")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentencePieceTokenizer:
        return cls(base64.b64decode(data["model"], validate=True))

    def __reduce__(self) -> tuple[Any, ...]:
        return tokenizer_from_dict, (self.to_dict(),)


class BpeTokenizer(SentencePieceTokenizer):
    kind = "bpe"
    model_type = "bpe"


class UnigramTokenizer(SentencePieceTokenizer):
    kind = "unigram"
    model_type = "unigram"


TOKENIZER_KINDS: dict[str, Any] = {kind.kind: kind for kind in (CharTokenizer, WordTokenizer, BpeTokenizer, UnigramTokenizer)}
assert tuple(TOKENIZER_KINDS) == TOKENIZERS, "rnnlm.choices.TOKENIZERS names these tokenizers, in this order"
SUBWORD_KINDS = ("bpe", "unigram")


def train_tokenizer(kind: str, texts: Iterable[str], settings: TokenizerSettings = DEFAULT_SETTINGS) -> Tokenizer:
    """Build a tokenizer of `kind` from text chunks that each end with a newline."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    return TOKENIZER_KINDS[kind].train(texts, settings)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    return TOKENIZER_KINDS[data["kind"]].from_dict(data)


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    from rnnlm.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{path}: tokenizer file not found") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise UserError(f"{path}: not a valid rnnlm tokenizer file ({error})") from None
