"""The training loop: teacher forcing over stateful TBPTT batches, validation, and the best model kept.

Reads top to bottom: settings, the precision and device choice, the learning-rate
schedule, the pieces of a robust run (the torchrun context, the resumable run state, the
in-memory snapshot rolled back to after a non-finite step, Ctrl-C deferred to a step
boundary), one training step, then `train`, which runs steps until the epochs or the
wall-clock budget are spent, evaluates every so often, keeps the weights with the lowest
validation loss, and writes checkpoints that `train(..., resume=True)` continues from exactly.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ContextManager, Protocol

import torch
from torch import Tensor

from rnnlm import checkpoint, outputs, project, units
from rnnlm.config import TrainConfig, check_device_name
from rnnlm.data import PreparedCorpus, mean_window_length, stream_batches, variable_window_length
from rnnlm.direction import reversed_corpus
from rnnlm.errors import UserError
from rnnlm.model import (
    ModelConfig,
    RNNLanguageModel,
    State,
    count_parameters,
    detach_state,
)
from rnnlm.scoring import stream_nll
from rnnlm.sizing import check_fits, peak_rss_mb, training_bytes


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
    best_val_word_ppl: float = math.nan
    tokenizer: str = ""  # the kind, which decides the unit the result is read in (rnnlm.units)
    peak_rss_mb: float = 0.0  # the process's largest resident set, in MiB


class Reporter(Protocol):
    """What the training loop tells whoever is watching (the CLI draws a progress display)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, info: dict[str, Any]) -> None: ...
    def evaluation(self, record: dict[str, Any]) -> None: ...
    def event(self, message: str) -> None: ...
    def finish(self, result: TrainResult) -> None: ...


class SilentReporter:
    def start(self, info: dict[str, Any]) -> None: pass
    def step(self, info: dict[str, Any]) -> None: pass
    def evaluation(self, record: dict[str, Any]) -> None: pass
    def event(self, message: str) -> None: pass
    def finish(self, result: TrainResult) -> None: pass


def resolve_device(name: str) -> torch.device:
    """The torch device for `--device`: auto, or a device this machine has and rnnlm computes on."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but torch sees no Apple GPU here")
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


def learning_rate(config: TrainConfig, step: int, epoch: int, progress: float, scale: float) -> float:
    """Linear warm-up, then constant, plateau-scaled, stepped down by epoch, or a cosine decay to a
    tenth over the planned run.

    `scale` is the product of the halvings so far (by the plateau schedule and by rollbacks).
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "cosine":
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    elif config.schedule == "step":
        decay = config.lr_decay ** max(0, epoch - config.decay_start)
    else:
        decay = 1.0
    return config.lr * warmup * decay * scale


