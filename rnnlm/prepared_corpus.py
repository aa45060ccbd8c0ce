"""The prepared corpus on disk, and the counts it keeps.

A prepared directory holds `tokenizer.json`, `meta.json` (counts per split) and one raw
token-id file per split (`train.bin`, `valid.bin`, `test.bin`; uint16 when the vocabulary
fits, else uint32), plus `train-sample-K.bin` files under subword regularisation. It opens
as memory maps; raw text that `train` prepares itself is kept in a cache keyed by the files
and the options (rnnlm.preparation writes both).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlm import locks
from rnnlm.errors import UserError
from rnnlm.outputs import DirectoryKind, read_marker
from rnnlm.tokenizers import Tokenizer, count_words, load_tokenizer

if TYPE_CHECKING:
    from rnnlm.preparation import PrepareOptions


SPLITS = ("train", "valid", "test")

PREPARED_MARKER = "meta.json"

PREPARED_DIRECTORY = DirectoryKind("prepared corpus directory", PREPARED_MARKER, "rnnlm-prepared", 1,
                                   (PREPARED_MARKER, "tokenizer.json", *(f"{split}.bin" for split in SPLITS),
                                    "train-sample-*.bin"))



@dataclass
class TextCounts:
    """The counts every normalisation divides by (docs/design.md): tokens, words, characters, lines."""

    tokens: int = 0
    words: int = 0
    chars: int = 0
    lines: int = 0
    oov: int = 0

    def add_text(self, text: str) -> None:
        """Count words and characters of text whose every line ends with a newline."""
        newlines = text.count("\n")
        self.words += count_words(text) + newlines
        self.chars += len(text)
        self.lines += newlines

    def add_tokens(self, ids: np.ndarray, unk_id: int) -> None:
        self.tokens += len(ids)
        self.oov += int(np.count_nonzero(ids == unk_id))

    def add(self, other: TextCounts) -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)



@dataclass
class PreparedCorpus:
    """A prepared directory, opened: tokenizer, metadata and memory-mapped token ids."""

    directory: Path
    tokenizer: Tokenizer
    meta: dict[str, Any]
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    train_samples: list[np.ndarray] = field(default_factory=list)

    def counts(self, split: str) -> TextCounts:
        return TextCounts(**self.meta["splits"][split])

    def train_tokens(self, epoch: int) -> np.ndarray:
        """The training stream of an epoch (from 1): under subword regularisation each epoch
        reads the next sampled segmentation in turn, otherwise the one encoding."""
        if not self.train_samples:
            return self.splits["train"]
        return self.train_samples[(epoch - 1) % len(self.train_samples)]



def load_prepared(directory: Path) -> PreparedCorpus:
    if not directory.is_dir():
        raise UserError(f"{directory}: no such prepared corpus directory")
    with locks.reading(directory):
        meta = read_marker(directory, PREPARED_DIRECTORY)
        try:
            dtype = np.dtype(meta["dtype"])
            tokens = {name: int(meta["splits"][name]["tokens"]) for name in SPLITS}
            sample_tokens = [int(count) for count in meta.get("train_samples", [])]
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{directory / PREPARED_MARKER}: unreadable ({error})") from None
        tokenizer = load_tokenizer(directory / "tokenizer.json")
        splits = {name: _open_ids(directory / f"{name}.bin", tokens[name], dtype) for name in SPLITS}
        samples = [_open_ids(sample_path(directory, k), count, dtype) for k, count in enumerate(sample_tokens, start=1)]
    return PreparedCorpus(directory, tokenizer, meta, splits, samples)



def _open_ids(path: Path, expected: int, dtype: np.dtype) -> np.ndarray:
    """A token-id file as a read-only memory map, checked to hold `expected` ids."""
    size = path.stat().st_size if path.exists() else -1
    if size != expected * dtype.itemsize:
        raise UserError(f"{path}: missing or truncated (expected {expected} tokens)")
    return np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)



def sample_path(directory: Path, k: int) -> Path:
    return directory / f"train-sample-{k}.bin"



def prepared_cache_dir(sources: Sequence[str], options: PrepareOptions) -> Path:
    """Where `train` caches the preparation of raw text: keyed by the files and the options."""
    identity: list[Any] = [options.cache_fields()]
    for source in [*sources, options.valid, options.test]:
        if source and source != "-":
            stat = Path(source).stat()
            identity.append([str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns])
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_home() / "prepared" / key



def cache_home() -> Path:
    base = os.environ.get("RNNLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rnnlm"
    )
    return Path(base)



def is_prepared_directory(path: Path) -> bool:
    return path.is_dir() and (path / PREPARED_MARKER).exists()
