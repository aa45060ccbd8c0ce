"""Preparing a corpus: split it, build the tokenizer, and write token ids to memory-mapped files.

A prepared directory holds `tokenizer.json`, `meta.json` (counts per split) and one raw
token-id file per split (`train.bin`, `valid.bin`, `test.bin`; uint16 or uint32). Every
pass over the text streams it in chunks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm.errors import UserError
from rnnlm.fileio import (
    atomic_directory,
    check_readable_file,
    iter_text_chunks,
    open_binary_input,
    write_text_atomic,
)
from rnnlm.tokenizers import Tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

SPLITS = ("train", "valid", "test")
PREPARED_MARKER = "meta.json"


@dataclass
class TextCounts:
    """The counts every normalisation divides by (DESIGN.md): tokens, words, characters, lines."""

    tokens: int = 0
    words: int = 0
    chars: int = 0
    lines: int = 0
    oov: int = 0

    def add_text(self, text: str) -> None:
        """Count words and characters of text whose every line ends with a newline."""
        self.words += len(text.split()) + text.count("\n")
        self.chars += len(text)
        self.lines += text.count("\n")

    def add_tokens(self, ids: np.ndarray, unk_id: int) -> None:
        self.tokens += len(ids)
        self.oov += int(np.count_nonzero(ids == unk_id))

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class PrepareOptions:
    tokenizer: str = "char"
    valid: str | None = None
    test: str | None = None
    valid_fraction: float = 0.05
    test_fraction: float = 0.0
    encoding_errors: str = "strict"

    def cache_fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PreparedCorpus:
    """A prepared directory, opened: tokenizer, metadata and memory-mapped token ids."""

    directory: Path
    tokenizer: Tokenizer
    meta: dict[str, Any]
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def counts(self, split: str) -> TextCounts:
        return TextCounts(**self.meta["splits"][split])


def iter_source_text(sources: Sequence[str], errors: str) -> Iterator[str]:
    """The text of every source in order, in chunks that each end with a newline.

    A source whose last line has no newline gets one, so every line ends with end-of-line.
    """
    for source in sources:
        previous = ""
        with open_binary_input(source) as stream:
            for text in iter_text_chunks(stream, _display_name(source), errors):
                if previous:
                    yield previous
                previous = text
        if previous:
            yield previous if previous.endswith("\n") else previous + "\n"


def _display_name(source: str) -> str:
    return "<stdin>" if source == "-" else source


def count_lines(sources: Sequence[str]) -> int:
    """Lines in the sources, an unterminated last line counted (a cheap byte scan)."""
    total = 0
    for source in sources:
        last = b"\n"
        with open_binary_input(source) as stream:
            while block := stream.read(1 << 22):
                total += block.count(b"\n")
                last = block[-1:]
        total += last != b"\n"
    return total


def iter_lines_range(chunks: Iterator[str], start: int, stop: int) -> Iterator[str]:
    """From text chunks, the text of lines start..stop-1 (0-based), in chunks."""
    line = 0
    for text in chunks:
        n = text.count("\n")
        if line + n <= start:
            line += n
            continue
        begin = _position_after_lines(text, start - line) if line < start else 0
        end = _position_after_lines(text, stop - line) if line + n > stop else len(text)
        if begin < end:
            yield text[begin:end]
        line += n
        if line >= stop:
            return


def _position_after_lines(text: str, lines: int) -> int:
    position = 0
    for _ in range(lines):
        position = text.index("\n", position) + 1
    return position


def split_line_ranges(total_lines: int, valid_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """Train, then valid, then test, as contiguous line ranges at the end of the corpus."""
    for name, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        if not 0 <= fraction < 1:
            raise UserError(f"--{name}-fraction must be at least 0 and below 1, got {fraction}")
    if valid_fraction + test_fraction >= 1:
        raise UserError("--valid-fraction and --test-fraction leave nothing to train on")
    test_lines = math.ceil(total_lines * test_fraction - 1e-9) if test_fraction else 0
    valid_lines = math.ceil(total_lines * valid_fraction - 1e-9) if valid_fraction else 0
    train_lines = total_lines - valid_lines - test_lines
    if train_lines < 1:
        raise UserError(f"the corpus has {total_lines} line(s): too few to split off validation/test lines")
    return {
        "train": (0, train_lines),
        "valid": (train_lines, train_lines + valid_lines),
        "test": (train_lines + valid_lines, total_lines),
    }


def prepare(sources: Sequence[str], output: Path, options: PrepareOptions) -> PreparedCorpus:
    """Build the tokenizer on the training text and write every split's token ids under `output`."""
    if not sources:
        raise UserError("no corpus given")
    if options.encoding_errors not in ("strict", "replace"):
        raise UserError("--encoding-errors must be 'strict' or 'replace'")
    for source in [*sources, options.valid, options.test]:
        if source not in (None, "-"):
            check_readable_file(Path(source))
    with _spooled_stdin(sources) as sources:
        split_text = _split_readers(sources, options)
        sample = _first_bytes(split_text["train"]())
        if not sample.strip("\n"):
            raise UserError(f"{', '.join(map(_display_name, sources))}: the training text is empty")
        tokenizer = train_tokenizer(options.tokenizer, split_text["train"]())
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        with atomic_directory(output, (PREPARED_MARKER,)) as building:
            counts = {name: _encode_split(split_text[name](), tokenizer, building / f"{name}.bin", dtype) for name in SPLITS}
            save_tokenizer(tokenizer, building / "tokenizer.json")
            meta = {
                "format": "rnnlm-prepared",
                "version": 1,
                "tokenizer": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "dtype": np.dtype(dtype).name,
                "sources": [_display_name(s) for s in sources],
                "options": options.cache_fields(),
                "splits": {name: c.to_dict() for name, c in counts.items()},
            }
            write_text_atomic(building / PREPARED_MARKER, json.dumps(meta, indent=2) + "\n")
    return load_prepared(output)


