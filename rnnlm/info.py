"""Everything a model directory tells about its model, read from its JSON files and the safetensors
header alone: `rnnlm info` prints it. Torch is never imported, so the answer is immediate whatever
the model's size.

A model written by an older rnnlm lacks some records; those fields are None (null in JSON) and the
rest is still told. A directory that is not a model, or whose files are damaged, is an error.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rnnlm import project, units
from rnnlm.errors import UserError
from rnnlm.model_files import CHECKPOINT, CHECKPOINT_STATE, CONFIG, METRICS, MODEL_DIRECTORY, WEIGHTS
from rnnlm.outputs import read_marker

MAX_HEADER_BYTES = 100_000_000  # a safetensors header past this is damage, not a model


@dataclass(frozen=True)
class ModelDetails:
    """A model directory's settings and results; the JSON keys of `rnnlm info --json`."""

    path: str  # absolute
    cell: str | None
    direction: str | None  # "forward" or "backward" (right to left, rnnlm.direction)
    layers: int | None
    embedding_size: int | None
    hidden_size: int | None
    vocab_size: int | None  # tokens, end-of-line and unknown included
    softmax_head: int | None  # tokens in the first level of a clustered softmax; None: one softmax
    tie: bool | None  # embedding and decoder weights shared
    parameters: int  # counted from the weights file
    tokenizer: str | None
    corpus_sources: list[str] | None  # the files the prepared corpus was made from
    corpus_directory: str | None  # the prepared corpus trained on
    train_tokens: int | None  # tokens include one end-of-line token per line
    valid_tokens: int | None
    test_tokens: int | None
    max_time_s: float | None  # the budget; None: no time limit
    epochs: int | None  # the budget; None: no epoch limit
    training_s: float | None  # training time used, in seconds
    steps: int | None  # optimiser steps done
    epochs_completed: int | None
    best_step: int | None  # the evaluation with the lowest validation loss
    val_nats_per_token: float | None  # its loss: mean negative natural log-probability per token
    val_ppl: float | None  # perplexity per token
    val_word_ppl: float | None  # perplexity per word (whitespace words plus one per line end)
    val_bpc: float | None  # bits per character (code points, newlines included)
    precision: str | None  # as asked for: auto, fp32, bf16, fp16
    autocast: str | None  # what training ran in: float32 ("fp32"), bfloat16, float16
    created_at: str | None  # ISO 8601, local time: when the model directory was first written
    rnnlm_version: str | None  # the rnnlm that trained it, when it recorded it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text_lines(self) -> list[str]:
        """Aligned 'key  value' lines for people, units spelt out."""
        rows = [("model", project.shown(Path(self.path))),
                ("cell", _known(self.cell) + (f", {self.direction}" if self.direction else "")),
                ("layers", _known(self.layers)), ("embedding size", _known(self.embedding_size)),
                ("hidden size", _known(self.hidden_size)),
                ("vocabulary", f"{_count(self.vocab_size)} tokens ({_known(self.tokenizer)} tokenizer)"),
                ("softmax", self._softmax_text()), ("parameters", _count(self.parameters)),
                ("corpus", ", ".join(self.corpus_sources) if self.corpus_sources else "unknown"),
                ("prepared corpus", _known(self.corpus_directory)),
                ("tokens", f"train {_count(self.train_tokens)}, valid {_count(self.valid_tokens)}, "
                           f"test {_count(self.test_tokens)}"),
                ("budget", f"{_plural(self.epochs, 'epoch') if self.epochs else 'no epoch limit'}, "
                           f"{f'{self.max_time_s:g} s' if self.max_time_s else 'no time limit'}"),
                ("used", f"{_seconds(self.training_s)}, {_plural(self.steps, 'step')}, "
                         f"{_plural(self.epochs_completed, 'epoch')} completed"),
                ("best validation", self._validation_text()),
                ("precision", f"{_known(self.precision)} ({_known(self.autocast)} used)"),
                ("created", _known(self.created_at)), ("rnnlm version", _known(self.rnnlm_version))]
        width = max(len(key) for key, _ in rows)
        return [f"{key:<{width}}  {value}" for key, value in rows]

    def _softmax_text(self) -> str:
        layout = "one softmax" if not self.softmax_head else f"clustered, head of {self.softmax_head:,} tokens"
        tied = "unknown" if self.tie is None else ("tied" if self.tie else "not tied")
        return f"{layout}; embedding and decoder {tied}"

    def _validation_text(self) -> str:
        """The model's natural unit first (rnnlm.units), as every other validation figure is told."""
        if self.val_nats_per_token is None:
            return "unknown"
        per_unit = {
            units.WORD_PERPLEXITY: None if self.val_word_ppl is None else f"perplexity {self.val_word_ppl:.2f} per word",
            units.BITS_PER_CHARACTER: None if self.val_bpc is None else f"{self.val_bpc:.3f} bits/char"}
        natural = [per_unit.pop(unit) for unit in units.natural_units(self.tokenizer or "")]
        parts = [*natural, f"{self.val_nats_per_token:.4f} nats/token", f"perplexity {self.val_ppl:.2f} per token",
                 *per_unit.values()]
        return ", ".join(part for part in parts if part) + f" (step {_known(self.best_step)})"


