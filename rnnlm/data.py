"""Preparing a corpus: split it, build the tokenizer, and write token ids to memory-mapped files.

A prepared directory holds `tokenizer.json`, `meta.json` (counts per split) and one raw
token-id file per split (`train.bin`, `valid.bin`, `test.bin`; uint16 when the vocabulary
fits, else uint32), plus `train-sample-K.bin` files under subword regularisation.

Nothing holds the corpus in memory: every pass streams it in chunks that end on line
boundaries. A byte scan counts the lines first. Then char, bpe and unigram read the
training text once to build the tokenizer and the whole text once more to encode it;
word does both in a single pass (numbering words as they come, renumbering once the
counts give the vocabulary), which halves its work. Subword encoding of a large corpus
is shared out to worker processes, chunks kept in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from rnnlm.errors import InvalidOption, UserError
from rnnlm.outputs import DirectoryKind, build_aside, claimed, read_marker
from rnnlm import locks
from rnnlm.fileio import (
    ENCODING_ERRORS,
    check_readable_file,
    iter_text_chunks,
    open_binary_input,
    write_text_atomic,
)
from rnnlm.tokenizers import (
    SUBWORD_KINDS,
    TOKENIZER_KINDS,
    Tokenizer,
    TokenizerSettings,
    WordNumbering,
    WordTokenizer,
    count_words,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

SPLITS = ("train", "valid", "test")
PREPARED_MARKER = "meta.json"
PREPARED_DIRECTORY = DirectoryKind("prepared corpus directory", PREPARED_MARKER, "rnnlm-prepared", 1,
                                   (PREPARED_MARKER, "tokenizer.json", *(f"{split}.bin" for split in SPLITS),
                                    "train-sample-*.bin"))
PARALLEL_MIN_BYTES = 64 << 20  # smaller corpora are tokenized in this process: workers take a second to start
RENUMBER_BLOCK = 1 << 20  # token ids renumbered at a time
SUBWORD_SAMPLE_BYTES = 32 << 20  # about this much training text is sampled for bpe/unigram (bounds memory)


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
class PrepareOptions:
    tokenizer: str = "char"
    valid: str | None = None
    test: str | None = None
    valid_fraction: float = 0.05
    test_fraction: float = 0.0
    encoding_errors: str = "strict"
    vocab_size: int | None = None
    min_count: int = 1
    subword_alpha: float = 0.0
    subword_samples: int = 4

    def validate(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise InvalidOption(f"unknown tokenizer {self.tokenizer!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
        checks = [
            (self.encoding_errors in ENCODING_ERRORS, "--encoding-errors must be 'strict' or 'replace'"),
            (self.vocab_size is None or self.tokenizer != "char",
             "--vocab-size does not apply to --tokenizer char (its vocabulary is the training characters)"),
            (self.vocab_size is None or self.vocab_size >= 3, f"--vocab-size must be at least 3, got {self.vocab_size}"),
            (self.min_count >= 1, f"--min-count must be at least 1, got {self.min_count}"),
            (self.min_count == 1 or self.tokenizer == "word", "--min-count applies to --tokenizer word only"),
            (0 <= self.subword_alpha <= 1, f"--subword-alpha must be from 0 to 1, got {self.subword_alpha}"),
            (not self.subword_alpha or self.tokenizer in SUBWORD_KINDS, "--subword-alpha needs --tokenizer bpe or unigram"),
            (self.subword_samples >= 1, f"--subword-samples must be at least 1, got {self.subword_samples}"),
            (0 <= self.valid_fraction < 1, f"--valid-fraction must be at least 0 and below 1, got {self.valid_fraction}"),
            (0 <= self.test_fraction < 1, f"--test-fraction must be at least 0 and below 1, got {self.test_fraction}"),
            (self.valid_fraction + self.test_fraction < 1, "--valid-fraction and --test-fraction leave nothing to train on"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOption(message)

    @property
    def sample_count(self) -> int:
        """Sampled encodings of the training split to write (0 without subword regularisation)."""
        return self.subword_samples if self.subword_alpha else 0

    def cache_fields(self) -> dict[str, Any]:
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


class PrepareReporter(Protocol):
    """What preparing tells whoever is watching: each pass over the text, and bytes as they are read."""

    def start(self, corpus_bytes: int) -> None: ...
    def phase(self, description: str, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finish(self) -> None: ...


class SilentPrepareReporter:
    def start(self, corpus_bytes: int) -> None: pass
    def phase(self, description: str, total_bytes: int) -> None: pass
    def advance(self, nbytes: int) -> None: pass
    def finish(self) -> None: pass


# ---------------------------------------------------------------------------------------
# Reading the sources


def expand_sources(sources: Sequence[str]) -> list[str]:
    """The sources with each directory replaced by the files in it.

    A directory contributes its regular files (symbolic links followed) whose names do not
    start with a dot, in name order; subdirectories are not entered.
    """
    expanded: list[str] = []
    for source in sources:
        path = Path(source)
        if source == "-" or not path.is_dir():
            expanded.append(source)
            continue
        try:
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        except PermissionError:
            raise UserError(f"{source}: permission denied") from None
        if not files:
            raise UserError(f"{source}: the directory holds no files to read")
        expanded.extend(str(p) for p in files)
    return expanded


class _CountingReader:
    """A binary stream that reports how many bytes each read returned."""

    def __init__(self, stream: BinaryIO, on_read: Callable[[int], None]) -> None:
        self.stream = stream
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        block = self.stream.read(size)
        self.on_read(len(block))
        return block


def iter_source_text(sources: Sequence[str], errors: str, on_read: Callable[[int], None] | None = None) -> Iterator[str]:
    """The text of every source in order, in chunks that each end with a newline.

    A source whose last line has no newline gets one, so every line ends with end-of-line.
    """
    for source in sources:
        previous = ""
        with open_binary_input(source) as stream:
            reader = _CountingReader(stream, on_read) if on_read else stream
            for text in iter_text_chunks(reader, _display_name(source), errors):  # type: ignore[arg-type]
                if previous:
                    yield previous
                previous = text
        if previous:
            yield previous if previous.endswith("\n") else previous + "\n"


def _display_name(source: str) -> str:
    return "<stdin>" if source == "-" else source


def count_lines(sources: Sequence[str], on_read: Callable[[int], None] | None = None) -> int:
    """Lines in the sources, an unterminated last line counted (a cheap byte scan)."""
    total = 0
    for source in sources:
        last = b"\n"
        with open_binary_input(source) as stream:
            while block := stream.read(1 << 22):
                total += block.count(b"\n")
                last = block[-1:]
                if on_read:
                    on_read(len(block))
        total += last != b"\n"
    return total


def split_line_ranges(total_lines: int, valid_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """Train, then valid, then test, as contiguous line ranges at the end of the corpus."""
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


def cut_at_lines(chunks: Iterable[str], ranges: dict[str, tuple[int, int]]) -> Iterator[tuple[str, str]]:
    """(split, text) pieces of the chunks, each split taking the lines of its range (in order)."""
    ends = [(name, stop) for name, (start, stop) in ranges.items() if stop > start]
    index = line = 0
    for text in chunks:
        while text and index < len(ends):
            name, stop = ends[index]
            newlines = text.count("\n")
            if line + newlines < stop:
                yield name, text
                line += newlines
                break
            cut = _position_after_lines(text, stop - line)
            yield name, text[:cut]
            text, line, index = text[cut:], stop, index + 1


def _position_after_lines(text: str, lines: int) -> int:
    position = 0
    for _ in range(lines):
        position = text.index("\n", position) + 1
    return position


def iter_split_text(sources: Sequence[str], options: PrepareOptions, ranges: dict[str, tuple[int, int]] | None,
                    on_read: Callable[[int], None] | None = None) -> Iterator[tuple[str, str]]:
    """(split, text chunk) over the whole input in one pass: the training text first, then valid, then test."""
    errors = options.encoding_errors
    if ranges is not None:
        yield from cut_at_lines(iter_source_text(sources, errors, on_read), ranges)
        return
    for name, files in (("train", sources), ("valid", [options.valid]), ("test", [options.test])):
        for text in iter_source_text([f for f in files if f], errors, on_read):
            yield name, text


def _source_bytes(sources: Sequence[str]) -> int:
    return sum(Path(s).stat().st_size for s in sources)


# ---------------------------------------------------------------------------------------
# Worker processes


def worker_count() -> int:
    return len(os.sched_getaffinity(0))


_installed: Callable[[Any], Any] | None = None


def _install(function: Callable[[Any], Any]) -> None:
    global _installed
    _installed = function


def _call_installed(item: Any) -> Any:
    assert _installed is not None
    return _installed(item)


def parallel_map(function: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """map(function, items) in worker processes: results in order, only a few items in flight.

    `function` is sent to each worker once; a bounded queue (unlike Pool.imap) keeps the
    reader from running ahead of the workers with the whole corpus.
    """
    workers = worker_count()
    context = multiprocessing.get_context("spawn")  # fork is unsafe beside the threads of torch and Rich
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_install, initargs=(function,)) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(_submit_without_sigint(pool, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _submit_without_sigint(pool: ProcessPoolExecutor, item: Any) -> Future[Any]:
    """Submit with SIGINT blocked: the workers the pool starts meanwhile inherit the block, so
    Ctrl-C reaches this process alone, which stops the pool and exits quietly (130)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(_call_installed, item)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@dataclass
