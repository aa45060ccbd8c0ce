"""Model quality under a wall-clock budget: `rnnlm train` against the classic reference loop.

The reference is pytorch/examples' word_language_model recipe, written out here: a 2×200
tied LSTM, dropout 0.2, plain SGD at lr 20 divided by 4 whenever an epoch ends without a
better validation loss, gradient clipping at 0.25, bptt 35, batch 20, fp32. Its clock stops
while it is evaluated, so it gets every second of its budget for training; `rnnlm train`
counts its own validations against its budget. Both curves (validation perplexity or bits per
character against training wall time) go into one PNG beside the results table.

`ptb.py` and `shakespeare.py` give the corpora and the commands; this module runs them.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import RESULTS, write_markdown

REFERENCE = dict(layers=2, size=200, dropout=0.2, lr=20.0, clip=0.25, bptt=35, batch=20, anneal=4.0)


@dataclass
class Corpus:
    """Token ids for the reference loop, and what `rnnlm train` reads."""

    name: str
    unit: str  # "ppl" (per word) or "bpc"
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int
    sources: list[str]  # what `rnnlm train` is given to read: a catalogue name or files, and their options
    shown_sources: str  # the same, as the command shown in the results
    test_file: Path

    def figure(self, nats_per_token: float) -> float:
        """Word-level perplexity, or bits per character for a character corpus (one token per character)."""
        return math.exp(nats_per_token) if self.unit == "ppl" else nats_per_token / math.log(2)


@dataclass
class Curve:
    label: str
    minutes: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class ReferenceModel(nn.Module):
    """Embedding, dropout, a 2-layer nn.LSTM, dropout, and a decoder tied to the embedding."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        size, p = REFERENCE["size"], REFERENCE["dropout"]
        self.drop = nn.Dropout(p)
        self.encoder = nn.Embedding(vocab_size, size)
        self.rnn = nn.LSTM(size, size, REFERENCE["layers"], dropout=p)
        self.decoder = nn.Linear(size, vocab_size)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: Tensor, hidden: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def batchify(ids: np.ndarray, rows: int) -> Tensor:
    """The stream as `rows` columns, time-major (pytorch/examples' layout)."""
    length = len(ids) // rows
    return torch.from_numpy(ids[: length * rows].astype(np.int64)).view(rows, length).t().contiguous()


@torch.inference_mode()
def evaluate(model: ReferenceModel, data: Tensor) -> float:
    """Nats per token over a batchified split, state carried."""
    model.eval()
    total, count, hidden = 0.0, 0, None
    for start in range(0, data.shape[0] - 1, REFERENCE["bptt"]):
        x, y = data[start : start + REFERENCE["bptt"]], data[start + 1 : start + 1 + REFERENCE["bptt"]]
        x = x[: len(y)]
        logits, hidden = model(x, hidden)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def run_reference(corpus: Corpus, minutes: float, marks: list[float], eval_seconds: float) -> tuple[Curve, dict[float, float]]:
    """Train the reference for `minutes` of training time; its validation curve, and its test figure at each mark."""
    torch.manual_seed(1111)
    model = ReferenceModel(corpus.vocab_size)
    train, valid, test = (batchify(ids, rows) for ids, rows in
                          ((corpus.train, REFERENCE["batch"]), (corpus.valid, 10), (corpus.test, 10)))
    lr, best_epoch_loss = REFERENCE["lr"], math.inf
    curve, at_marks = Curve("reference: pytorch/examples recipe, 2×200 tied, SGD lr 20, fp32"), {}
    trained, next_eval, pending = 0.0, eval_seconds, sorted(marks)
    while pending:
        hidden = None
        for start in range(0, train.shape[0] - 1, REFERENCE["bptt"]):
            x, y = train[start : start + REFERENCE["bptt"]], train[start + 1 : start + 1 + REFERENCE["bptt"]]
            x = x[: len(y)]
            began = time.perf_counter()
            hidden = tuple(h.detach() for h in hidden) if hidden is not None else None
            logits, hidden = model(x, hidden)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), REFERENCE["clip"])
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(parameter.grad, alpha=-lr)
            trained += time.perf_counter() - began
            if trained >= next_eval:
                curve.minutes.append(trained / 60)
                curve.values.append(corpus.figure(evaluate(model, valid)))
                print(f"reference {trained / 60:5.1f} min  valid {curve.values[-1]:.3f}", flush=True)
                next_eval += eval_seconds
            while pending and trained >= pending[0] * 60:
                at_marks[pending.pop(0)] = corpus.figure(evaluate(model, test))
            if not pending:
                break
        epoch_loss = evaluate(model, valid)
        if epoch_loss < best_epoch_loss:
            best_epoch_loss = epoch_loss
        else:
            lr /= REFERENCE["anneal"]
    return curve, at_marks