def _known(value: object) -> str:
    return "unknown" if value is None else str(value)


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _plural(value: int | None, noun: str) -> str:
    return f"{_count(value)} {noun}{'' if value == 1 else 's'}"


def _seconds(value: float | None) -> str:
    return "unknown time" if value is None else f"{value:.1f} s"


def model_details(directory: Path | str) -> ModelDetails:
    """What `directory` holds; a UserError when it is not an rnnlm model or a file of it is damaged."""
    path = Path(directory)
    problem = project.model_problem(path)
    if problem is not None:
        raise UserError(f"{project.shown(path)}: {problem}")
    config = read_marker(path, MODEL_DIRECTORY)
    model, training = _section(config, "model"), _section(config, "training")
    corpus = _section(config, "corpus")
    progress = _progress(path)
    return ModelDetails(
        path=os.path.abspath(path), cell=model.get("cell"), direction=_direction(model.get("reverse")),
        layers=model.get("layers"), embedding_size=model.get("embedding_size"), hidden_size=model.get("hidden_size"),
        vocab_size=model.get("vocab_size"), softmax_head=model.get("softmax_head"), tie=model.get("tie"),
        parameters=weight_count(path / WEIGHTS), tokenizer=corpus.get("tokenizer"),
        corpus_sources=_sources(corpus.get("directory")), corpus_directory=corpus.get("directory"),
        train_tokens=_split_tokens(corpus, "train"), valid_tokens=_split_tokens(corpus, "valid"),
        test_tokens=_split_tokens(corpus, "test"), max_time_s=training.get("max_time"), epochs=training.get("epochs"),
        **progress, **_best_validation(path / METRICS), precision=training.get("precision"),
        autocast=training.get("autocast"), created_at=_created_at(path / CONFIG),
        rnnlm_version=config.get("rnnlm_version"))


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name)
    return section if isinstance(section, dict) else {}


def _direction(reverse: object) -> str | None:
    return None if reverse is None else ("backward" if reverse else "forward")


def _split_tokens(corpus: dict[str, Any], split: str) -> int | None:
    counts = _section(corpus, "splits").get(split)
    return counts.get("tokens") if isinstance(counts, dict) else None


def _sources(directory: str | None) -> list[str] | None:
    """The files the prepared corpus was made from (its meta.json), None when it is gone."""
    if not directory:
        return None
    try:
        sources = json.loads((Path(directory) / "meta.json").read_bytes())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(source) for source in sources] if isinstance(sources, list) else None


def weight_count(path: Path) -> int:
    """The numbers stored in a safetensors file, from its header's tensor shapes (a tied decoder is
    stored once, as the model holds it once)."""
    try:
        with path.open("rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(stream.read(length))
        return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{project.shown(path)}: not a valid safetensors file ({error})") from None


def _progress(directory: Path) -> dict[str, Any]:
    """Training time, steps and whole epochs done, from the last checkpoint (which a finished run
    writes last); else the time and steps of the last evaluation."""
    try:
        state = json.loads((directory / CHECKPOINT / CHECKPOINT_STATE).read_bytes())
        return {"training_s": float(state["elapsed_s"]), "steps": int(state["step"]),
                "epochs_completed": int(state["epoch"]) - 1}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    records = _metrics(directory / METRICS)
    last = records[-1] if records else {}
    return {"training_s": last.get("elapsed_s"), "steps": last.get("step"), "epochs_completed": None}


def _best_validation(path: Path) -> dict[str, Any]:
    """The figures of the evaluation with the lowest validation loss (the weights saved)."""
    evaluations = [r for r in _metrics(path) if isinstance(r.get("val_loss"), (int, float))]
    if not evaluations:
        return {"best_step": None, "val_nats_per_token": None, "val_ppl": None, "val_word_ppl": None, "val_bpc": None}
    best = min(evaluations, key=lambda record: record["val_loss"])
    return {"best_step": best.get("step"), "val_nats_per_token": best["val_loss"],
            "val_ppl": math.exp(min(best["val_loss"], 700.0)), "val_word_ppl": best.get("val_word_ppl"),
            "val_bpc": best.get("val_bpc")}


def _metrics(path: Path) -> list[dict[str, Any]]:
    """The evaluation records; none for a model without the file, an error naming a damaged line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{project.shown(path)}: cannot be read ({error})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line) if line.strip() else {}
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{project.shown(path)}: line {number} is not an evaluation record")
        records.append(record)
    return [record for record in records if record]


def _created_at(config: Path) -> str:
    """When the model directory was written: config.json is written once, with the first model."""
    return datetime.fromtimestamp(config.stat().st_mtime).astimezone().isoformat(timespec="seconds")
