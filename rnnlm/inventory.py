"""What a model directory holds, told without loading its weights: for the line naming the model
a command uses, and for `rnnlm models`, which lists a project's models beside the one used here.

Reading only: a directory that is not a usable model is described with the reason, never
changed, and a model still being trained (its writer lock held) is described as such.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rnnlm import locks, project, units
from rnnlm.durations import spoken_duration
from rnnlm.errors import UserError
from rnnlm.model_files import METRICS, MODEL_DIRECTORY
from rnnlm.outputs import read_marker


@dataclass
class ModelInfo:
    """One model directory as `rnnlm models` lists it; the figures are None where unknown."""

    path: Path
    problem: str | None = None  # why it is not a usable model; None when it is one
    writer_pid: int | None = None  # the `rnnlm train` writing it now
    corpus: str | None = None
    tokenizer: str | None = None
    cell: str | None = None
    layers: int | None = None
    hidden_size: int | None = None
    parameters: int | None = None
    val_nats_per_token: float | None = None  # the best validation loss
    val_word_ppl: float | None = None
    val_bpc: float | None = None
    training_s: float | None = None
    trained_at: datetime | None = None  # the last evaluation written
    roles: list[str] = field(default_factory=list)  # the pointers that name it: project.PROJECT_LATEST, ...
    default: str | None = None  # why it is the model used here, when it is

    def size(self) -> str:
        return f"{self.cell} {self.layers}×{self.hidden_size}" if self.cell else "-"

    def validation(self) -> str:
        """The best validation figure in the model's natural unit (rnnlm.units)."""
        text = units.natural_text(self.tokenizer or "", self.val_word_ppl, self.val_bpc)
        if text is None and self.val_nats_per_token is not None:
            text = f"{self.val_nats_per_token:.4f} nats/token"
        return text or "-"

    def summary(self) -> str:
        """'char, lstm 2×256, 1.2M parameters, validation 1.520 bits/char, trained 4m12s on 2026-12-02'."""
        parts = [self.tokenizer or "?", self.size(), f"{short_count(self.parameters)} parameters",
                 f"validation {self.validation()}"]
        if self.training_s is not None and self.trained_at is not None:
            parts.append(f"trained {spoken_duration(self.training_s)} on {self.trained_at:%Y-%m-%d}")
        if self.writer_pid:
            parts.append(f"still being trained{f' (pid {self.writer_pid})' if self.writer_pid > 0 else ''}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"path": os.path.abspath(self.path), "valid": self.problem is None,
                "problem": self.problem, "being_trained": bool(self.writer_pid),
                "writer_pid": self.writer_pid if self.writer_pid and self.writer_pid > 0 else None,
                "corpus": self.corpus, "tokenizer": self.tokenizer, "cell": self.cell, "layers": self.layers,
                "hidden_size": self.hidden_size, "parameters": self.parameters,
                "val_nats_per_token": self.val_nats_per_token, "val_word_ppl": self.val_word_ppl,
                "val_bpc": self.val_bpc,
                "natural_units": list(units.natural_units(self.tokenizer)) if self.tokenizer else [],
                "training_s": self.training_s,
                "trained_at": self.trained_at.isoformat(timespec="seconds") if self.trained_at else None,
                "roles": self.roles, "default": self.default is not None, "default_reason": self.default}


def short_count(count: int | None) -> str:
    """1234567 → '1.2M', as people say parameter counts."""
    if count is None:
        return "?"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def describe(path: Path) -> ModelInfo:
    """The model directory at `path` as far as its JSON files tell, or why it is not a model."""
    info = ModelInfo(path, writer_pid=locks.writer_pid(path))
    info.problem = project.model_problem(path)
    if info.problem is not None:
        if info.writer_pid and path.is_dir():
            info.problem = "training started here and has saved no model yet"
        return info
    try:
        config = read_marker(path, MODEL_DIRECTORY)
    except UserError as error:
        info.problem = str(error)
        return info
    _read_settings(info, config)
    _read_metrics(info, path / METRICS)
    return info


def _read_settings(info: ModelInfo, config: dict[str, Any]) -> None:
    model, corpus = config.get("model") or {}, config.get("corpus") or {}
    info.cell, info.layers, info.hidden_size = model.get("cell"), model.get("layers"), model.get("hidden_size")
    info.parameters = config.get("parameters")
    info.tokenizer = corpus.get("tokenizer")
    info.corpus = corpus_name(corpus.get("directory"))


def corpus_name(directory: str | None) -> str | None:
    """The files a prepared corpus was made from (its meta.json), else its directory."""
    if not directory:
        return None
    try:
        sources = json.loads((Path(directory) / "meta.json").read_bytes())["sources"]
        return ", ".join(project.shown(Path(Path(source).name)) for source in sources)
    except (OSError, ValueError, KeyError, TypeError):
        return project.shown(Path(directory))


def _read_metrics(info: ModelInfo, path: Path) -> None:
    """The best validation record and the training time so far; a damaged log only leaves them unknown."""
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        info.trained_at = datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    except (OSError, ValueError):
        return
    evaluations = [r for r in records if isinstance(r, dict) and isinstance(r.get("val_loss"), (int, float))]
    if not evaluations:
        return
    best = min(evaluations, key=lambda record: record["val_loss"])
    info.val_nats_per_token, info.val_bpc = best["val_loss"], best.get("val_bpc")
    info.val_word_ppl = best.get("val_word_ppl")
    info.training_s = evaluations[-1].get("elapsed_s")


def project_inventory(folder: Path, chosen: project.Resolved | None) -> list[ModelInfo]:
    """The model directories in `folder` (hidden entries and files skipped) by name, then the models
    the pointers name elsewhere; the one `chosen` for commands here is marked."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    listed = [describe(entry) for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    for role, pointer in ((project.PROJECT_LATEST, folder / project.POINTER),
                          (project.USER_LATEST, project.user_pointer())):
        try:
            target = project.pointer_target(pointer)
        except OSError:
            continue
        if target is not None:
            _entry(listed, target).roles.append(role)
    if chosen is not None:
        _entry(listed, chosen.path).default = chosen.reason
    return listed


def _entry(listed: list[ModelInfo], path: Path) -> ModelInfo:
    """The listed entry for `path`, added at the end when it lies elsewhere."""
    for info in listed:
        if os.path.abspath(info.path) == os.path.abspath(path):
            return info
    listed.append(describe(path))
    return listed[-1]


def notice(chosen: project.Resolved) -> str:
    """The stderr line naming a model the user did not name, and why it is the one used."""
    return f"rnnlm: model {project.shown(chosen.path)} ({describe(chosen.path).summary()}; {chosen.reason})"
