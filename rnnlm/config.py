"""Settings of training and sampling, with their defaults and checks.

Kept free of torch so that the command line can show these defaults without importing it.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field

from rnnlm.errors import InvalidOption

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "ntasgd")
SCHEDULES = ("cosine", "constant", "plateau", "step")
COMPUTE_DEVICES = ("cpu", "cuda", "mps")


def check_device_name(name: str) -> None:
    """Refuse a `--device` that names no device rnnlm computes on, whatever this machine has."""
    if name != "auto" and not re.fullmatch(rf"({'|'.join(COMPUTE_DEVICES)})(:\d+)?", name):
        raise InvalidOption(f"--device {name!r} is not a device rnnlm computes on; use auto, cpu, cuda or cuda:N")


@dataclass
class TrainConfig:
    bptt: int = 64
    variable_bptt: bool = False  # AWD-LSTM's randomly varied window lengths, the learning rate scaled to each
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-2
    weight_decay: float = 0.01
    clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    lr_decay: float = 0.5  # the step schedule: the factor applied at each epoch from decay_start on
    decay_start: int = 4  # the step schedule: epochs at the full rate
    nonmono: int = 5  # ntasgd: start averaging once the validation loss is worse than it was this many evaluations before
    epochs: int | None = None
    max_time: float | None = None  # seconds
    patience: int | None = 6  # evaluations without improvement before stopping early
    eval_interval: float | None = None  # seconds between evaluations; None plans about 20 per run
    eval_every: int | None = None  # steps between evaluations, instead of eval_interval
    checkpoint_interval: float = 600.0  # seconds between checkpoints
    checkpoint_every: int | None = None  # steps between checkpoints, instead of checkpoint_interval
    eval_batch_size: int = 32
    precision: str = "auto"
    device: str = "auto"
    random_seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.bptt >= 1, "--bptt must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.clip >= 0, "--clip must be 0 (off) or positive"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.max_time is None or self.max_time > 0, "--max-time must be positive"),
            (self.eval_every is None or self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (0 < self.lr_decay <= 1, "--lr-decay must be above 0 and at most 1"),
            (self.decay_start >= 0, "--decay-start must be 0 or more"),
            (self.nonmono >= 1, "--nonmono must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOption(message)
        check_device_name(self.device)


@dataclass(frozen=True)
class Preset:
    """A published configuration: model and training settings that a user's own options override."""

    name: str
    source: str
    published: str
    model: dict[str, object]  # keyed by `rnnlm train` option names
    training: dict[str, object]
    notes: str = ""


def _zaremba(name: str, size: int, dropout: float, init: float, clip: float, epochs: int, decay_start: int,
             lr_decay: float, published: str) -> Preset:
    return Preset(
        name=name, source="Zaremba, Sutskever and Vinyals (2014), Recurrent Neural Network Regularization, table 1",
        published=published,
        model=dict(cell="lstm", layers=2, embedding_size=size, hidden_size=size, dropout=dropout, tie=False,
                   init_range=init),
        training=dict(optimizer="sgd", lr=1.0, weight_decay=0.0, clip=clip, schedule="step", warmup_steps=0,
                      decay_start=decay_start, lr_decay=lr_decay, batch_size=20, bptt=35 if dropout else 20,
                      epochs=epochs, patience=0),
        notes="word-level PTB (rnnlm train ptb); the schedule is by epoch, so give no --max-time.",
    )


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    _zaremba("zaremba-small", 200, 0.0, 0.1, 5.0, 13, 4, 0.5, "PTB test perplexity 114.5 (valid 120.7)"),
    _zaremba("zaremba-medium", 650, 0.5, 0.05, 5.0, 39, 6, 1 / 1.2, "PTB test perplexity 82.7 (valid 86.2)"),
    _zaremba("zaremba-large", 1500, 0.65, 0.04, 10.0, 55, 14, 1 / 1.15, "PTB test perplexity 78.4 (valid 82.2)"),
    Preset(
        name="awd-lstm",
        source="Merity, Keskar and Socher (2017), Regularizing and Optimizing LSTM Language Models, "
               "and their PTB command (github.com/salesforce/awd-lstm-lm)",
        published="PTB test perplexity 58.8 before fine-tuning (valid 60.7)",
        model=dict(cell="lstm", layers=3, embedding_size=400, hidden_size=1150, tie=True, dropout=0.4,
                   input_dropout=0.4, layer_dropout=0.25, embedding_dropout=0.1, weight_dropout=0.5,
                   locked_dropout=True, ar=2.0, tar=1.0),
        training=dict(optimizer="ntasgd", lr=30.0, weight_decay=1.2e-6, clip=0.25, schedule="constant",
                      warmup_steps=0, batch_size=20, bptt=70, variable_bptt=True, epochs=500, patience=0, nonmono=5),
        notes="without the paper's fine-tuning stage; the top layer is 1150 wide and projected to 400 for the "
              "tied decoder, where AWD-LSTM makes its last layer 400 wide.",
    ),
)}


STRATEGIES = ("greedy", "sample", "beam")


def fresh_random_seed() -> int:
    """A random seed from the operating system; it is recorded, so any sample can be reproduced."""
    return secrets.randbits(63)


@dataclass
class SamplingConfig:
    strategy: str = "sample"
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    length: int = 500
    num_samples: int = 1
    random_seed: int = field(default_factory=fresh_random_seed)
    beam_size: int = 5
    length_penalty: float = 1.0  # beam search ranks by logprob / tokens ** length_penalty
    stop: tuple[str, ...] = ()
    until_eol: bool = False

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The texts that end a sample: --stop, and a newline with --until-eol."""
        return (*self.stop, "\n") if self.until_eol else self.stop

    def validate(self) -> None:
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.temperature >= 0 and math.isfinite(self.temperature),
             f"--temperature must be 0 or more and finite, got {self.temperature}"),
            (self.top_k >= 0, f"--top-k must be 0 (off) or more, got {self.top_k}"),
            (0 < self.top_p <= 1, f"--top-p must be above 0 and at most 1, got {self.top_p}"),
            (self.length >= 0, f"--length must be 0 or more, got {self.length}"),
            (self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}"),
            (self.beam_size >= 1, f"--beam-size must be at least 1, got {self.beam_size}"),
            (self.strategy != "beam" or self.num_samples <= self.beam_size,
             f"--num-samples ({self.num_samples}) must be at most --beam-size ({self.beam_size}) for beam search"),
            (math.isfinite(self.length_penalty), f"--length-penalty must be a finite number, got {self.length_penalty}"),
            (all(self.stop), "--stop must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOption(message)


@dataclass
class DynamicEvaluation:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, take one gradient
    step on it, so the model adapts to the text it is reading; `decay` pulls the weights back
    towards the trained ones so that the adaptation stays local."""

    lr: float = 0.3
    decay: float = 0.0
    segment: int = 50

    def validate(self) -> None:
        if not (self.lr > 0 and 0 <= self.decay < 1 and self.segment >= 1):
            raise InvalidOption("--dynamic-lr must be positive, --dynamic-decay in [0, 1), --dynamic-segment at least 1")