class EncodedChunk:
    split: str
    counts: TextCounts
    ids: np.ndarray
    samples: list[np.ndarray]  # sampled segmentations (subword regularisation), training text only


def encode_chunk(tokenizer: Tokenizer, dtype: type, alpha: float, samples: int, task: tuple[str, str]) -> EncodedChunk:
    """Encode one chunk of a split (and, of the training text, `samples` sampled segmentations) and count it."""
    split, text = task
    ids = tokenizer.encode(text)
    counts = TextCounts()
    counts.add_text(text)
    counts.add_tokens(ids, tokenizer.unk_id)
    sampled = [tokenizer.encode_sampled(text, alpha).astype(dtype)  # type: ignore[attr-defined]
               for _ in range(samples if split == "train" else 0)]
    return EncodedChunk(split, counts, ids.astype(dtype), sampled)


# ---------------------------------------------------------------------------------------
# prepare


def prepare(sources: Sequence[str], output: Path, options: PrepareOptions,
            reporter: PrepareReporter | None = None, wait: bool = False) -> PreparedCorpus:
    """Build the tokenizer on the training text and write every split's token ids under `output`.

    `output` must be absent, empty or an rnnlm prepared directory (outputs.check_output), and no other
    rnnlm process may be writing it: with `wait`, this one waits for that process, else it stops.
    """
    with claimed(output, PREPARED_DIRECTORY, wait) as target:
        return _prepare(sources, target, options, reporter)


