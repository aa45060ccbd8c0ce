"""The exceptions rnnlm raises for bad input, which the command line turns into a one-line message.

`RnnlmError` is the base a Python caller catches; `UserError` is bad input (a missing file, an
invalid value), and its subclasses say which kind, so that a script can react (train a model when
none is found, wait for a busy directory). Every UserError is exit code 1 on the command line,
except InvalidOption (2, bad usage).
"""

from __future__ import annotations

from pathlib import Path


class RnnlmError(Exception):
    """Every error rnnlm raises on purpose (as opposed to a bug)."""


class UserError(RnnlmError):
    """Bad input from the user: a missing file, a corrupt model, an invalid option value."""


class ModelNotFound(UserError):
    """No model where one was asked for: none trained yet, or a path (given, or named by
    RNNLM_MODEL or a `latest` pointer) that is not a model directory."""


class CorruptModel(UserError):
    """A model directory whose files are damaged or do not fit together (invalid JSON or
    safetensors, weights that do not fit the settings, a damaged checkpoint)."""


class BusyDirectory(UserError):
    """Another process is writing the directory (or pointer file) this one wants to write."""

    def __init__(self, target: Path, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid and pid > 0 else ""
        super().__init__(f"{target} is being written by another rnnlm process{holder}")
        self.target = target
        self.pid = pid


class InvalidOption(UserError):
    """An argument value out of its range, or arguments that do not go together: decided from the
    arguments alone, before anything is read, so the command line exits 2 (bad usage).

    `argument` is the library's name for it (batch_size), which the command line shows as its
    option (--batch-size); None where no single argument is at fault. The problem may name other
    arguments in backquotes (`beam_size`), shown the same way. str() reads "batch_size: must be ...".
    """

    def __init__(self, argument: str | None, problem: str | None = None) -> None:
        if problem is None:  # one text: a problem of several arguments together
            argument, problem = None, argument or ""
        super().__init__(f"{argument}: {problem}" if argument else problem)
        self.argument = argument
        self.problem = problem
