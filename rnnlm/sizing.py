"""How much memory a model needs, known before any of it is allocated.

A mistyped size (`--hidden-size 1000000`, `--layers 100`) must be refused with an estimate,
not discovered by the operating system's out-of-memory killer after minutes of swapping.
The model is built on torch's meta device, which allocates nothing, to count its parameters
exactly for any cell; the rest of the estimate is a deliberate over-approximation. What a run
really took is measured afterwards (`peak_rss_mb`), so that a user can plan the next one.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import torch

from rnnlm.cells import cell_named
from rnnlm.errors import UserError
from rnnlm.model import ModelConfig, RNNLanguageModel, count_parameters

GIB = 1 << 30
MIB = 1 << 20
TRAINING_BYTES_PER_PARAMETER = 32  # fp32 weights, gradients, two optimiser moments, the rollback snapshot and its copy


def parameter_count(config: ModelConfig) -> int:
    with torch.device("meta"):
        return count_parameters(RNNLanguageModel(config))


def saved_floats_per_token(config: ModelConfig, window: int) -> int:
    """What one training token keeps for the backward pass: each layer's (its cell says how much),
    the embedding's (the vector and its dropout mask) and the decoder's (logits, log-probabilities,
    their gradient)."""
    decoder_width = config.softmax_head + 1 if config.softmax_head else config.vocab_size
    layer = cell_named(config.cell).layer_class()
    return config.layers * layer.saved_floats(config, window) + 2 * config.embedding_size + 3 * decoder_width


def training_bytes(config: ModelConfig, rows: int, window: int) -> int:
    """About the memory of training with `rows` streams of `window` tokens (an upper estimate)."""
    return parameter_count(config) * TRAINING_BYTES_PER_PARAMETER + 4 * rows * window * saved_floats_per_token(config, window)


def inference_bytes(config: ModelConfig) -> int:
    return parameter_count(config) * 4


def device_memory(device: torch.device) -> int:
    """The memory of the device: a GPU's own, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Refuse work whose memory would not fit on the device, with the estimate."""
    available = device_memory(device)
    if needed > available:
        where = "this GPU" if device.type == "cuda" else "this machine"
        raise UserError(f"{what} needs about {needed / GIB:,.1f} GiB; {where} has {available / GIB:,.0f} GiB")


def peak_rss_mb() -> float:
    """The largest resident set of this process so far, in MiB.

    Linux's VmHWM, the process's own high-water mark; getrusage's ru_maxrss elsewhere (KiB, bytes
    on macOS). On Linux ru_maxrss also keeps the peak of the process that forked this one (a
    training started from an 800 MiB notebook would report 800 MiB), so it comes second.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024 / MIB