def make_optimizer(model: RNNLanguageModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (no decay on biases), or plain SGD, which ntasgd also steps with (the averaging is separate)."""
    if config.optimizer in ("sgd", "ntasgd"):
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run on its own)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (nccl needs CUDA tensors)

    @classmethod
    def from_environment(cls) -> Distributed:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def agree(self, flags: list[bool]) -> list[bool]:
        """Flags true on any rank, so that decisions taken on the clock are the same everywhere."""
        if not self.active:
            return flags
        tensor = torch.tensor(flags, dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.MAX)
        return [bool(flag) for flag in tensor.tolist()]

    def gather(self, tensor: Tensor, dim: int) -> Tensor:
        """The tensors of every rank, concatenated along `dim` in rank order."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)


@dataclass
class RunState:
    """The resumable position of a run, saved as the checkpoint's state.json."""

    step: int = 0
    epoch: int = 1
    column: int = 0  # the next column of the training stream
    tokens: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    evaluations_since_best: int = 0
    lr_scale: float = 1.0  # halved by each plateau and each rollback
    rollbacks: int = 0
    rollbacks_since_best: int = 0  # rollbacks since the validation loss last improved
    window_loss: float = 0.0  # training loss summed since the last evaluation
    window_steps: int = 0
    val_losses: list[float] = field(default_factory=list)  # ntasgd: every validation loss before averaging began
    averaged_steps: int = 0  # ntasgd: steps in the weight average (0: not averaging yet)


@dataclass
class Snapshot:
    """An in-memory copy of the last good weights and optimiser state, to roll back to."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]

    @classmethod
    def take(cls, model: RNNLanguageModel, optimizer: torch.optim.Optimizer) -> Snapshot:
        return cls({k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()))

    def restore(self, model: RNNLanguageModel, optimizer: torch.optim.Optimizer) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))


class WeightAverage:
    """The running mean of the weights since averaging began: the A in NT-ASGD (Merity et al., 2017).

    Averaging starts when the validation loss stops improving ("non-monotonically triggered");
    from then on evaluation and the saved model use the averaged weights.
    """

    def __init__(self, model: RNNLanguageModel, steps: int = 0, saved: dict[str, Tensor] | None = None) -> None:
        self.steps = steps
        self.means = {name: (saved[name] if saved else p.detach()).clone() for name, p in model.named_parameters()}

    def update(self, model: RNNLanguageModel) -> None:
        self.steps += 1
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                self.means[name].lerp_(parameter, 1 / self.steps)

    @contextmanager
    def swapped_in(self, model: RNNLanguageModel) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own afterwards."""
        current = {name: p.detach().clone() for name, p in model.named_parameters()}
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(self.means[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    parameter.copy_(current[name])


def averaging_triggered(val_losses: list[float], nonmono: int) -> bool:
    """NT-ASGD's trigger: the newest validation loss is worse than the best from before the last `nonmono`."""
    return len(val_losses) > nonmono and val_losses[-1] > min(val_losses[:-nonmono])


SNAPSHOT_EVERY = 100  # steps between in-memory snapshots
MAX_ROLLBACKS_WITHOUT_PROGRESS = 8  # rollbacks with no better validation loss between them before a run is stopped


def diverged(run: RunState, kept: Path | None) -> UserError:
    """The error that stops a run whose rollbacks no longer lead anywhere, saying what is kept."""
    outcome = (f"the best model so far (validation loss {run.best_val_loss:.4f} nats per token) is kept in {kept}"
               if kept is not None and math.isfinite(run.best_val_loss) else "no model was saved")
    return UserError(f"training diverged: {run.rollbacks_since_best} rollbacks to the last good weights, each halving "
                     f"the learning rate, without a better validation loss; {outcome}; try a lower learning rate "
                     "or fp32 precision")


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: Tensor,
               y: Tensor, carried: State | None, clip: float, amp_dtype: torch.dtype | None) -> tuple[float, bool, State]:
    """One teacher-forced step: the loss, whether it and the gradient were finite (the step is
    applied only then), and the recurrent state to carry, detached."""
    with autocast(x.device, amp_dtype):
        target_log_probs, carried = model(x, carried, targets=y)
    loss = -target_log_probs.mean()
    penalty = unwrap(model).regularisation_loss
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss if penalty is None else loss + penalty).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
    loss_value, norm_value = torch.stack([loss.detach(), norm.detach().float()]).tolist()
    # fp16's loss scaling makes some gradients overflow on purpose; the scaler skips those steps
    finite = math.isfinite(loss_value) and (math.isfinite(norm_value) or scaler.is_enabled())
    if finite:
        scaler.step(optimizer)
        scaler.update()
    return loss_value, finite, detach_state(carried)


def unwrap(model: torch.nn.Module) -> RNNLanguageModel:
    """The language model inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)  # type: ignore[return-value]


@contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C raises a flag that the loop checks between steps, so it can save a consistent checkpoint.

    A second Ctrl-C interrupts at once. Off the main thread (where signals cannot be caught)
    Ctrl-C behaves as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def open_tensorboard(directory: Path) -> Any:
    """A TensorBoard writer under DIRECTORY/tensorboard, or None where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory / "tensorboard"))


def train(corpus: PreparedCorpus, output: Path, model_config: ModelConfig, config: TrainConfig,
          reporter: Reporter | None = None, resume: bool = False) -> TrainResult:
    """Train from scratch, or with `resume` continue from the checkpoint in `output`.

    `output` must be absent, empty or an rnnlm model directory (outputs.check_output); it is
    locked against other rnnlm processes for the whole run. Under torchrun (RANK and WORLD_SIZE
    set) every process takes its share of the batch rows and DistributedDataParallel averages
    the gradients; all ranks evaluate, rank 0 writes.
    """
    config.validate()
    if model_config.reverse:
        corpus = reversed_corpus(corpus)
    if Distributed.from_environment().rank != 0:
        return _train(corpus, output, model_config, config, reporter, resume)
    with outputs.claimed(output, checkpoint.MODEL_DIRECTORY) as target:
        return _train(corpus, target, model_config, config, reporter, resume)


