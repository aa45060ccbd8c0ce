"""The files of a model directory, and where a new one goes by default.

Kept free of torch, so that `train` can claim its output directory, and fail at once when another
process holds it, before the seconds that importing torch takes.
"""

from __future__ import annotations

import time
from pathlib import Path

from rnnlm.outputs import DirectoryKind

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
MODEL_FORMAT = "rnnlm-model"
CHECKPOINT = "checkpoint"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_TENSORS = "rng.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
RETIRED_CHECKPOINT = f".{CHECKPOINT}.old"  # the previous checkpoint, kept while the new one is renamed in
TENSORBOARD = "tensorboard"
MODEL_DIRECTORY = DirectoryKind("model directory", CONFIG, MODEL_FORMAT, 1,
                                (CONFIG, WEIGHTS, TOKENIZER, METRICS, CHECKPOINT, RETIRED_CHECKPOINT, TENSORBOARD))


def default_output_dir(sources: list[str], cell: str) -> Path:
    """models/NAME-CELL-TIME under the current directory, NAME from the first input."""
    name = Path(sources[0].rstrip("/")).stem or "corpus"
    return Path("models") / f"{name}-{cell}-{time.strftime('%Y%m%d-%H%M%S')}"