def _first_bytes(chunks: Iterator[str]) -> str:
    for text in chunks:
        if text.strip("\n"):
            return text
    return ""


def _split_readers(sources: Sequence[str], options: PrepareOptions) -> dict[str, Any]:
    """For each split, a function returning a fresh iterator over its text."""
    errors = options.encoding_errors
    if options.valid is None and options.test is None:
        total_lines = count_lines(sources)
        if total_lines == 0:
            raise UserError(f"{', '.join(map(_display_name, sources))}: is empty")
        ranges = split_line_ranges(total_lines, options.valid_fraction, options.test_fraction)
        return {
            name: (lambda start=start, stop=stop: iter_lines_range(iter_source_text(sources, errors), start, stop))
            for name, (start, stop) in ranges.items()
        }
    readers: dict[str, Any] = {"train": lambda: iter_source_text(sources, errors)}
    for name in ("valid", "test"):
        path = getattr(options, name)
        readers[name] = (lambda path=path: iter_source_text([path], errors)) if path else (lambda: iter(()))
    return readers


def _encode_split(chunks: Iterator[str], tokenizer: Tokenizer, path: Path, dtype: type) -> TextCounts:
    counts = TextCounts()
    with path.open("wb") as stream:
        for text in chunks:
            ids = tokenizer.encode(text)
            counts.add_text(text)
            counts.add_tokens(ids, tokenizer.unk_id)
            ids.astype(dtype).tofile(stream)
    return counts


class _spooled_stdin:
    """Copy standard input to a temporary file, because preparing reads the text twice."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = list(sources)
        self.temporary: Path | None = None

    def __enter__(self) -> list[str]:
        if "-" not in self.sources:
            return self.sources
        if self.sources.count("-") > 1:
            raise UserError("standard input ('-') can be given only once")
        descriptor, name = tempfile.mkstemp(prefix="rnnlm-stdin-", suffix=".txt")
        self.temporary = Path(name)
        with os.fdopen(descriptor, "wb") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
        return [name if s == "-" else s for s in self.sources]

    def __exit__(self, *exc: object) -> None:
        if self.temporary:
            self.temporary.unlink(missing_ok=True)


def load_prepared(directory: Path) -> PreparedCorpus:
    meta_path = directory / PREPARED_MARKER
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != "rnnlm-prepared":
            raise ValueError("not an rnnlm prepared directory")
        dtype = np.dtype(meta["dtype"])
    except FileNotFoundError:
        raise UserError(f"{directory}: not a prepared corpus directory (no {PREPARED_MARKER})") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{meta_path}: unreadable ({error})") from None
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    splits: dict[str, np.ndarray] = {}
    for name in SPLITS:
        path = directory / f"{name}.bin"
        expected = meta["splits"][name]["tokens"]
        size = path.stat().st_size if path.exists() else -1
        if size != expected * dtype.itemsize:
            raise UserError(f"{path}: missing or truncated (expected {expected} tokens)")
        splits[name] = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)
    return PreparedCorpus(directory, tokenizer, meta, splits)


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


def open_corpus(sources: Sequence[str], options: PrepareOptions) -> PreparedCorpus:
    """A prepared directory as is, or raw text prepared into the cache (once)."""
    if len(sources) == 1 and is_prepared_directory(Path(sources[0])):
        return load_prepared(Path(sources[0]))
    if "-" in sources:
        raise UserError("train reads files, not standard input; run 'rnnlm prepare - -o DIR' first")
    for source in sources:
        check_readable_file(Path(source))
    cached = prepared_cache_dir(sources, options)
    if is_prepared_directory(cached):
        try:
            return load_prepared(cached)
        except UserError:
            pass  # a damaged cache entry is simply rebuilt
    return prepare(sources, cached, options)


def stream_batches(tokens: np.ndarray, batch_size: int, bptt: int, start_column: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stateful TBPTT batches: the stream cut into `batch_size` rows, read `bptt` columns at a time.

    Yields (column, inputs, targets); row r of one batch continues row r of the previous one,
    so the recurrent state can be carried across batches.
    """
    row_length = (len(tokens) - 1) // batch_size
    if row_length < 1:
        raise UserError(f"the training split ({len(tokens)} tokens) is too small for batch size {batch_size}")
    inputs = np.lib.stride_tricks.as_strided(tokens, (batch_size, row_length + 1), (row_length * tokens.itemsize, tokens.itemsize))
    for column in range(start_column, row_length, bptt):
        width = min(bptt, row_length - column)
        window = np.asarray(inputs[:, column : column + width + 1], dtype=np.int64)
        yield column, window[:, :-1], window[:, 1:]