def _prepare(sources: Sequence[str], output: Path, options: PrepareOptions,
             reporter: PrepareReporter | None) -> PreparedCorpus:
    if not sources:
        raise UserError("no corpus given")
    options.validate()
    reporter = reporter or SilentPrepareReporter()
    sources = expand_sources(sources)
    for source in [*sources, options.valid, options.test]:
        if source not in (None, "-"):
            check_readable_file(Path(source))
    names = [_display_name(s) for s in sources]
    with build_aside(output, PREPARED_DIRECTORY) as building, _spooled_stdin(sources) as sources:
        source_bytes = _source_bytes(sources)
        corpus_bytes = source_bytes + _source_bytes([f for f in (options.valid, options.test) if f])
        reporter.start(corpus_bytes)
        reporter.phase("counting lines", source_bytes)
        total_lines = count_lines(sources, reporter.advance)
        if total_lines == 0:
            raise UserError(f"{', '.join(names)}: is empty")
        fractions = options.valid is None and options.test is None
        ranges = split_line_ranges(total_lines, options.valid_fraction, options.test_fraction) if fractions else None

        def training_text(on_read: Callable[[int], None] | None = None) -> Iterator[str]:
            chunks = takewhile(lambda item: item[0] == "train", iter_split_text(sources, options, ranges, on_read))
            return (text for _, text in chunks)

        if not any(text.strip("\n") for text in training_text()):
            raise UserError(f"{', '.join(names)}: the training text is empty")
        # subword encoding is slow enough to share out; char and word are about as fast as chunks
        # could be handed to another process, so they stay in this one
        parallel = corpus_bytes >= PARALLEL_MIN_BYTES and worker_count() > 1 and options.tokenizer in SUBWORD_KINDS
        sample_lines = max(1, SUBWORD_SAMPLE_BYTES * total_lines // max(1, source_bytes))  # about that many bytes
        settings = TokenizerSettings(options.vocab_size, options.min_count, sample_lines)
        sample_tokens: list[int] = []
        if options.tokenizer == "word":
            reporter.phase("counting and encoding words", corpus_bytes)
            tokenizer, counts = _encode_words(iter_split_text(sources, options, ranges, reporter.advance), settings,
                                              building)
        else:
            train_share = ranges["train"][1] / total_lines if ranges else 1.0
            reporter.phase(f"building the {options.tokenizer} vocabulary", int(source_bytes * train_share))
            tokenizer = train_tokenizer(options.tokenizer, training_text(reporter.advance), settings)
            reporter.phase("encoding", corpus_bytes)
            counts, sample_tokens = _encode_splits(iter_split_text(sources, options, ranges, reporter.advance),
                                                   tokenizer, options, building, parallel_map if parallel else map)
        save_tokenizer(tokenizer, building / "tokenizer.json")
        meta = {
            "format": "rnnlm-prepared",
            "version": 1,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "dtype": np.dtype(id_dtype(tokenizer)).name,
            "sources": names,
            "options": options.cache_fields(),
            "splits": {name: c.to_dict() for name, c in counts.items()},
            "train_samples": sample_tokens,
        }
        write_text_atomic(building / PREPARED_MARKER, json.dumps(meta, indent=2) + "\n")
        reporter.finish()
    return load_prepared(output)


def id_dtype(tokenizer: Tokenizer) -> type:
    """The narrowest type of the token-id files that holds every id."""
    return np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32


def _sample_path(directory: Path, k: int) -> Path:
    return directory / f"train-sample-{k}.bin"


def _encode_splits(chunks: Iterator[tuple[str, str]], tokenizer: Tokenizer, options: PrepareOptions,
                   directory: Path, mapper: Callable[..., Iterator[Any]]) -> tuple[dict[str, TextCounts], list[int]]:
    """Write each split's ids (and the training samples) as they come; their counts."""
    samples = options.sample_count
    counts = {name: TextCounts() for name in SPLITS}
    sample_tokens = [0] * samples
    encode = partial(encode_chunk, tokenizer, id_dtype(tokenizer), options.subword_alpha, samples)
    with ExitStack() as stack:
        files = {name: stack.enter_context((directory / f"{name}.bin").open("wb")) for name in SPLITS}
        sample_files = [stack.enter_context(_sample_path(directory, k).open("wb")) for k in range(1, samples + 1)]
        for chunk in mapper(encode, chunks):
            counts[chunk.split].add(chunk.counts)
            chunk.ids.tofile(files[chunk.split])
            for k, ids in enumerate(chunk.samples):
                ids.tofile(sample_files[k])
                sample_tokens[k] += len(ids)
    return counts, sample_tokens


def _encode_words(chunks: Iterator[tuple[str, str]], settings: TokenizerSettings,
                  directory: Path) -> tuple[WordTokenizer, dict[str, TextCounts]]:
    """The word tokenizer and every split's ids, from one pass over the text.

    Words are numbered as they come (`WordNumbering`) and the numbers written to temporary
    files while the training counts add up; the counts give the vocabulary, and a vectorised
    pass turns numbers into token ids. Half the work of counting, then encoding.
    """
    numbering = WordNumbering()
    train_counts = np.zeros(1, dtype=np.int64)  # by word number; 0 is end-of-line
    counts = {name: TextCounts() for name in SPLITS}
    numbered = {name: directory / f".{name}.numbers" for name in SPLITS}
    with ExitStack() as stack:
        files = {name: stack.enter_context(path.open("wb")) for name, path in numbered.items()}
        for split, text in chunks:
            numbers = numbering(text)
            numbers.tofile(files[split])
            counts[split].add_text(text)
            counts[split].tokens += len(numbers)
            if split == "train":
                chunk_counts = np.bincount(numbers, minlength=len(train_counts))
                train_counts = np.pad(train_counts, (0, len(chunk_counts) - len(train_counts))) + chunk_counts
    words = numbering.words
    train_counts = np.pad(train_counts, (0, len(words) + 1 - len(train_counts)))  # words seen only in valid/test: 0
    tokenizer = WordTokenizer.from_counts(dict(zip(words, train_counts[1:].tolist())), settings)
    token_id = np.concatenate(([tokenizer.eol_id], tokenizer.encode(" ".join(words))))  # by word number
    dtype = id_dtype(tokenizer)
    for name, path in numbered.items():
        with path.open("rb") as numbers, (directory / f"{name}.bin").open("wb") as out:
            while len(block := np.fromfile(numbers, dtype=np.uint32, count=RENUMBER_BLOCK)):
                ids = token_id[block]
                counts[name].oov += int(np.count_nonzero(ids == tokenizer.unk_id))
                ids.astype(dtype).tofile(out)
        path.unlink()
    return tokenizer, counts


class _spooled_stdin:
    """Copy standard input to a temporary file, because preparing reads the text more than once."""

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
        samples = [_open_ids(_sample_path(directory, k), count, dtype) for k, count in enumerate(sample_tokens, start=1)]
    return PreparedCorpus(directory, tokenizer, meta, splits, samples)


def _open_ids(path: Path, expected: int, dtype: np.dtype) -> np.ndarray:
    """A token-id file as a read-only memory map, checked to hold `expected` ids."""
    size = path.stat().st_size if path.exists() else -1
    if size != expected * dtype.itemsize:
        raise UserError(f"{path}: missing or truncated (expected {expected} tokens)")
    return np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)


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


