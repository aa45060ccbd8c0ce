"""Training throughput: this project's training step, for each cell, against a plain PyTorch reference loop.

The reference is the pytorch/examples word_language_model style: fp32 nn.LSTM, an embedding,
a linear decoder, AdamW and gradient clipping. Every loop trains at the same shape on the same
data, in one process, for the same wall time: the reference, rnnlm's LSTM in fp32 and with
--precision auto, and the other cells of the registry (sru, mogrifier) with --precision auto.
The table gives tokens per second, the ratio to the reference, the validation loss reached in
that time, and the model's FLOP/s as a fraction of this machine's measured bf16 matrix-product
peak; a note gives the share of an SRU training step spent in its recurrence kernel.

    python benchmarks/train_throughput.py [--seconds 60] [--corpora ../shared/corpora] [--name train_throughput]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CORPORA, write_markdown  # noqa: E402
from rnnlm.cells import CELLS  # noqa: E402
from rnnlm.config import TrainConfig  # noqa: E402
from rnnlm.batching import stream_batches  # noqa: E402
from rnnlm.defaults import clustered_softmax_head  # noqa: E402
from rnnlm.model import ModelConfig, ModelOutput, RNNLanguageModel, State  # noqa: E402
from rnnlm.training import make_optimizer, resolve_precision, train_step  # noqa: E402

LR = 3e-3
CLIP = 1.0
DROPOUT = 0.1
VALID_TOKENS = 20_000  # validation is measured on this many tokens of the held-out text
ROUNDS = 6  # turns each loop takes
TORCH_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")  # torch's own layers, which the LSTM rows stand for


@dataclass
class Shape:
    name: str
    layers: int
    hidden: int
    embedding: int
    batch: int
    bptt: int
    tie: bool


@dataclass
class Data:
    train: np.ndarray
    valid: np.ndarray
    vocab_size: int


def tinyshakespeare(corpora: Path) -> Data:
    """Characters, the first 90% for training and the rest held out."""
    text = (corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    index = {char: i for i, char in enumerate(sorted(set(text)))}
    ids = np.array([index[char] for char in text], dtype=np.int64)
    cut = int(len(ids) * 0.9)
    return Data(ids[:cut], ids[cut:], len(index))


def ptb_words(corpora: Path) -> Data:
    """Mikolov's PTB words with an <eos> after each line (10,000 types), the most frequent first."""
    def words(name: str) -> list[str]:
        return [w for line in (corpora / "ptb" / name).read_text(encoding="utf-8").splitlines() for w in [*line.split(), "<eos>"]]

    train, valid = words("ptb.train.txt"), words("ptb.valid.txt")
    index = {word: i for i, (word, _) in enumerate(Counter(train).most_common())}  # by frequency, as rnnlm numbers them
    return Data(np.array([index[w] for w in train]), np.array([index[w] for w in valid]), len(index))


class Reference(nn.Module):
    """pytorch/examples' RNNModel: embedding, dropout, nn.LSTM, dropout, linear decoder (optionally tied)."""

    def __init__(self, vocab_size: int, shape: Shape) -> None:
        super().__init__()
        self.drop = nn.Dropout(DROPOUT)
        self.encoder = nn.Embedding(vocab_size, shape.embedding)
        self.rnn = nn.LSTM(shape.embedding, shape.hidden, shape.layers, dropout=DROPOUT, batch_first=True)
        self.decoder = nn.Linear(shape.hidden, vocab_size)
        if shape.tie:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # pytorch/examples' init_weights
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: Tensor, hidden: State | None = None) -> ModelOutput:
        """The project model's output type, so that one validation loop reads both models."""
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return ModelOutput(self.decoder(self.drop(output)), None, hidden, None)


