"""Reading text input safely and writing files atomically.

Input is read in bounded chunks that end on line boundaries, so nothing holds a whole
corpus in memory; invalid UTF-8 is reported with its byte offset and line number.
Every file the tool writes goes to a temporary name first and is renamed into place.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from rnnlm.errors import UserError
from rnnlm.outputs import umask

CHUNK_BYTES = 1 << 22
ENCODING_ERRORS = ("strict", "replace")


def check_readable_file(path: Path) -> None:
    """Turn the usual ways a path can be unusable into one clear message."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied")


@contextmanager
def open_binary_input(source: str) -> Iterator[BinaryIO]:
    """Open a path, or standard input for '-', for reading bytes."""
    if source == "-":
        yield sys.stdin.buffer
        return
    path = Path(source)
    check_readable_file(path)
    with path.open("rb") as stream:
        yield stream


def iter_text_chunks(
    stream: BinaryIO, name: str, errors: str = "strict", chunk_bytes: int | None = None, by_line: bool = False
) -> Iterator[str]:
    """Decoded text in pieces of about `chunk_bytes` (or single lines), each ending after a newline
    (but the last).

    With errors="strict", invalid UTF-8 raises a UserError naming the byte offset and line,
    after yielding the complete lines before it.
    """
    offset = 0
    line_number = 1
    pending: list[bytes] = []  # the start of a line still being read (kept as blocks: no quadratic copying)
    while True:
        block = stream.readline() if by_line else stream.read(chunk_bytes or CHUNK_BYTES)
        if block:
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # a very long line: keep reading until it ends
                pending.append(block)
                continue
            data = b"".join([*pending, block[:cut]])
            pending = [block[cut:]] if cut < len(block) else []
        else:
            data = b"".join(pending)
            pending = []
            if not data:
                return
        try:
            text = data.decode("utf-8", errors=errors)
        except UnicodeDecodeError as error:
            good = data.rfind(b"\n", 0, error.start) + 1
            if good:
                yield data[:good].decode("utf-8")
            bad_line = line_number + data.count(b"\n", 0, error.start)
            raise UserError(
                f"{name}: invalid UTF-8 at byte {offset + error.start} (line {bad_line}); "
                "use --encoding-errors replace to substitute U+FFFD"
            ) from None
        offset += len(data)
        line_number += data.count(b"\n")
        yield text
        if not block:
            return


def split_lines(text: str) -> list[str]:
    """The lines of a text chunk, without their newlines (a final newline ends the last line)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def iter_line_batches(chunks: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of at most `size` lines from text chunks that end on line boundaries.

    If reading fails (invalid UTF-8, say), the lines read before the failure come out first.
    """
    pending: list[str] = []
    try:
        for text in chunks:
            pending.extend(split_lines(text))
            while len(pending) >= size:
                yield pending[:size]
                del pending[:size]
    except UserError:
        if pending:
            yield pending
        raise
    if pending:
        yield pending


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path, "wb") as stream:
        stream.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A file object whose content appears at `path` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
