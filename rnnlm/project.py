"""Which model a command uses when none is named, and the pointer files that remember models.

The resolution order, decided here and nowhere else: `-m DIR`; then the RNNLM_MODEL environment
variable; then the current project's latest model, named by the nearest `models/latest` file
found from the working directory upwards (as git finds `.git`); then the user-wide latest,
`$RNNLM_HOME/latest`. So the project a command runs in decides, and runs elsewhere change nothing.

Training records a model in the `latest` pointer beside it when its directory lies in a folder
called `models` (the default output), and in the user-wide pointer, once the run has saved a
complete model (config and weights): a run killed before that changes no default. A pointer holds
the model's path as raw bytes, so any file name works: the directory's name alone in a project
pointer (the project can be moved), an absolute path in the user-wide one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rnnlm import locks
from rnnlm.errors import ModelNotFound
from rnnlm.fileio import write_bytes_atomic
from rnnlm.model_files import CONFIG, TOKENIZER, WEIGHTS

MODEL_VARIABLE = "RNNLM_MODEL"
PROJECT_FOLDER = "models"  # where `rnnlm train` puts models by default, and where a project's pointer lives
POINTER = "latest"

# How a model was chosen, as messages and `rnnlm models` say it.
GIVEN = "given with -m"
FROM_VARIABLE = f"named by {MODEL_VARIABLE}"
PROJECT_LATEST = "the project's latest"
USER_LATEST = "the user-wide latest"

NO_MODEL = "no model given and none trained yet: run 'rnnlm train CORPUS' or pass -m/--model DIR"


@dataclass(frozen=True)
class Resolved:
    """The model directory a command uses, and why that one."""

    path: Path
    reason: str  # GIVEN, FROM_VARIABLE, PROJECT_LATEST or USER_LATEST
    pointer: Path | None = None  # the pointer file read, if one was

    @property
    def named_by_user(self) -> bool:
        """Whether the command line named the model (then nothing needs saying about it)."""
        return self.reason == GIVEN


def data_home() -> Path:
    """The user's rnnlm data directory, which holds the user-wide pointer."""
    base = os.environ.get("RNNLM_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "rnnlm"
    )
    return Path(base)


def user_pointer() -> Path:
    return data_home() / POINTER


def project_pointer(start: Path | None = None) -> Path | None:
    """The nearest `models/latest` from `start` (the working directory) upwards, or None."""
    directory = Path(os.path.abspath(start or Path.cwd()))
    for folder in (directory, *directory.parents):
        pointer = folder / PROJECT_FOLDER / POINTER
        if pointer.is_file():
            return pointer
    return None


def models_folder(directory: Path | None = None) -> Path:
    """The folder of a project's model directories: for no `directory`, the current project's (the
    one holding the nearest pointer, else `./models`); else DIR/models, or DIR itself when it has none."""
    if directory is not None:
        return directory / PROJECT_FOLDER if (directory / PROJECT_FOLDER).is_dir() else directory
    pointer = project_pointer()
    return pointer.parent if pointer is not None else Path(PROJECT_FOLDER)


def resolve_model(explicit: Path | None = None, start: Path | None = None) -> Resolved:
    """The model a command uses, in the documented order (see the module's docstring).

    A variable or pointer that names no usable model is an error naming it, never skipped: a
    script's numbers must not silently come from another model."""
    if explicit is not None:
        return Resolved(Path(explicit), GIVEN)
    named = os.environ.get(MODEL_VARIABLE)
    if named:
        path = Path(named)
        problem = model_problem(path)
        if problem:
            raise ModelNotFound(f"{MODEL_VARIABLE} names {shown(path)}, which {problem}; set it to a model directory "
                            f"(see 'rnnlm models') or unset it, or pass -m DIR")
        return Resolved(path, FROM_VARIABLE)
    pointer = project_pointer(start)
    if pointer is not None:
        return Resolved(read_pointer(pointer), PROJECT_LATEST, pointer)
    pointer = user_pointer()
    if not pointer.is_file():
        raise ModelNotFound(NO_MODEL)
    return Resolved(read_pointer(pointer), USER_LATEST, pointer)


def read_pointer(pointer: Path) -> Path:
    """The model a pointer names, checked to be one; an error names the pointer and the way out."""
    try:
        path = pointer_target(pointer)
    except OSError as error:
        raise ModelNotFound(f"{shown(pointer)}: cannot be read ({error.strerror})") from None
    if path is None:
        raise ModelNotFound(f"{shown(pointer)}: is empty; pass -m DIR (see 'rnnlm models') or remove {shown(pointer)}")
    problem = model_problem(path)
    if problem:
        raise ModelNotFound(f"{shown(pointer)}: names {shown(path)}, which {problem}; pass -m DIR (see 'rnnlm models') "
                        f"or remove {shown(pointer)}")
    return path


def pointer_target(pointer: Path) -> Path | None:
    """The path a pointer holds, unchecked (None when it is empty); OSError when it cannot be read."""
    data = pointer.read_bytes()
    data = data[:-1] if data.endswith(b"\n") else data
    return pointer.parent / os.fsdecode(data) if data else None  # an absolute path stays as it is


def model_problem(path: Path) -> str | None:
    """Why `path` cannot be a model directory at a glance (absent, not a directory, a file of a
    model missing), or None; the full checks happen when the model is read."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a directory"
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (path / name).is_file():
            return f"is not a model directory (it has no {name})"
    return None


def record_latest(model: Path) -> None:
    """Make a model, once it is complete, its project's latest (when it lies in a `models` folder)
    and the user-wide latest."""
    model = Path(os.path.abspath(model))
    if model.parent.name == PROJECT_FOLDER and model.name != POINTER:  # a model named `latest` takes the pointer's place
        write_pointer(model.parent / POINTER, os.fsencode(model.name))
    write_pointer(user_pointer(), os.fsencode(model))


def write_pointer(pointer: Path, target: bytes) -> None:
    """Replace a pointer atomically, one writer at a time (two runs may finish together)."""
    with locks.exclusive(pointer, wait=True):
        write_bytes_atomic(pointer, target + b"\n")


def shown(path: Path) -> str:
    """A path for messages: relative to the working directory when inside it, and printable
    whatever bytes its name holds."""
    text = os.fspath(path)
    if os.path.isabs(text):
        relative = os.path.relpath(text)
        if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            text = relative
    return os.fsencode(text).decode("utf-8", "backslashreplace")
