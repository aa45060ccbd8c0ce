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
COMPUTE_DEVICES = ("cpu", "cuda", "mps")  # each optionally with :N; or "auto"
STRATEGIES = ("greedy", "sample", "beam")


def check_device_name(name: str) -> None:
    """Refuse a `device` that names no device rnnlm computes on, whatever this machine has."""
    if name != "auto" and not re.fullmatch(rf"({'|'.join(COMPUTE_DEVICES)})(:\d+)?", name):
        raise InvalidOption("device", f"{name!r} is not a device rnnlm computes on; use auto, cpu, cuda or cuda:N")


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
            (self.bptt >= 1, "bptt", "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.lr > 0, "lr", "must be positive"),
            (self.clip >= 0, "clip", "must be 0 (off) or positive"),
            (self.epochs is None or self.epochs >= 1, "epochs", "must be at least 1"),
            (self.max_time is None or self.max_time > 0, "max_time", "must be positive"),
            (self.eval_interval is None or self.eval_interval > 0, "eval_interval", "must be positive"),
            (self.eval_every is None or self.eval_every >= 1, "eval_every", "must be at least 1"),
            (self.checkpoint_interval > 0, "checkpoint_interval", "must be positive"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}"),
            (0 < self.lr_decay <= 1, "lr_decay", "must be above 0 and at most 1"),
            (self.decay_start >= 0, "decay_start", "must be 0 or more"),
            (self.nonmono >= 1, "nonmono", "must be at least 1"),
        ]
        for ok, argument, problem in checks:
            if not ok:
                raise InvalidOption(argument, problem)
        check_device_name(self.device)


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
            (self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}"),
            (self.temperature >= 0 and math.isfinite(self.temperature), "temperature",
             f"must be 0 or more and finite, got {self.temperature}"),
            (self.top_k >= 0, "top_k", f"must be 0 (off) or more, got {self.top_k}"),
            (0 < self.top_p <= 1, "top_p", f"must be above 0 and at most 1, got {self.top_p}"),
            (self.length >= 0, "length", f"must be 0 or more, got {self.length}"),
            (self.num_samples >= 1, "num_samples", f"must be at least 1, got {self.num_samples}"),
            (self.beam_size >= 1, "beam_size", f"must be at least 1, got {self.beam_size}"),
            (self.strategy != "beam" or self.num_samples <= self.beam_size, "num_samples",
             f"({self.num_samples}) must be at most `beam_size` ({self.beam_size}) for beam search"),
            (math.isfinite(self.length_penalty), "length_penalty", f"must be a finite number, got {self.length_penalty}"),
            (all(self.stop), "stop", "must not be empty"),
        ]
        for ok, argument, problem in checks:
            if not ok:
                raise InvalidOption(argument, problem)


@dataclass
class DynamicEvaluation:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, take one gradient
    step on it, so the model adapts to the text it is reading; `decay` pulls the weights back
    towards the trained ones so that the adaptation stays local."""

    lr: float = 0.3
    decay: float = 0.0
    segment: int = 50

    def validate(self) -> None:
        for ok, argument, problem in ((self.lr > 0, "dynamic_lr", "must be positive"),
                                      (0 <= self.decay < 1, "dynamic_decay", "must be in [0, 1)"),
                                      (self.segment >= 1, "dynamic_segment", "must be at least 1")):
            if not ok:
                raise InvalidOption(argument, f"{problem}, got {getattr(self, argument.removeprefix('dynamic_'))}")
