"""The model directory: config.json, model.safetensors, tokenizer.json, metrics.jsonl and checkpoint/.

Nothing in a model directory is unpickled: the optimiser state in checkpoint/ is read with
torch.load(weights_only=True), which accepts only tensors and plain containers. A directory appears whole (built aside, then
renamed into place) and each later update replaces one file atomically, so a reader
never sees a half-written model. Which model `sample`, `score`, `perplexity` and `rescore` use without -m
is rnnlm.project's choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlm import locks
from rnnlm.errors import CorruptModel, ModelNotFound, UserError
from rnnlm.fileio import write_bytes_atomic, write_text_atomic
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.outputs import build_aside, read_marker, replaced_whole
from rnnlm.model_files import (CHECKPOINT, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_TENSORS, CONFIG, METRICS,
                               MODEL_DIRECTORY, MODEL_FORMAT, RETIRED_CHECKPOINT, TENSORBOARD, TOKENIZER, WEIGHTS)
from rnnlm.tokenizers import Tokenizer, load_tokenizer, save_tokenizer


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
    """Write a complete model directory, or replace the files of an older rnnlm model there (the
    caller holds outputs.claimed(directory); any other file there is left as it is)."""
    with build_aside(directory, MODEL_DIRECTORY) as building:
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

    path: Path  # the checkpoint directory read, for messages that name its files
    weights: dict[str, Any]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    tensors: dict[str, Any]  # random generator states and the recurrent state carried across batches
    note: str = ""  # where an older complete checkpoint lies, if one does

    def fault(self, name: str, problem: str) -> CorruptModel:
        """The error for a checkpoint file that does not fit the run it should continue."""
        return CorruptModel(f"{self.path / name}: {problem}{self.note}")


def save_checkpoint(directory: Path, model: RNNLanguageModel, optimizer_state: dict[str, Any], state: dict[str, Any],
                    tensors: dict[str, Any]) -> None:
    """Write checkpoint/ aside and swap it in, so a kill at any moment leaves the previous one whole."""
    import io

    import torch
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    with replaced_whole(directory / CHECKPOINT) as building:
        write_bytes_atomic(building / WEIGHTS, weights_bytes(model, {"step": str(state["step"])}))
        write_bytes_atomic(building / CHECKPOINT_OPTIMIZER, buffer.getvalue())
        write_bytes_atomic(building / CHECKPOINT_TENSORS, save({k: v.contiguous() for k, v in tensors.items()}))
        write_text_atomic(building / CHECKPOINT_STATE, json.dumps(state, indent=2) + "\n")


def load_checkpoint(directory: Path, device: str) -> Checkpoint:
    """The checkpoint of a model directory (or the one kept aside, if a kill came mid-swap), each file
    read and checked on its own so that a damaged one is named."""
    path = directory / CHECKPOINT
    if not path.is_dir():
        path = directory / RETIRED_CHECKPOINT  # the swap had moved it aside when the run was killed
    if not path.is_dir():
        raise UserError(f"{directory}: no checkpoint to resume from ({CHECKPOINT}/ is missing)")
    note = older_checkpoint_note(directory, path)
    return Checkpoint(path=path, weights=read_safetensors(path / WEIGHTS, note),
                      optimizer=_read_optimizer(path / CHECKPOINT_OPTIMIZER, device, note),
                      state=_read_state(path / CHECKPOINT_STATE, note),
                      tensors=read_safetensors(path / CHECKPOINT_TENSORS, note), note=note)


def older_checkpoint_note(directory: Path, used: Path) -> str:
    """Where another complete checkpoint lies, for messages about a damaged one."""
    other = directory / (RETIRED_CHECKPOINT if used.name == CHECKPOINT else CHECKPOINT)
    if all((other / name).is_file() for name in (WEIGHTS, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_TENSORS)):
        return f"; an older checkpoint is in {other}"
    return ""


def read_safetensors(path: Path, note: str = "") -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = _read_file(path, note)
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise CorruptModel(f"{path}: not a valid safetensors file ({_first_line(error)}){note}") from None


def _read_optimizer(path: Path, device: str, note: str) -> dict[str, Any]:
    """Optimiser state through torch.load(weights_only=True): tensors and plain containers, nothing unpickled."""
    import io

    import torch

    data = _read_file(path, note)
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as error:  # torch.load reports damage through many types (pickle, zip, EOF, runtime)
        raise CorruptModel(f"{path}: not a valid optimiser state ({_first_line(error)}){note}") from None
    if not isinstance(state, dict) or not {"state", "param_groups"} <= state.keys():
        raise CorruptModel(f"{path}: not an optimiser state (no 'state' and 'param_groups'){note}")
    return state


def _read_state(path: Path, note: str) -> dict[str, Any]:
    try:
        state = json.loads(_read_file(path, note))
    except ValueError as error:
        raise CorruptModel(f"{path}: not valid JSON ({_first_line(error)}){note}") from None
    if not isinstance(state, dict):
        raise CorruptModel(f"{path}: not a run state (a JSON object is expected){note}")
    return state


def _read_file(path: Path, note: str = "") -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptModel(f"{path}: is missing{note}") from None
    except IsADirectoryError:
        raise CorruptModel(f"{path}: is a directory, not a file{note}") from None
    if not data:
        raise CorruptModel(f"{path}: is empty{note}")
    return data


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The evaluation records, each line checked: a damaged line is named rather than skipped."""
    path = directory / METRICS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptModel(f"{path}: is missing") from None
    except UnicodeDecodeError:
        raise CorruptModel(f"{path}: is not UTF-8 text") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise CorruptModel(f"{path}: line {number} is not an evaluation record")
        records.append(record)
    return records


