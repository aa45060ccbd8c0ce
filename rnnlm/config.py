"""Settings of training and sampling, with their defaults and checks.

Kept free of torch so that the command line can show these defaults without importing it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from rnnlm.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "plateau")


@dataclass
class TrainConfig:
    bptt: int = 64
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-2
    weight_decay: float = 0.01
    clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 100
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
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)



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
                raise UserError(message)


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
            raise UserError("--dynamic-lr must be positive, --dynamic-decay in [0, 1), --dynamic-segment at least 1")