def run_rnnlm(corpus: Corpus, minutes: float, options: list[str], workdir: Path) -> tuple[Curve, float, str]:
    """`rnnlm train` with a budget of `minutes`, then `rnnlm perplexity` on the test file."""
    model_dir = workdir / f"{corpus.name}-{minutes:g}m"
    train_command = [sys.executable, "-m", "rnnlm", "train", *corpus.sources, *options, "--max-time", f"{minutes:g}m",
                     "-o", str(model_dir)]
    subprocess.run(train_command, check=True)
    measured = subprocess.run([sys.executable, "-m", "rnnlm", "perplexity", str(corpus.test_file), "-m",
                               str(model_dir), "--json"], check=True, capture_output=True, text=True)
    report = json.loads(measured.stdout)
    figure = report["word_ppl"] if corpus.unit == "ppl" else report["bpc"]
    curve = Curve(f"rnnlm train, {minutes:g}-minute budget (command in the table)")
    for record in (json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines() if line):
        curve.minutes.append(record["elapsed_s"] / 60)
        curve.values.append(math.exp(record["val_loss"]) if corpus.unit == "ppl" else record["val_bpc"])
    return curve, figure, " ".join(["rnnlm train", corpus.shown_sources, *map(shlex.quote, options), f"--max-time {minutes:g}m"])


def plot(name: str, title: str, unit: str, curves: list[Curve], ceiling: float | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for curve in curves:
        axes.plot(curve.minutes, curve.values, marker=".", label=curve.label)
    axes.set_xlabel("training wall time (minutes)")
    axes.set_ylabel("validation perplexity (per word)" if unit == "ppl" else "validation bits per character")
    if ceiling is not None:
        axes.set_ylim(top=ceiling)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    path = RESULTS / f"{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def benchmark(corpus: Corpus, budgets: list[float], options: list[str], workdir: Path, title: str,
              ceiling: float | None) -> None:
    """Run the reference to the largest budget and `rnnlm train` once per budget; write NAME.md and NAME.png."""
    torch.set_num_threads(torch.get_num_threads())
    reference_curve, reference_marks = run_reference(corpus, max(budgets), budgets, eval_seconds=30.0)
    unit = "test perplexity (per word)" if corpus.unit == "ppl" else "bits per character on the held-out text"
    table = [["budget", "rnnlm train", "reference loop", "rnnlm command"]]
    curves = [reference_curve]
    for minutes in budgets:
        curve, figure, command = run_rnnlm(corpus, minutes, options, workdir)
        curves.append(curve)
        table.append([f"{minutes:g} min", f"{figure:.2f}", f"{reference_marks[minutes]:.2f}", f"`{command}`"])
        print(" | ".join(table[-1]), flush=True)
    image = plot(corpus.name, title, corpus.unit, curves, ceiling)
    notes = [
        f"Figures: {unit}, read as one stream, as the published figures are.",
        "Reference loop (this file's ReferenceModel): pytorch/examples' word_language_model recipe, "
        "2-layer 200-unit LSTM with tied weights, dropout 0.2, SGD lr 20 (divided by 4 after an epoch without "
        "a better validation loss), clipping 0.25, bptt 35, batch 20, fp32; its clock stops while it is evaluated.",
        "rnnlm train counts its validations inside its budget.",
        f"Validation curves against training wall time: ![curves]({image.name})",
    ]
    write_markdown(corpus.name, title, table, notes)
