"""Output directories: rnnlm writes only where it may, one process at a time, and never loses a file.

A directory rnnlm writes (a model, a prepared corpus) is recognised by its marker: a JSON file
naming the directory's format and version. rnnlm writes only into a directory that is absent,
empty, or marked as its own, and there it replaces only the entries it writes itself: a file a
user put beside them is never changed, moved or deleted. Anything else is refused, naming the
foreign file, before any work starts.

A new directory is built aside and renamed into place whole. An existing one gets the new
entries one rename each, the marker last, under the publication lock that readers share
(rnnlm.locks), so a reader sees the old set or the new one, never a mixture. The writer lock,
held from the check to the end of the run, keeps a second process out.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rnnlm import __version__, locks
from rnnlm.errors import UserError

TEMPORARY = ".*.tmp"  # the pattern of every temporary name rnnlm makes (fileio.atomic_output, build_aside)


@dataclass(frozen=True)
class DirectoryKind:
    """What rnnlm writes in one kind of directory, and how it recognises its own."""

    description: str  # "model directory"
    marker: str  # the JSON file whose "format" and "version" say that rnnlm wrote the directory
    format: str
    version: int  # the newest format version this rnnlm reads and writes
    entries: tuple[str, ...]  # the names (glob patterns) of what rnnlm writes there

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*self.entries, TEMPORARY))


def normalised(path: Path) -> Path:
    """`path` without '.' and '..' parts, made absolute where it would otherwise have no name
    ('.', '..'), since a directory is written beside itself first."""
    target = Path(os.path.normpath(path))
    if target.name in ("", ".", ".."):
        target = Path(os.path.abspath(path))
    if not target.name:
        raise UserError(f"{path}: cannot write into the root directory; choose a directory inside it")
    return target


def read_marker(directory: Path, kind: DirectoryKind) -> dict:
    """The marker's content, checked to be this kind's format in a version this rnnlm reads."""
    path = directory / kind.marker
    try:
        marker = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: is missing; {directory} is not an rnnlm {kind.description}") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not valid JSON ({_first_line(error)})") from None
    if not isinstance(marker, dict) or marker.get("format") != kind.format:
        raise UserError(f"{path}: not written by rnnlm (no \"format\": \"{kind.format}\")")
    version = marker.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path}: \"version\" must be a positive whole number, got {version!r}")
    if version > kind.version:
        raise UserError(f"{path}: written by a newer rnnlm (format version {version}); "
                        f"rnnlm {__version__} reads version {kind.version} at most")
    return marker


def check_output(target: Path, kind: DirectoryKind) -> None:
    """Refuse, naming the first foreign entry, a target that is not absent, empty or rnnlm's own."""
    if not target.exists():
        if target.is_symlink():
            raise UserError(f"{target}: is a broken symbolic link; choose another output")
        return
    if not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory")
    try:
        names = sorted(os.listdir(target))
    except OSError as error:
        raise UserError(f"{target}: cannot be read ({error.strerror})") from None
    if not names:
        return
    if kind.marker not in names:
        foreign = [name for name in names if not kind.owns(name)]
        if not foreign:
            raise UserError(f"{target}: {kind.marker} is missing, so this is not a complete rnnlm "
                            f"{kind.description}; move it or choose another output")
        raise UserError(f"{target}: holds {_quoted(foreign[0])}, which rnnlm did not write; "
                        f"rnnlm writes only into a new, empty or rnnlm {kind.description}")
    read_marker(target, kind)
    for name in names:
        if kind.owns(name) and not _plain(target / name, name == kind.marker):
            raise UserError(f"{target / name}: is not what rnnlm writes there (a link or a different kind of file); "
                            "move it or choose another output")


def _plain(path: Path, must_be_file: bool) -> bool:
    """A regular file (or, where allowed, a directory), not a link. An entry gone since the directory
    was listed passes: it was a writer's temporary, renamed into place meanwhile."""
    if not os.path.lexists(path):
        return True
    return not path.is_symlink() and (path.is_file() or (not must_be_file and path.is_dir()))


def _quoted(name: str) -> str:
    return repr(name) if not name.isprintable() else f"'{name}'"


@contextmanager
def claimed(path: Path, kind: DirectoryKind, wait: bool = False) -> Iterator[Path]:
    """Hold `path` for writing inside the block: checked, locked against other rnnlm processes (or,
    with `wait`, after waiting for them), and cleared of the temporaries that a killed run left.
    Yields the normalised path."""
    target = normalised(path)
    check_output(target, kind)
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.exclusive(target, wait))
        except (PermissionError, FileExistsError, NotADirectoryError) as error:
            raise UserError(f"{path}: cannot write here ({error.strerror}: {error.filename})") from None
        check_output(target, kind)  # again: another process may have written it while we waited
        _remove_stale_temporaries(target, kind)
        yield target


def _remove_stale_temporaries(target: Path, kind: DirectoryKind) -> None:
    """Temporaries of a killed writer, which only a holder of the writer lock may remove."""
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        remove_tree(stale)
    if target.is_dir():
        for stale in target.glob(TEMPORARY):
            remove_tree(stale)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextmanager
def build_aside(target: Path, kind: DirectoryKind) -> Iterator[Path]:
    """A temporary directory beside `target` whose entries replace rnnlm's in `target` once the block
    completes (the caller holds `claimed(target)`); on failure nothing in `target` changes."""
    temporary = _temporary_directory(target)
    try:
        yield temporary
        publish(temporary, target, kind)
    finally:
        remove_tree(temporary)


@contextmanager
def replaced_whole(target: Path) -> Iterator[Path]:
    """A temporary directory that replaces the directory `target` (all of it rnnlm's, such as a model's
    checkpoint/) in one rename once the block completes."""
    temporary = _temporary_directory(target)
    try:
        yield temporary
        replace_entry(temporary, target)
    finally:
        remove_tree(temporary)


def _temporary_directory(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        os.chmod(temporary, 0o777 & ~umask())
    except FileExistsError as error:  # mkdir met a file where a directory belongs
        raise UserError(f"{target}: cannot write here ({error.filename} is not a directory)") from None
    except OSError as error:
        raise UserError(f"{target}: cannot write here ({error.strerror})") from None
    return temporary


def publish(source: Path, target: Path, kind: DirectoryKind) -> None:
    """Make `source`'s entries `target`'s: a rename of the whole directory where there is none yet,
    else one rename per entry under the publication lock, the marker last, rnnlm's stale entries
    removed, every other file left as it is."""
    if not target.exists():
        os.rename(source, target)
        return
    check_output(target, kind)
    new = sorted(os.listdir(source), key=lambda name: name == kind.marker)
    with locks.publishing(target):
        for name in os.listdir(target):
            if kind.owns(name) and name not in new and name != kind.marker:
                remove_tree(target / name)
        for name in new:
            replace_entry(source / name, target / name)


def replace_entry(source: Path, target: Path) -> None:
    """Rename a file or directory onto `target`; an old directory there is kept aside until the new
    one is in place, so a kill at any moment leaves one of the two whole."""
    if source.is_dir() and target.is_dir():
        retired = target.with_name(f".{target.name}.old")
        remove_tree(retired)
        os.rename(target, retired)
        os.rename(source, target)
        remove_tree(retired)
    else:
        os.replace(source, target)


def umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _first_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