def close_process_group() -> None:
    """Close the torchrun process group a run opened, once every rank has reached this point.

    A rank that leaves while another still saves, or a process that exits with the group open,
    can abort inside gloo's threads. Reopening a group in the same process is not reliable, so
    train() leaves the group open for further runs and the process closes it when it is done.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _train(corpus: PreparedCorpus, output: Path, model_config: ModelConfig, config: TrainConfig,
           reporter: Reporter | None, resume: bool) -> TrainResult:
    dist = Distributed.from_environment()
    if dist.active and config.batch_size % dist.world_size:
        raise UserError(f"--batch-size {config.batch_size} must be a multiple of the {dist.world_size} processes")
    if dist.rank != 0:
        reporter = SilentReporter()
    reporter = reporter or SilentReporter()
    device = resolve_device(config.device)
    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    dist.device = device
    if dist.active and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    amp_dtype = resolve_precision(config.precision, device)
    train_tokens, valid_tokens = corpus.splits["train"], corpus.splits["valid"]
    if len(train_tokens) < 2:
        raise UserError("the training split has too few tokens to train on")
    if len(valid_tokens) < 2:
        valid_tokens = train_tokens  # nothing held out: select and report on the training text
    valid_counts = corpus.counts("valid") if len(corpus.splits["valid"]) >= 2 else corpus.counts("train")
    tokens_per_char = valid_counts.tokens / max(1, valid_counts.chars)

    longest_window = config.bptt + 40 if config.variable_bptt else config.bptt
    check_fits(training_bytes(model_config, config.batch_size // dist.world_size, longest_window), device,
               "training this model")
    torch.manual_seed(config.random_seed)
    model = RNNLanguageModel(model_config).to(device)
    optimizer = make_optimizer(model, config)
    if dist.rank:
        torch.manual_seed(config.random_seed + dist.rank)  # the same initial weights, but dropout of its own
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    row_length = (len(train_tokens) - 1) // config.batch_size
    steps_per_epoch = math.ceil(row_length / mean_window_length(config.bptt, config.variable_bptt))
    planned_steps = steps_per_epoch * config.epochs if config.epochs else None
    eval_interval = config.eval_interval or (max(5.0, config.max_time / 20) if config.max_time else 30.0)
    local_rows = slice(dist.rank * config.batch_size // dist.world_size, (dist.rank + 1) * config.batch_size // dist.world_size)

    settings = {
        "format": checkpoint.MODEL_FORMAT,
        "version": 1,
        "model": model_config.to_dict(),
        "training": asdict(config) | {"device": str(device), "autocast": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"},
        "corpus": {"directory": str(corpus.directory), "tokenizer": corpus.tokenizer.kind,
                   "splits": corpus.meta["splits"]},
        "parameters": count_parameters(model),
    }
    run = RunState()
    carried: State | None = None
    average: WeightAverage | None = None
    if resume:
        check_resumable(output, corpus)
        saved_checkpoint = checkpoint.load_checkpoint(output, str(device))
        run, carried, average = restore(saved_checkpoint, model, optimizer, dist, local_rows, device, config.batch_size)
        if dist.rank == 0:
            checkpoint.keep_metrics_until(output, run.step)
    trainer: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model) if dist.active else model
    writes = dist.rank == 0
    saved = resume
    reporter.start({"parameters": settings["parameters"], "device": str(device), "precision": settings["training"]["autocast"],
                    "steps_per_epoch": steps_per_epoch, "planned_steps": planned_steps, "max_time": config.max_time,
                    "output": str(output), "train_tokens": len(train_tokens), "resumed_at": run.step if resume else None,
                    "processes": dist.world_size, "tokenizer": corpus.tokenizer.kind})
    tensorboard = open_tensorboard(output) if writes and resume else None  # else once the directory exists

    started = time.perf_counter() - run.elapsed_s
    history: list[dict[str, Any]] = []
    window_tokens, window_start = 0, time.perf_counter()
    last_eval = last_checkpoint = time.perf_counter()
    stopped_because = "epochs"
    good = Snapshot.take(model, optimizer)

    def progress() -> float:
        parts = []
        if planned_steps:
            parts.append(run.step / planned_steps)
        if config.max_time:
            parts.append((time.perf_counter() - started) / config.max_time)
        return max(parts) if parts else 0.0

    def make_model_dir() -> None:
        nonlocal saved, tensorboard
        checkpoint.create_model_dir(output, model, corpus.tokenizer, settings, {"step": str(run.step)})
        project.record_latest(output)  # only now: a run killed before its first model changes no default
        tensorboard = open_tensorboard(output)
        saved = True

    def evaluate() -> bool:
        """Validate, log a metrics record, save the weights if they are the best; True to stop early."""
        nonlocal window_tokens, window_start, last_eval, average
        model.eval()
        with average.swapped_in(model) if average else nullcontext(), autocast(device, amp_dtype):
            val_nll, val_count = stream_nll(model, valid_tokens, rows=config.eval_batch_size, window=256,
                                            start_token=corpus.tokenizer.eol_id)
        model.train()
        val_loss = val_nll / max(1, val_count)
        now = time.perf_counter()
        record = {
            "step": run.step, "epoch": run.epoch, "tokens": run.tokens,
            "train_loss": run.window_loss / run.window_steps if run.window_steps else None,
            "val_loss": val_loss, "val_bpc": val_loss * tokens_per_char / math.log(2),
            "val_ppl": math.exp(min(val_loss, 700)),
            "val_word_ppl": units.word_perplexity(val_loss, valid_counts.tokens, valid_counts.words),
            "lr": optimizer.param_groups[0]["lr"],
            "tokens_per_s": window_tokens * dist.world_size / max(1e-9, now - window_start),
            "elapsed_s": now - started,
            "rollbacks": run.rollbacks,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        improved = val_loss < run.best_val_loss
        if improved:
            run.best_val_loss = val_loss
            run.evaluations_since_best = 0
            run.rollbacks_since_best = 0
            if writes:
                if not saved:
                    make_model_dir()
                with average.swapped_in(model) if average else nullcontext():
                    checkpoint.save_weights(output, model, {"step": str(run.step), "val_loss": repr(val_loss)})
        else:
            run.evaluations_since_best += 1
            if config.schedule == "plateau":
                run.lr_scale *= 0.5
                reporter.event(f"step {run.step}: no better validation loss; learning rate halved")
        record["best"] = improved
        record["averaging"] = average is not None
        if config.optimizer == "ntasgd" and average is None:
            run.val_losses.append(val_loss)
            if averaging_triggered(run.val_losses, config.nonmono):
                average = WeightAverage(model)
                reporter.event(f"step {run.step}: validation loss stopped improving; averaging the weights from here (NT-ASGD)")
        if writes:
            checkpoint.append_metrics(output, record)
            if tensorboard is not None:
                for key in ("train_loss", "val_loss", "val_bpc", "lr", "tokens_per_s"):
                    if record[key] is not None:
                        tensorboard.add_scalar(key, record[key], run.step)
                tensorboard.flush()
        history.append(record)
        reporter.evaluation(record)
        run.window_loss, run.window_steps = 0.0, 0
        window_tokens, window_start = 0, time.perf_counter()
        last_eval = window_start
        return config.patience is not None and run.evaluations_since_best >= config.patience

    def save_checkpoint() -> None:
        nonlocal last_checkpoint
        run.elapsed_s = time.perf_counter() - started
        generators = dist.gather(torch.get_rng_state()[None].to(device), 0).cpu()
        tensors = {f"rng.cpu.{rank}": state.clone() for rank, state in enumerate(generators)}
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        if carried is not None:  # the state tuple, one tensor each, batch rows on axis 1
            tensors |= {f"carried.{i}": dist.gather(part, 1).cpu() for i, part in enumerate(carried)}
        if average is not None:
            tensors |= {f"average.{name}": mean.cpu() for name, mean in average.means.items()}
            run.averaged_steps = average.steps
        if writes:
            if not saved:
                make_model_dir()
            checkpoint.save_checkpoint(output, model, optimizer.state_dict(), asdict(run), tensors)
        last_checkpoint = time.perf_counter()

    def batches() -> Iterator[tuple[bool, np.ndarray, np.ndarray]]:
        """(last of its epoch, inputs, targets) from the saved position on, until the epochs are spent."""
        while config.epochs is None or run.epoch <= config.epochs:
            tokens = corpus.train_tokens(run.epoch)  # a sampled segmentation per epoch under subword regularisation
            epoch_row_length = (len(tokens) - 1) // config.batch_size
            window_length = variable_window_length(config.bptt, config.random_seed, run.epoch) if config.variable_bptt else None
            for column, inputs, targets in stream_batches(tokens, config.batch_size, config.bptt, run.column, window_length):
                run.column = column + inputs.shape[1]
                yield run.column >= epoch_row_length, inputs[local_rows], targets[local_rows]

    model.train()
    with deferred_interrupts() as interrupted:
        for end_of_epoch, inputs, targets in batches():
            # a variable window's rate follows its length, so that every token weighs the same (AWD-LSTM)
            window_scale = inputs.shape[1] / config.bptt if config.variable_bptt else 1.0
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, run.step, run.epoch, progress(), run.lr_scale) * window_scale
            x = torch.from_numpy(inputs).to(device, non_blocking=True)
            y = torch.from_numpy(targets).to(device, non_blocking=True)
            loss_value, finite, carried = train_step(trainer, optimizer, scaler, x, y, carried, config.clip, amp_dtype)
            if finite:
                run.step += 1
                run.tokens += y.numel() * dist.world_size
                run.window_loss += loss_value
                run.window_steps += 1
                window_tokens += y.numel()
                if average is not None:
                    average.update(model)
                if run.step % SNAPSHOT_EVERY == 0:
                    good = Snapshot.take(model, optimizer)
            else:
                run.rollbacks_since_best += 1
                if run.rollbacks_since_best >= MAX_ROLLBACKS_WITHOUT_PROGRESS:
                    raise diverged(run, output if saved else None)
                good.restore(model, optimizer)
                carried = None
                run.lr_scale *= 0.5
                run.rollbacks += 1
                reporter.event(f"step {run.step}: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'}; "
                               f"rolled back to the last good weights, learning rate halved")
            now = time.perf_counter()
            reporter.step({"step": run.step, "epoch": run.epoch, "loss": loss_value, "progress": progress(),
                           "tokens_per_s": window_tokens * dist.world_size / max(1e-9, now - window_start),
                           "elapsed_s": now - started})
            out_of_time, eval_due, checkpoint_due, stop_now = dist.agree([
                bool(config.max_time and now - started >= config.max_time),
                not config.eval_every and now - last_eval >= eval_interval,
                not config.checkpoint_every and now - last_checkpoint >= config.checkpoint_interval,
                interrupted(),
            ])
            eval_due = eval_due or bool(config.eval_every and run.step % config.eval_every == 0)
            checkpoint_due = checkpoint_due or bool(config.checkpoint_every and run.step % config.checkpoint_every == 0)
            if out_of_time:
                stopped_because = "max-time"
            if stop_now:
                stopped_because = "interrupted"
            if (end_of_epoch or eval_due or out_of_time) and run.window_steps and evaluate():
                stopped_because = "patience"
            if end_of_epoch:
                run.epoch += 1
                run.column = 0
                carried = None
            if checkpoint_due or stopped_because != "epochs":
                save_checkpoint()
            if stopped_because != "epochs":
                break
        else:
            if run.window_steps or not saved:
                evaluate()  # a resumed run whose last steps were not evaluated, or one with no steps at all
            save_checkpoint()
    if tensorboard is not None:
        tensorboard.close()
    if stopped_because == "interrupted":
        reporter.event(f"interrupted at step {run.step}; checkpoint saved: continue with --resume {output}")
        raise KeyboardInterrupt
    result = TrainResult(output, run.step, run.tokens, time.perf_counter() - started, run.best_val_loss,
                         run.best_val_loss * tokens_per_char / math.log(2), stopped_because, history,
                         units.word_perplexity(run.best_val_loss, valid_counts.tokens, valid_counts.words),
                         corpus.tokenizer.kind, round(peak_rss_mb(), 1))
    reporter.finish(result)
    return result


def check_resumable(output: Path, corpus: PreparedCorpus) -> None:
    """Refuse to resume with a corpus whose tokenizer is not the model's, or with damaged metrics."""
    tokenizer = checkpoint.load_tokenizer(output / checkpoint.TOKENIZER)
    if tokenizer.to_dict() != corpus.tokenizer.to_dict():
        raise UserError(f"{output / checkpoint.TOKENIZER}: differs from the tokenizer of the prepared corpus "
                        f"{corpus.directory}, so the run cannot continue on it")
    checkpoint.read_metrics(output)


