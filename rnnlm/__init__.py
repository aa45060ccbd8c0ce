"""rnnlm: train recurrent language models on plain text, then sample, score and measure them.

The names below are loaded on first use (PEP 562), so that `import rnnlm` and `rnnlm --help`
stay fast: torch and numpy are imported only when a model is loaded or trained. See
docs/python.md for a guide.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load": "rnnlm.language_model",
    "LanguageModel": "rnnlm.language_model",
    "State": "rnnlm.language_model",
    "PerplexityResult": "rnnlm.language_model",
    "train": "rnnlm.workflows",
    "prepare": "rnnlm.workflows",
    "RnnlmError": "rnnlm.errors",
    "UserError": "rnnlm.errors",
    "ModelNotFound": "rnnlm.errors",
    "CorruptModel": "rnnlm.errors",
    "BusyDirectory": "rnnlm.errors",
    "InvalidOption": "rnnlm.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rnnlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
