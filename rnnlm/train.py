"""The training loop: teacher forcing over stateful TBPTT batches, validation, and the best model kept.

Reads top to bottom: settings, the precision and device choice, the learning-rate
schedule, then `train`, which runs steps until the epochs or the wall-clock budget are
spent, evaluates every so often, and keeps the weights with the lowest validation loss.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from rnnlm import checkpoint
from rnnlm.config import TrainConfig
from rnnlm.data import PreparedCorpus, stream_batches
from rnnlm.errors import UserError
from rnnlm.model import ModelConfig, RNNLanguageModel, count_parameters, detach_state
from rnnlm.scoring import stream_nll


@dataclass
class TrainResult:
    directory: Path
    steps: int
    tokens: int
    elapsed_s: float
    best_val_loss: float
    best_val_bpc: float
    stopped_because: str
    history: list[dict[str, Any]] = field(default_factory=list)


class Reporter(Protocol):
    """What the training loop tells whoever is watching (the CLI draws a progress display)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, info: dict[str, Any]) -> None: ...
    def evaluation(self, record: dict[str, Any]) -> None: ...
    def finish(self, result: TrainResult) -> None: ...


class SilentReporter:
    def start(self, info: dict[str, Any]) -> None: pass
    def step(self, info: dict[str, Any]) -> None: pass
    def evaluation(self, record: dict[str, Any]) -> None: pass
    def finish(self, result: TrainResult) -> None: pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device torch knows (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU here")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--precision` (None: plain fp32). Master weights stay fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if name == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then constant or a cosine decay to a tenth over the planned run."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "constant":
        return config.lr * warmup
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * warmup * decay


def make_optimizer(model: RNNLanguageModel, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def train(corpus: PreparedCorpus, output: Path, model_config: ModelConfig, config: TrainConfig,
          reporter: Reporter | None = None) -> TrainResult:
    config.validate()
    reporter = reporter or SilentReporter()
    torch.manual_seed(config.random_seed)
    np.random.seed(config.random_seed)
    device = resolve_device(config.device)
    amp_dtype = resolve_precision(config.precision, device)
    train_tokens, valid_tokens = corpus.splits["train"], corpus.splits["valid"]
    if len(train_tokens) < 2:
        raise UserError("the training split has too few tokens to train on")
    if len(valid_tokens) < 2:
        valid_tokens = train_tokens  # nothing held out: select and report on the training text
    valid_counts = corpus.counts("valid") if len(corpus.splits["valid"]) >= 2 else corpus.counts("train")
    tokens_per_char = valid_counts.tokens / max(1, valid_counts.chars)

    model = RNNLanguageModel(model_config).to(device)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    steps_per_epoch = math.ceil(((len(train_tokens) - 1) // config.batch_size) / config.bptt)
    planned_steps = steps_per_epoch * config.epochs if config.epochs else None
    eval_interval = config.eval_interval or (max(5.0, config.max_time / 20) if config.max_time else 30.0)

    settings = {
        "format": checkpoint.MODEL_FORMAT,
        "version": 1,
        "model": model_config.to_dict(),
        "training": asdict(config) | {"device": str(device), "autocast": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"},
        "corpus": {"directory": str(corpus.directory), "tokenizer": corpus.tokenizer.kind,
                   "splits": corpus.meta["splits"]},
        "parameters": count_parameters(model),
    }
    reporter.start({"parameters": settings["parameters"], "device": str(device), "precision": settings["training"]["autocast"],
                    "steps_per_epoch": steps_per_epoch, "planned_steps": planned_steps, "max_time": config.max_time,
                    "output": str(output), "train_tokens": len(train_tokens)})

    started = time.perf_counter()
    step = tokens_seen = 0
    best_val_loss = math.inf
    evaluations_since_best = 0
    saved = False
    history: list[dict[str, Any]] = []
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, started
    last_eval = started
    stopped_because = "epochs"

    def progress() -> float:
        parts = []
        if planned_steps:
            parts.append(step / planned_steps)
        if config.max_time:
            parts.append((time.perf_counter() - started) / config.max_time)
        return max(parts) if parts else 0.0

    def evaluate_and_keep_best(epoch: int) -> bool:
        """Validate, log a metrics record, save the weights if they are the best; True to stop."""
        nonlocal best_val_loss, evaluations_since_best, saved, window_loss, window_steps, window_tokens, window_start, last_eval
        model.eval()
        with autocast(device, amp_dtype):
            val_nll, val_count = stream_nll(model, valid_tokens, rows=config.eval_batch_size, window=256,
                                            start_token=corpus.tokenizer.eol_id)
        model.train()
        val_loss = val_nll / max(1, val_count)
        now = time.perf_counter()
        record = {
            "step": step, "epoch": epoch, "tokens": tokens_seen,
            "train_loss": window_loss / window_steps if window_steps else None,
            "val_loss": val_loss, "val_bpc": val_loss * tokens_per_char / math.log(2),
            "val_ppl": math.exp(min(val_loss, 700)),
            "lr": optimizer.param_groups[0]["lr"],
            "tokens_per_s": window_tokens / max(1e-9, now - window_start),
            "elapsed_s": now - started,
        }
        improved = val_loss < best_val_loss or not saved
        if improved:
            best_val_loss = val_loss
            evaluations_since_best = 0
            metadata = {"step": str(step), "val_loss": repr(val_loss)}
            if saved:
                checkpoint.save_weights(output, model, metadata)
            else:
                checkpoint.create_model_dir(output, model, corpus.tokenizer, settings, metadata)
                checkpoint.remember_latest(output)
                saved = True
        else:
            evaluations_since_best += 1
        record["best"] = improved
        checkpoint.append_metrics(output, record)
        history.append(record)
        reporter.evaluation(record)
        window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        last_eval = window_start
        return config.patience is not None and evaluations_since_best >= config.patience

    model.train()
    epoch = 0
    try:
        while config.epochs is None or epoch < config.epochs:
            epoch += 1
            state = None
            for _, inputs, targets in stream_batches(corpus.train_tokens(epoch), config.batch_size, config.bptt):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step, progress())
                x = torch.from_numpy(inputs).to(device, non_blocking=True)
                y = torch.from_numpy(targets).to(device, non_blocking=True)
                with autocast(device, amp_dtype):
                    logits, state = model(x, state)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    state = None  # skip this step and restart the recurrent state
                    continue
                if config.clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                scaler.step(optimizer)
                scaler.update()
                state = detach_state(state)
                step += 1
                tokens_seen += y.numel()
                window_loss += loss_value
                window_steps += 1
                window_tokens += y.numel()
                now = time.perf_counter()
                reporter.step({"step": step, "epoch": epoch, "loss": loss_value, "progress": progress(),
                               "tokens_per_s": window_tokens / max(1e-9, now - window_start),
                               "elapsed_s": now - started})
                if config.max_time and now - started >= config.max_time:
                    stopped_because = "max-time"
                    break
                if now - last_eval >= eval_interval and evaluate_and_keep_best(epoch):
                    stopped_because = "patience"
                    break
            if stopped_because != "epochs":
                break
            if window_steps and evaluate_and_keep_best(epoch):
                stopped_because = "patience"
                break
        if stopped_because == "max-time" and window_steps:
            evaluate_and_keep_best(epoch)
    except KeyboardInterrupt:
        if not saved:
            checkpoint.create_model_dir(output, model, corpus.tokenizer, settings, {"step": str(step)})
            checkpoint.remember_latest(output)
        raise
    if not saved:
        evaluate_and_keep_best(epoch)
    result = TrainResult(output, step, tokens_seen, time.perf_counter() - started, best_val_loss,
                         best_val_loss * tokens_per_char / math.log(2), stopped_because, history)
    reporter.finish(result)
    return result


def default_model_config(corpus: PreparedCorpus, *, cell: str = "lstm", layers: int = 2, embedding_size: int | None = None,
                         hidden_size: int | None = None, dropout: float | None = None, tie: bool | None = None) -> ModelConfig:
    """A model sized to the corpus where the user left a choice open.

    Small corpora get a smaller, more strongly regularised network; character vocabularies
    gain nothing from tying, word-sized ones do.
    """
    train_tokens = len(corpus.splits["train"])
    vocab_size = corpus.tokenizer.vocab_size
    size, default_dropout = (256, 0.3) if train_tokens < 500_000 else (256, 0.1) if train_tokens < 5_000_000 else (512, 0.1)
    hidden = hidden_size or size
    tied = tie if tie is not None else vocab_size > 1000
    embedding = embedding_size or (hidden if tied or vocab_size > 1000 else min(hidden, 128))
    return ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, embedding_size=embedding, hidden_size=hidden,
                       dropout=default_dropout if dropout is None else dropout, tie=tied)


def default_output_dir(sources: list[str], cell: str) -> Path:
    name = Path(sources[0].rstrip("/")).stem or "corpus"
    return Path("models") / f"{name}-{cell}-{time.strftime('%Y%m%d-%H%M%S')}"
