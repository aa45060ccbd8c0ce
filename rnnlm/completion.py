"""The model directories a shell offers after -m/--model and for a MODEL argument.

Asked for at every press of Tab, so it reads directory listings and pointer files only (never
torch, never a model's files): the current project's models folder, the models the project's
and the user-wide pointers name, and, as the user types a path, the model directories in the
folder typed so far.
"""

from __future__ import annotations

import os
from pathlib import Path

from rnnlm import project


def model_directories(incomplete: str) -> list[str]:
    """The usable model directories whose path, as the user would type it, starts with `incomplete`."""
    folder = project.models_folder()
    known = _children(folder)
    for pointer in (folder / project.POINTER, project.user_pointer()):
        try:
            target = project.pointer_target(pointer)
        except OSError:
            continue
        if target is not None:
            known.append(target)
    offered = {project.shown(path) for path in known if project.model_problem(path) is None}
    typed_folder = os.path.dirname(incomplete)
    if typed_folder:  # spelt as typed: './models/x' stays './models/x'
        offered |= {os.path.join(typed_folder, entry.name) for entry in _children(Path(typed_folder))
                    if project.model_problem(entry) is None}
    return sorted(name for name in offered if name.startswith(incomplete))


def _children(folder: Path) -> list[Path]:
    try:
        return [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    except OSError:
        return []