def restore(saved: checkpoint.Checkpoint, model: RNNLanguageModel, optimizer: torch.optim.Optimizer, dist: Distributed,
            local_rows: slice, device: torch.device, batch_size: int) -> tuple[RunState, State | None, WeightAverage | None]:
    """Load a checkpoint into the model and optimiser; the run state, this rank's carried recurrent
    state, and the NT-ASGD weight average if one had begun. Every part is checked against the run
    before anything is set, so that a damaged file is named."""
    checkpoint.load_weights(model, saved.weights, saved.path / checkpoint.WEIGHTS, saved.note)
    restore_optimizer(optimizer, saved)
    run = run_state_from(saved)
    tensors = checked_tensors(saved, model, batch_size)
    rng = tensors.get(f"rng.cpu.{dist.rank}")
    if rng is not None:  # absent when resuming on more processes than saved: that rank's dropout is seeded afresh
        torch.set_rng_state(rng)
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    arity = len(model.initial_state(1))
    parts = [tensors[f"carried.{i}"][:, local_rows].to(device) for i in range(arity) if f"carried.{i}" in tensors]
    carried: State | None = tuple(parts) if len(parts) == arity else None
    means = {key.removeprefix("average."): tensor.to(device) for key, tensor in tensors.items() if key.startswith("average.")}
    average = WeightAverage(model, run.averaged_steps, means) if means else None
    return run, carried, average


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: checkpoint.Checkpoint) -> None:
    """Load the optimiser state, checked to be this optimiser's, for these parameters and shapes."""
    groups = saved.optimizer["param_groups"]
    expected = [set(group) for group in optimizer.state_dict()["param_groups"]]
    if not isinstance(groups, list) or [set(group) if isinstance(group, dict) else None for group in groups] != expected:
        raise saved.fault(checkpoint.CHECKPOINT_OPTIMIZER, "holds the state of another optimiser or other parameters")
    try:
        optimizer.load_state_dict(saved.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise saved.fault(checkpoint.CHECKPOINT_OPTIMIZER, f"does not fit the model ({error})") from None
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for value in optimizer.state.get(parameter, {}).values():
                if isinstance(value, Tensor) and value.dim() and value.shape != parameter.shape:
                    raise saved.fault(checkpoint.CHECKPOINT_OPTIMIZER, "holds state of the wrong shape for the model")


def run_state_from(saved: checkpoint.Checkpoint) -> RunState:
    """state.json as a RunState, each field of the type it must have (a field added since is defaulted)."""
    known = {f.name: f for f in fields(RunState)}
    unknown = sorted(set(saved.state) - set(known))
    if unknown:
        raise saved.fault(checkpoint.CHECKPOINT_STATE, f"has unknown fields ({', '.join(unknown)})")
    for name, value in saved.state.items():
        default = getattr(RunState(), name)
        number = isinstance(default, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and (isinstance(value, int) or isinstance(default, float)) or type(value) is type(default)):
            raise saved.fault(checkpoint.CHECKPOINT_STATE, f"{name} is {value!r}, not a {type(default).__name__}")
    return RunState(**saved.state)


def checked_tensors(saved: checkpoint.Checkpoint, model: RNNLanguageModel, batch_size: int) -> dict[str, Tensor]:
    """rng.safetensors' tensors, checked against the run: generator states, carried state, weight means."""
    shapes = {f"carried.{i}": part.shape for i, part in enumerate(model.initial_state(batch_size))}
    shapes |= {f"average.{name}": p.shape for name, p in model.named_parameters()}
    for name, tensor in saved.tensors.items():
        if name.startswith("rng."):
            if tensor.dtype != torch.uint8 or tensor.dim() != 1 or (name.startswith("rng.cpu.") and
                                                                      tensor.shape != torch.get_rng_state().shape):
                raise saved.fault(checkpoint.CHECKPOINT_TENSORS, f"{name} is not a random generator state")
        elif shapes.get(name) != tensor.shape:
            raise saved.fault(checkpoint.CHECKPOINT_TENSORS, f"{name} does not fit the model and batch")
    carried = [name in saved.tensors for name in shapes if name.startswith("carried.")]
    if any(carried) and not all(carried):
        raise saved.fault(checkpoint.CHECKPOINT_TENSORS, "holds only part of the carried recurrent state")
    return saved.tensors