def reference_trainer(data: Data, shape: Shape) -> tuple[nn.Module, Callable[[Tensor, Tensor, State | None], State]]:
    model = Reference(data.vocab_size, shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step(x: Tensor, y: Tensor, hidden: State | None) -> State:
        hidden = tuple(h.detach() for h in hidden) if hidden is not None else None
        output = model(x, hidden)
        logits, hidden = output.logits, output.state
        loss = F.cross_entropy(logits.reshape(-1, data.vocab_size), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        return hidden

    return model, step


def project_trainer(data: Data, shape: Shape, precision: str, cell: str = "lstm"
                    ) -> tuple[nn.Module, Callable[[Tensor, Tensor, State | None], State]]:
    head = clustered_softmax_head(data.train, data.vocab_size, shape.embedding)  # as `rnnlm train` chooses it
    config = ModelConfig(vocab_size=data.vocab_size, cell=cell, layers=shape.layers, embedding_size=shape.embedding,
                         hidden_size=shape.hidden, dropout=DROPOUT, tie=shape.tie, softmax_head=head or None)
    model = RNNLanguageModel(config)
    optimizer = make_optimizer(model, TrainConfig(lr=LR, clip=CLIP))
    amp_dtype = resolve_precision(precision, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(x: Tensor, y: Tensor, hidden: State | None) -> State:
        return train_step(model, optimizer, scaler, x, y, hidden, CLIP, amp_dtype)[2]

    return model, step


class TimedRun:
    """One training loop over its own endless batch stream, timed only while it steps."""

    def __init__(self, data: Data, shape: Shape, step: Callable[[Tensor, Tensor, State | None], State]) -> None:
        self.batches = (batch for _ in iter(int, 1) for batch in stream_batches(data.train, shape.batch, shape.bptt))
        self.step, self.hidden = step, None
        self.tokens, self.seconds = 0, 0.0
        self.advance()  # warm-up, untimed
        self.tokens = 0

    def advance(self) -> None:
        column, x, y = next(self.batches)
        self.hidden = self.step(torch.from_numpy(x), torch.from_numpy(y), self.hidden if column else None)
        self.tokens += y.size

    def train_for(self, seconds: float) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.advance()
        self.seconds += time.perf_counter() - started


@torch.inference_mode()
def validation_loss(model: nn.Module, data: Data, shape: Shape) -> float:
    """Nats per token on the start of the held-out text, state carried, in fp32, without dropout."""
    model.eval()
    total, count, hidden = 0.0, 0, None
    for _, x, y in stream_batches(data.valid[:VALID_TOKENS], 10, shape.bptt):
        output = model(torch.from_numpy(x), hidden)
        logits, hidden = output.logits, output.state
        total += F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten(), reduction="sum").item()
        count += y.size
    model.train()
    return total / count


def recurrent_multiply_adds(cell: str, inputs: int, hidden: int, memory: int) -> int:
    """Per token and layer: the LSTM's four gates from input and hidden state; the SRU's three
    projections of the input (four where the highway needs one); SRU++'s query (a quarter of the
    hidden size), keys and values of the queries, attention over `memory` positions and the output
    projection to the SRU's blocks; the Mogrifier's LSTM plus its rounds (default 5, alternately
    hidden-to-input and input-to-hidden, each inputs × hidden)."""
    blocks = 3 if inputs == hidden else 4
    if cell == "sru":
        return blocks * hidden * inputs
    if cell == "sru++":
        query = max(1, hidden // 4)
        return inputs * query + 2 * query * query + 2 * query * memory + query * blocks * hidden
    rounds = ModelConfig(vocab_size=1).mogrifier_rounds if cell == "mogrifier" else 0
    return 4 * hidden * (inputs + hidden) + rounds * inputs * hidden


def training_flops_per_token(vocab_size: int, shape: Shape, cell: str = "lstm") -> float:
    """Multiply-adds of the recurrent layers and the decoder, times 2 for FLOPs and 3 for forward and
    backward. SRU++ attends over --bptt positions, its default attention memory."""
    recurrent = sum(recurrent_multiply_adds(cell, shape.embedding if layer == 0 else shape.hidden, shape.hidden, shape.bptt)
                    for layer in range(shape.layers))
    return 6.0 * (recurrent + shape.hidden * vocab_size)


def recurrence_share(run: TimedRun, steps: int = 5) -> float:
    """The fraction of an SRU loop's step time spent in its recurrence kernel, forward and backward,
    from torch's profiler (the kernel's autograd function and its backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        for _ in range(steps):
            run.advance()
        elapsed = time.perf_counter() - started
    kernel_us = sum(event.self_cpu_time_total for event in profile.key_averages() if "FusedRecurrence" in event.key)
    return kernel_us / 1e6 / elapsed


def bf16_peak_flops(size: int = 2048, trials: int = 10) -> float:
    """The fastest of several timed bf16 matrix products (the best case under other load)."""
    a, b = torch.randn(size, size, dtype=torch.bfloat16), torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    fastest = math.inf
    for _ in range(trials):
        started = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - started)
    return 2 * size**3 / fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time of each training run")
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--name", default="train_throughput", help="results/NAME.md is written")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = bf16_peak_flops()
    cases = [
        (Shape("char 2x512", 2, 512, 128, 64, 128, False), tinyshakespeare(args.corpora)),
        (Shape("PTB medium 2x650", 2, 650, 650, 20, 35, True), ptb_words(args.corpora)),
    ]
    table = [["shape", "loop", "tokens/s", "× reference", f"val loss after {args.seconds:.0f}s (nats/token)",
              "model GFLOP/s", "of bf16 peak"]]
    shares = []
    for shape, data in cases:
        loops = {"reference (fp32 nn.LSTM)": reference_trainer(data, shape),
                 "rnnlm, --precision fp32": project_trainer(data, shape, "fp32"),
                 "rnnlm, --precision auto": project_trainer(data, shape, "auto"),
                 **{f"rnnlm --cell {cell}, --precision auto": project_trainer(data, shape, "auto", cell)
                    for cell in CELLS if cell not in TORCH_CELLS}}
        runs = {name: TimedRun(data, shape, step) for name, (_, step) in loops.items()}
        for _ in range(ROUNDS):  # taking turns, so that other load on the machine falls on every loop alike
            for run in runs.values():
                run.train_for(args.seconds / ROUNDS)
        reference_speed = runs["reference (fp32 nn.LSTM)"].tokens / runs["reference (fp32 nn.LSTM)"].seconds
        for name, run in runs.items():
            flops = training_flops_per_token(data.vocab_size, shape, name.split("--cell ")[-1].split(",")[0]
                                             if "--cell" in name else "lstm")
            speed = run.tokens / run.seconds
            loss = validation_loss(loops[name][0], data, shape)
            row = [shape.name, name, f"{speed:,.0f}", f"{speed / reference_speed:.2f}", f"{loss:.3f}",
                   f"{speed * flops / 1e9:.1f}", f"{speed * flops / peak:.1%}"]
            print(" | ".join(row), flush=True)
            table.append(row)
        shares.append(f"{shape.name}: {recurrence_share(runs['rnnlm --cell sru, --precision auto']):.0%}")
    notes = [
        f"Share of the SRU training step (--precision auto) in its fused recurrence kernel, forward and backward "
        f"(torch profiler, 5 steps): {'; '.join(shares)}.",
        f"Measured bf16 matrix-product peak: {peak / 1e9:,.0f} GFLOP/s (fastest of ten 2048² bf16 matmuls, {torch.get_num_threads()} threads).",
        "Model FLOPs per training token: 6 × (recurrent multiply-adds + decoder multiply-adds); embeddings, "
        "dropout and the optimiser are not counted.",
        f"Both loops: AdamW at a constant lr {LR}, clipping at {CLIP}, dropout {DROPOUT}, the same batches "
        "(stateful TBPTT rows); validation on the first "
        f"{VALID_TOKENS:,} held-out tokens in fp32. 'auto' is bf16 autocast on this CPU.",
        "rnnlm's model is the one `rnnlm train` builds for the shape: on PTB that includes the clustered softmax "
        "(`--softmax-head`, chosen from the token counts), whose model FLOPs are fewer than the single softmax's "
        "counted in the GFLOP/s column.",
    ]
    write_markdown(args.name, "Training throughput against a plain PyTorch loop", table, notes)


if __name__ == "__main__":
    main()