def read_model_config(directory: Path) -> dict[str, Any]:
    """config.json, checked to be an rnnlm model's in a version this rnnlm reads: without one the
    directory is no model (ModelNotFound); with a damaged one, a CorruptModel."""
    try:
        return read_marker(directory, MODEL_DIRECTORY)
    except UserError as error:
        raise (CorruptModel if (directory / CONFIG).exists() else ModelNotFound)(str(error)) from None


def read_model_tokenizer(path: Path) -> Tokenizer:
    """A model's tokenizer.json; a damaged one makes the model a CorruptModel."""
    try:
        return load_tokenizer(path)
    except UserError as error:
        raise CorruptModel(str(error)) from None


def model_config_from(config: dict[str, Any], directory: Path) -> ModelConfig:
    try:
        return ModelConfig(**config["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptModel(f"{directory / CONFIG}: the model settings are not valid ({_first_line(error)})") from None


def load_model(directory: Path | None, device: str = "cpu") -> LoadedModel:
    """Open a model directory (when `directory` is None, the one rnnlm.project.resolve_model chooses)."""
    import torch

    from rnnlm.project import resolve_model
    from rnnlm.sizing import check_fits, inference_bytes

    directory = resolve_model(directory).path
    if not directory.is_dir():
        raise ModelNotFound(f"{directory}: no such model directory")
    with locks.reading(directory):
        if not (directory / CONFIG).exists() and locks.writer_pid(directory):
            raise ModelNotFound(f"{directory}: not a model yet (training started there but has saved no model so far)")
        config = read_model_config(directory)
        model_config = model_config_from(config, directory)
        check_fits(inference_bytes(model_config), torch.device(device), f"the model in {directory}")
        model = RNNLanguageModel(model_config)
        load_weights(model, read_safetensors(directory / WEIGHTS), directory / WEIGHTS)
        tokenizer = read_model_tokenizer(directory / TOKENIZER)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CorruptModel(f"{directory / TOKENIZER}: has {tokenizer.vocab_size} tokens where the model has "
                        f"{model.config.vocab_size}")
    model.to(device).eval()
    return LoadedModel(directory, model, tokenizer, config)


def load_weights(model: RNNLanguageModel, tensors: dict[str, Any], path: Path, note: str = "") -> None:
    """Load weights, naming the file when their names or shapes do not fit the model."""
    missing = set(model.state_dict()) - set(tensors) - ({"decoder.weight"} if model.config.tie else set())
    unexpected = set(tensors) - set(model.state_dict())
    if missing or unexpected:
        raise CorruptModel(f"{path}: the weights do not fit the model settings (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}){note}")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise CorruptModel(f"{path}: the weights do not fit the model settings ({_shape_error(error)}){note}") from None


def _shape_error(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
    return lines[0].rstrip(".") if lines else _first_line(error)


def _first_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