def open_corpus(sources: Sequence[str], options: PrepareOptions,
                reporter: PrepareReporter | None = None) -> PreparedCorpus:
    """A prepared directory as is, or raw text (files, directories of files) prepared into the cache (once)."""
    if len(sources) == 1 and is_prepared_directory(Path(sources[0])):
        return load_prepared(Path(sources[0]))
    if "-" in sources:
        raise UserError("train reads files, not standard input; run 'rnnlm prepare - -o DIR' first")
    options.validate()
    sources = expand_sources(sources)
    for source in sources:
        check_readable_file(Path(source))
    cached = prepared_cache_dir(sources, options)
    if is_prepared_directory(cached):
        try:
            return load_prepared(cached)
        except UserError:
            pass  # a damaged cache entry is simply rebuilt
    return prepare(sources, cached, options, reporter, wait=True)  # another run preparing the same text: wait for it


def stream_batches(tokens: np.ndarray, batch_size: int, bptt: int, start_column: int = 0,
                   window_length: Callable[[int], int] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stateful TBPTT batches: the stream cut into `batch_size` rows, read `bptt` columns at a time,
    or `window_length(column)` columns from each column on where that is given.

    Yields (column, inputs, targets); row r of one batch continues row r of the previous one,
    so the recurrent state can be carried across batches.
    """
    row_length = (len(tokens) - 1) // batch_size
    if row_length < 1:
        raise UserError(f"the training split ({len(tokens)} tokens) is too small for batch size {batch_size}")
    inputs = np.lib.stride_tricks.as_strided(tokens, (batch_size, row_length + 1), (row_length * tokens.itemsize, tokens.itemsize))
    column = start_column
    while column < row_length:
        width = min(window_length(column) if window_length else bptt, row_length - column)
        window = np.asarray(inputs[:, column : column + width + 1], dtype=np.int64)
        yield column, window[:, :-1], window[:, 1:]
        column += width


SHORT_WINDOW_SHARE = 0.05  # variable windows centred on half of bptt


def mean_window_length(bptt: int, variable: bool) -> float:
    """The average window, for planning a run's steps: with variable windows, a little under bptt."""
    return bptt * (1 - SHORT_WINDOW_SHARE / 2) if variable else float(bptt)


def variable_window_length(bptt: int, seed: int, epoch: int) -> Callable[[int], int]:
    """AWD-LSTM's window lengths (Merity et al. 2017): about `bptt`, or about half of it one time
    in twenty, with a standard deviation of 5 tokens, from 5 (or `bptt`, if smaller) to `bptt` + 40,
    so that windows start at every offset over the epochs.

    Each length is a function of the seed, the epoch and the column, so a resumed run reads the
    windows that an uninterrupted one would.
    """
    def length(column: int) -> int:
        rng = np.random.default_rng((seed % 2**64, epoch, column))
        centre = bptt / 2 if rng.random() < SHORT_WINDOW_SHARE else bptt
        return int(np.clip(int(rng.normal(centre, 5)), min(5, bptt), bptt + 40))
    return length
