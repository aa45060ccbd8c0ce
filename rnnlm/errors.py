"""The exceptions the command line turns into a one-line message and exit code 1."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a missing file, a corrupt model, an invalid option value."""


class DirectoryBusy(UserError):
    """Another process is writing the directory (or pointer file) this one wants to write."""

    def __init__(self, target: Path, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid and pid > 0 else ""
        super().__init__(f"{target} is being written by another rnnlm process{holder}")
        self.target = target
        self.pid = pid


class InvalidOption(UserError):
    """An option value out of its range, or options that do not go together: decided from the
    command line alone, before anything is read, so the command line exits 2 (bad usage)."""
