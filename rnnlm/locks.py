"""One writer per directory, and readers that never see a directory half-updated.

Two kinds of advisory OS lock (flock), both released by the kernel when their process dies, so
a killed run never leaves a stale lock:

- The writer lock, `.NAME.lock` beside a directory (or pointer file) NAME, held for as long as a
  process writes there (a whole training run). A second writer fails at once, naming the pid of
  the first. The lock file is removed on release; a kill leaves an unlocked file that the next
  writer reuses.
- The publication lock, on the directory itself: held exclusively for the few milliseconds in
  which several files of an existing directory are replaced, and shared by readers while they
  read it, so that a reader sees either the old files or the new ones.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnlm.errors import BusyDirectory

_held: dict[Path, int] = {}  # writer locks this process holds, and how many blocks hold each
RETRY_S = 0.2  # a writer retries this long: a reader probing the lock (writer_pid) holds it for microseconds


def lock_path(target: Path) -> Path:
    """The writer lock file of a directory or pointer file: hidden, beside it."""
    return target.parent / f".{target.name}.lock"


@contextmanager
def exclusive(target: Path, wait: bool = False) -> Iterator[None]:
    """Hold the writer lock of `target` inside the block; BusyDirectory if another process holds it,
    unless `wait` says to wait for it.

    Re-entrant within a process, so that a command and the library function it calls can both hold it."""
    path = lock_path(target)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _acquire(path, target, wait)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)  # before the lock goes: a waiting writer then finds a fresh file
        os.close(descriptor)


def _acquire(path: Path, target: Path, wait: bool) -> int:
    """An open, locked descriptor of the lock file, which then names this process."""
    deadline = time.monotonic() + RETRY_S
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            pid = _read_pid(descriptor)
            os.close(descriptor)
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            raise BusyDirectory(target, pid) from None
        if _same_file(descriptor, path):  # else the holder removed it as we opened it: try the new one
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            return descriptor
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def writer_pid(target: Path) -> int | None:
    """The pid of the process writing `target` now, or None when no process is."""
    try:
        descriptor = os.open(lock_path(target), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(descriptor) or -1
    finally:
        os.close(descriptor)
    return None


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Read a directory's files inside the block while no publication replaces them."""
    with _directory_lock(directory, fcntl.LOCK_SH):
        yield


@contextmanager
def publishing(directory: Path) -> Iterator[None]:
    """Replace several files of a directory inside the block, unseen by readers."""
    with _directory_lock(directory, fcntl.LOCK_EX):
        yield


@contextmanager
def _directory_lock(directory: Path, mode: int) -> Iterator[None]:
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # absent (the caller reports that) or unreadable: nothing to coordinate with
        yield
        return
    try:
        fcntl.flock(descriptor, mode)
        yield
    finally:
        os.close(descriptor)
