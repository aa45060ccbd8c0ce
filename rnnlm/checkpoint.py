"""The model directory: config.json, model.safetensors, tokenizer.json, metrics.jsonl and checkpoint/.

Nothing in a model directory is unpickled: the optimiser state in checkpoint/ is read with
torch.load(weights_only=True), which accepts only tensors and plain containers. A directory appears whole (built aside, then
renamed into place) and each later update replaces one file atomically, so a reader
never sees a half-written model. The most recently trained model is remembered in the
user's data directory so that `sample`, `score` and `perplexity` need no -m.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlm.errors import UserError
from rnnlm.fileio import atomic_directory, write_bytes_atomic, write_text_atomic
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.tokenizers import Tokenizer, load_tokenizer, save_tokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
MODEL_FORMAT = "rnnlm-model"
CHECKPOINT = "checkpoint"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_TENSORS = "rng.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"


@dataclass
class LoadedModel:
    directory: Path
    model: RNNLanguageModel
    tokenizer: Tokenizer
    config: dict[str, Any]


def weights_bytes(model: RNNLanguageModel, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie:
        del tensors["decoder.weight"]  # the same tensor as embedding.weight
    return save(tensors, metadata=metadata)


def create_model_dir(directory: Path, model: RNNLanguageModel, tokenizer: Tokenizer, config: dict[str, Any],
                     weights_metadata: dict[str, str]) -> None:
    """Write a complete model directory in one step, replacing an older model directory there."""
    with atomic_directory(directory, (CONFIG,)) as building:
        write_text_atomic(building / CONFIG, json.dumps(config, indent=2) + "\n")
        save_tokenizer(tokenizer, building / TOKENIZER)
        write_bytes_atomic(building / WEIGHTS, weights_bytes(model, weights_metadata))
        (building / METRICS).touch()


def save_weights(directory: Path, model: RNNLanguageModel, metadata: dict[str, str]) -> None:
    write_bytes_atomic(directory / WEIGHTS, weights_bytes(model, metadata))


def append_metrics(directory: Path, record: dict[str, Any]) -> None:
    with (directory / METRICS).open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def keep_metrics_until(directory: Path, step: int) -> None:
    """Drop the records of evaluations after `step` (a resumed run repeats those steps)."""
    kept = [record for record in read_metrics(directory) if record["step"] <= step]
    write_text_atomic(directory / METRICS, "".join(json.dumps(record) + "\n" for record in kept))


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    weights: dict[str, Any]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    tensors: dict[str, Any]  # random generator states and the recurrent state carried across batches


def save_checkpoint(directory: Path, model: RNNLanguageModel, optimizer_state: dict[str, Any], state: dict[str, Any],
                    tensors: dict[str, Any]) -> None:
    """Write checkpoint/ aside and swap it in, so a kill at any moment leaves the previous one whole."""
    import io

    import torch
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    with atomic_directory(directory / CHECKPOINT, (CHECKPOINT_STATE,)) as building:
        write_bytes_atomic(building / WEIGHTS, weights_bytes(model, {"step": str(state["step"])}))
        write_bytes_atomic(building / CHECKPOINT_OPTIMIZER, buffer.getvalue())
        write_bytes_atomic(building / CHECKPOINT_TENSORS, save({k: v.contiguous() for k, v in tensors.items()}))
        write_text_atomic(building / CHECKPOINT_STATE, json.dumps(state, indent=2) + "\n")


def load_checkpoint(directory: Path, device: str) -> Checkpoint:
    """The checkpoint of a model directory (or the one kept aside, if a kill came mid-swap)."""
    import torch
    from safetensors.torch import load

    path = directory / CHECKPOINT
    if not (path / CHECKPOINT_STATE).exists():
        path = directory / f".{CHECKPOINT}.old"  # replace_directory had moved it aside when it was killed
    if not (path / CHECKPOINT_STATE).exists():
        raise UserError(f"{directory}: no checkpoint to resume from")
    try:
        return Checkpoint(
            weights=load((path / WEIGHTS).read_bytes()),
            optimizer=torch.load(path / CHECKPOINT_OPTIMIZER, map_location=device, weights_only=True),
            state=json.loads((path / CHECKPOINT_STATE).read_text(encoding="utf-8")),
            tensors=load((path / CHECKPOINT_TENSORS).read_bytes()),
        )
    except (OSError, ValueError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: corrupt checkpoint ({message})") from None


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_model(directory: Path | None, device: str = "cpu") -> LoadedModel:
    """Open a model directory (the latest trained model when `directory` is None)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = directory if directory is not None else latest_model()
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model directory")
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
            raise ValueError(f"format is not {MODEL_FORMAT!r}")
        model = RNNLanguageModel(ModelConfig(**config["model"]))
        tensors = load((directory / WEIGHTS).read_bytes())
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - ({"decoder.weight"} if model.config.tie else set()):
            raise ValueError(f"weights do not match the configuration (missing {missing}, unexpected {unexpected})")
    except FileNotFoundError as error:
        raise UserError(f"{directory}: not a model directory ({Path(error.filename).name} is missing)") from None
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{directory}: corrupt model directory ({message})") from None
    tokenizer = load_tokenizer(directory / TOKENIZER)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"{directory}: corrupt model directory (the tokenizer has {tokenizer.vocab_size} tokens, "
                        f"the model {model.config.vocab_size})")
    model.to(device).eval()
    return LoadedModel(directory, model, tokenizer, config)


def data_home() -> Path:
    base = os.environ.get("RNNLM_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "rnnlm"
    )
    return Path(base)


def remember_latest(directory: Path) -> None:
    write_text_atomic(data_home() / "latest", str(directory.resolve()) + "\n")


def latest_model() -> Path:
    pointer = data_home() / "latest"
    if not pointer.exists():
        raise UserError("no model given and none trained yet: run 'rnnlm train CORPUS' or pass -m/--model DIR")
    return Path(pointer.read_text(encoding="utf-8").strip())
