"""Reading a corpus's sources: files, directories of files or standard input, as text chunks
that end on line boundaries, counted in lines, and cut into training, validation and test
line ranges. Nothing holds the corpus in memory: every pass streams it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from rnnlm.errors import UserError
from rnnlm.fileio import iter_text_chunks, open_binary_input


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
            for text in iter_text_chunks(reader, display_name(source), errors):  # type: ignore[arg-type]
                if previous:
                    yield previous
                previous = text
        if previous:
            yield previous if previous.endswith("\n") else previous + "\n"



def display_name(source: str) -> str:
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
