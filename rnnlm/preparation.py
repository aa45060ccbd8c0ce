"""Preparing a corpus: split it, build the tokenizer, and write token ids to memory-mapped files
(rnnlm.prepared_corpus describes the directory it writes).

Nothing holds the corpus in memory: every pass streams it in chunks that end on line
boundaries. A byte scan counts the lines first. Then char, bpe and unigram read the
training text once to build the tokenizer and the whole text once more to encode it;
word does both in a single pass (numbering words as they come, renumbering once the
counts give the vocabulary), which halves its work. Subword encoding of a large corpus
is shared out to worker processes, chunks kept in order.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rnnlm.errors import InvalidOption, UserError
from rnnlm.fileio import ENCODING_ERRORS, check_readable_file, write_text_atomic
from rnnlm.outputs import build_aside, claimed
from rnnlm.prepared_corpus import (
    PREPARED_DIRECTORY,
    PREPARED_MARKER,
    SPLITS,
    PreparedCorpus,
    TextCounts,
    is_prepared_directory,
    load_prepared,
    prepared_cache_dir,
    sample_path,
)
from rnnlm.sources import count_lines, cut_at_lines, display_name, expand_sources, iter_source_text, split_line_ranges
from rnnlm.tokenizers import (
    SUBWORD_KINDS,
    TOKENIZER_KINDS,
    Tokenizer,
    TokenizerSettings,
    WordNumbering,
    WordTokenizer,
    save_tokenizer,
    train_tokenizer,
)
from rnnlm.workers import parallel_map, worker_count


PARALLEL_MIN_BYTES = 64 << 20  # smaller corpora are tokenized in this process: workers take a second to start

RENUMBER_BLOCK = 1 << 20  # token ids renumbered at a time

SUBWORD_SAMPLE_BYTES = 32 << 20  # about this much training text is sampled for bpe/unigram (bounds memory)



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
            raise InvalidOption("tokenizer", f"must be one of {', '.join(TOKENIZER_KINDS)}, got {self.tokenizer!r}")
        checks = [
            (self.encoding_errors in ENCODING_ERRORS, "encoding_errors", "must be 'strict' or 'replace'"),
            (self.vocab_size is None or self.tokenizer != "char", "vocab_size",
             "does not apply to `tokenizer` char (its vocabulary is the training characters)"),
            (self.vocab_size is None or self.vocab_size >= 3, "vocab_size", f"must be at least 3, got {self.vocab_size}"),
            (self.min_count >= 1, "min_count", f"must be at least 1, got {self.min_count}"),
            (self.min_count == 1 or self.tokenizer == "word", "min_count", "applies to `tokenizer` word only"),
            (0 <= self.subword_alpha <= 1, "subword_alpha", f"must be from 0 to 1, got {self.subword_alpha}"),
            (not self.subword_alpha or self.tokenizer in SUBWORD_KINDS, "subword_alpha", "needs `tokenizer` bpe or unigram"),
            (self.subword_samples >= 1, "subword_samples", f"must be at least 1, got {self.subword_samples}"),
            (0 <= self.valid_fraction < 1, "valid_fraction", f"must be at least 0 and below 1, got {self.valid_fraction}"),
            (0 <= self.test_fraction < 1, "test_fraction", f"must be at least 0 and below 1, got {self.test_fraction}"),
            (self.valid_fraction + self.test_fraction < 1, None, "`valid_fraction` and `test_fraction` leave nothing to train on"),
        ]
        for ok, argument, problem in checks:
            if not ok:
                raise InvalidOption(argument, problem)

    @property
    def sample_count(self) -> int:
        """Sampled encodings of the training split to write (0 without subword regularisation)."""
        return self.subword_samples if self.subword_alpha else 0

    def cache_fields(self) -> dict[str, Any]:
        return dict(self.__dict__)



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
    names = [display_name(s) for s in sources]
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



def _encode_splits(chunks: Iterator[tuple[str, str]], tokenizer: Tokenizer, options: PrepareOptions,
                   directory: Path, mapper: Callable[..., Iterator[Any]]) -> tuple[dict[str, TextCounts], list[int]]:
    """Write each split's ids (and the training samples) as they come; their counts."""
    samples = options.sample_count
    counts = {name: TextCounts() for name in SPLITS}
    sample_tokens = [0] * samples
    encode = partial(encode_chunk, tokenizer, id_dtype(tokenizer), options.subword_alpha, samples)
    with ExitStack() as stack:
        files = {name: stack.enter_context((directory / f"{name}.bin").open("wb")) for name in SPLITS}
        sample_files = [stack.enter_context(sample_path(directory, k).open("wb")) for k in range(1, samples + 1)]
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
