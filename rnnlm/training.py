"""The training loop: teacher forcing over stateful TBPTT batches, validation, and the best model kept.

Reads top to bottom: settings, the precision and device choice, the learning-rate
schedule, the pieces of a robust run (the torchrun context, the resumable run state, the
in-memory snapshot rolled back to after a non-finite step, Ctrl-C deferred to a step
boundary), one training step, then `train`: a short loop that runs steps until the epochs or
the wall-clock budget are spent, evaluates every so often, keeps the weights with the lowest
validation loss, and writes checkpoints that `train(..., resume=True)` continues from exactly.
Each of those steps is a method of `TrainingRun`, which holds what they share; the loop
itself reads top to bottom in `_train`.
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
from typing import Any, ContextManager, NamedTuple, Protocol

import torch
from torch import Tensor

from rnnlm import __version__, checkpoint, outputs, project, units
from rnnlm.config import TrainConfig, check_device_name
from rnnlm.batching import mean_window_length, stream_batches, variable_window_length
from rnnlm.prepared_corpus import PreparedCorpus, TextCounts
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
        raise UserError(f"`device` {name} asked for, but torch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"`device` {name} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("`device` mps asked for, but torch sees no Apple GPU here")
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
        raise UserError("`precision` fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
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
        output = model(x, carried, targets=y)
    loss = -output.target_log_probs.mean()
    penalty, carried = output.penalty, output.state
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
    """The loop: a batch, a step, then whatever is due (evaluation, checkpoint, stop), until the
    epochs run out or something stops the run."""
    run = TrainingRun(corpus, output, model_config, config, reporter, resume)
    with deferred_interrupts() as interrupted:
        for end_of_epoch, inputs, targets in run.batches():
            run.step(inputs, targets)
            due = run.due(interrupted())
            if due.out_of_time:
                run.stopped_because = "max-time"
            if due.interrupted:
                run.stopped_because = "interrupted"
            if (end_of_epoch or due.evaluation or due.out_of_time) and run.state.window_steps and run.evaluate():
                run.stopped_because = "patience"
            if end_of_epoch:
                run.next_epoch()
            if due.checkpoint or run.stopping:
                run.save_checkpoint()
            if run.stopping:
                break
        else:
            if run.state.window_steps or not run.saved:
                run.evaluate()  # a resumed run whose last steps were not evaluated, or one with no steps at all
            run.save_checkpoint()
    return run.finish()


class Due(NamedTuple):
    """What the clock, the step count and Ctrl-C ask for after a step, agreed by every rank."""

    out_of_time: bool
    evaluation: bool
    checkpoint: bool
    interrupted: bool


def join_processes(config: TrainConfig) -> tuple[Distributed, torch.device]:
    """This process's place in the torchrun job (with its process group open) and its device."""
    dist = Distributed.from_environment()
    if dist.active and config.batch_size % dist.world_size:
        raise UserError(f"`batch_size` {config.batch_size} must be a multiple of the {dist.world_size} processes")
    device = resolve_device(config.device)
    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    dist.device = device
    if dist.active and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def validation_split(corpus: PreparedCorpus) -> tuple[np.ndarray, TextCounts]:
    """The tokens to validate on and their counts: the training text where nothing is held out."""
    train_tokens, valid_tokens = corpus.splits["train"], corpus.splits["valid"]
    if len(train_tokens) < 2:
        raise UserError("the training split has too few tokens to train on")
    if len(valid_tokens) < 2:
        return train_tokens, corpus.counts("train")
    return valid_tokens, corpus.counts("valid")


def build_model(model_config: ModelConfig, config: TrainConfig, dist: Distributed,
                device: torch.device) -> tuple[RNNLanguageModel, torch.optim.Optimizer]:
    """The model, the same initial weights on every rank, and its optimiser; each rank then draws
    dropout masks of its own."""
    longest_window = config.bptt + 40 if config.variable_bptt else config.bptt
    check_fits(training_bytes(model_config, config.batch_size // dist.world_size, longest_window), device,
               "training this model")
    torch.manual_seed(config.random_seed)
    model = RNNLanguageModel(model_config).to(device)
    optimizer = make_optimizer(model, config)
    if dist.rank:
        torch.manual_seed(config.random_seed + dist.rank)
    return model, optimizer


def planned_steps(corpus: PreparedCorpus, config: TrainConfig) -> tuple[int, int | None]:
    """The steps an epoch takes, and the steps of the run (None: no epoch limit)."""
    row_length = (len(corpus.splits["train"]) - 1) // config.batch_size
    steps_per_epoch = math.ceil(row_length / mean_window_length(config.bptt, config.variable_bptt))
    return steps_per_epoch, steps_per_epoch * config.epochs if config.epochs else None


def model_settings(corpus: PreparedCorpus, model_config: ModelConfig, config: TrainConfig, model: RNNLanguageModel,
                   device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """config.json: the model, how it is trained, on what corpus, and its size."""
    return {
        "format": checkpoint.MODEL_FORMAT,
        "version": 1,
        "rnnlm_version": __version__,
        "model": model_config.to_dict(),
        "training": asdict(config) | {"device": str(device), "autocast": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"},
        "corpus": {"directory": str(corpus.directory), "tokenizer": corpus.tokenizer.kind,
                   "splits": corpus.meta["splits"]},
        "parameters": count_parameters(model),
    }


class TrainingRun:
    """One run of `train`: the model and optimiser, the resumable RunState, and what the loop's
    steps (a training step, an evaluation, a checkpoint) share between them.

    Rank 0 writes the model directory, created at the first save so that a run killed before
    then leaves nothing behind; the other ranks compute the same decisions and write nothing.
    """

    carried: State | None  # the recurrent state carried from batch to batch, this rank's rows
    average: WeightAverage | None  # NT-ASGD's, once averaging has begun

    def __init__(self, corpus: PreparedCorpus, output: Path, model_config: ModelConfig, config: TrainConfig,
                 reporter: Reporter | None, resume: bool) -> None:
        self.corpus, self.output, self.config = corpus, output, config
        self.dist, self.device = join_processes(config)
        self.reporter = reporter if reporter is not None and self.dist.rank == 0 else SilentReporter()
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.valid_tokens, self.valid_counts = validation_split(corpus)
        self.tokens_per_char = self.valid_counts.tokens / max(1, self.valid_counts.chars)
        self.steps_per_epoch, self.planned_steps = planned_steps(corpus, config)
        self.model, self.optimizer = build_model(model_config, config, self.dist, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        rows, world = config.batch_size, self.dist.world_size
        self.local_rows = slice(self.dist.rank * rows // world, (self.dist.rank + 1) * rows // world)
        self.settings = model_settings(corpus, model_config, config, self.model, self.device, self.amp_dtype)
        self.state, self.carried, self.average = RunState(), None, None
        if resume:
            self.resume()
        self.trainer: torch.nn.Module = (torch.nn.parallel.DistributedDataParallel(self.model) if self.dist.active
                                         else self.model)
        self.writes = self.dist.rank == 0
        self.saved = resume  # whether the model directory exists
        self.start_reporting(resume)
        self.tensorboard = open_tensorboard(output) if self.writes and resume else None  # else once the directory exists
        self.started = time.perf_counter() - self.state.elapsed_s
        self.history: list[dict[str, Any]] = []
        self.window_tokens, self.window_start = 0, time.perf_counter()  # this rank's, since the last evaluation
        self.last_eval = self.last_checkpoint = time.perf_counter()
        self.stopped_because = "epochs"
        self.good = Snapshot.take(self.model, self.optimizer)
        self.model.train()

    def resume(self) -> None:
        """Continue from the checkpoint in the output directory, dropping metrics logged after it."""
        check_resumable(self.output, self.corpus)
        saved = checkpoint.load_checkpoint(self.output, str(self.device))
        self.state, self.carried, self.average = restore(saved, self.model, self.optimizer, self.dist, self.local_rows,
                                                         self.device, self.config.batch_size)
        if self.dist.rank == 0:
            checkpoint.keep_metrics_until(self.output, self.state.step)

    @property
    def stopping(self) -> bool:
        return self.stopped_because != "epochs"

    def start_reporting(self, resume: bool) -> None:
        self.reporter.start({
            "parameters": self.settings["parameters"], "device": str(self.device),
            "precision": self.settings["training"]["autocast"], "steps_per_epoch": self.steps_per_epoch,
            "planned_steps": self.planned_steps, "max_time": self.config.max_time, "output": str(self.output),
            "train_tokens": len(self.corpus.splits["train"]), "resumed_at": self.state.step if resume else None,
            "processes": self.dist.world_size, "tokenizer": self.corpus.tokenizer.kind})

    def progress(self) -> float:
        """The fraction of the run done: of its planned steps or of its time budget, whichever is further."""
        parts = []
        if self.planned_steps:
            parts.append(self.state.step / self.planned_steps)
        if self.config.max_time:
            parts.append((time.perf_counter() - self.started) / self.config.max_time)
        return max(parts) if parts else 0.0

    def batches(self) -> Iterator[tuple[bool, np.ndarray, np.ndarray]]:
        """(last of its epoch, inputs, targets) from the saved position on, until the epochs are spent."""
        config, state = self.config, self.state
        while config.epochs is None or state.epoch <= config.epochs:
            tokens = self.corpus.train_tokens(state.epoch)  # a sampled segmentation per epoch under subword regularisation
            epoch_row_length = (len(tokens) - 1) // config.batch_size
            window_length = (variable_window_length(config.bptt, config.random_seed, state.epoch)
                             if config.variable_bptt else None)
            for column, inputs, targets in stream_batches(tokens, config.batch_size, config.bptt, state.column,
                                                          window_length):
                state.column = column + inputs.shape[1]
                yield state.column >= epoch_row_length, inputs[self.local_rows], targets[self.local_rows]

    def step(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        """One training step at the scheduled rate; a non-finite one is rolled back instead."""
        config, state = self.config, self.state
        # a variable window's rate follows its length, so that every token weighs the same (AWD-LSTM)
        window_scale = inputs.shape[1] / config.bptt if config.variable_bptt else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step, state.epoch, self.progress(), state.lr_scale) * window_scale
        x = torch.from_numpy(inputs).to(self.device, non_blocking=True)
        y = torch.from_numpy(targets).to(self.device, non_blocking=True)
        loss_value, finite, self.carried = train_step(self.trainer, self.optimizer, self.scaler, x, y, self.carried,
                                                      config.clip, self.amp_dtype)
        if finite:
            self.count_step(loss_value, y.numel())
        else:
            self.roll_back(loss_value)
        now = time.perf_counter()
        self.reporter.step({"step": state.step, "epoch": state.epoch, "loss": loss_value, "progress": self.progress(),
                            "tokens_per_s": self.window_tokens * self.dist.world_size / max(1e-9, now - self.window_start),
                            "elapsed_s": now - self.started})

    def count_step(self, loss_value: float, tokens: int) -> None:
        """Account for an applied step: counters, the weight average, and now and then a snapshot."""
        state = self.state
        state.step += 1
        state.tokens += tokens * self.dist.world_size
        state.window_loss += loss_value
        state.window_steps += 1
        self.window_tokens += tokens
        if self.average is not None:
            self.average.update(self.model)
        if state.step % SNAPSHOT_EVERY == 0:
            self.good = Snapshot.take(self.model, self.optimizer)

    def roll_back(self, loss_value: float) -> None:
        """Return to the last good weights at half the rate, or stop once that no longer helps."""
        state = self.state
        state.rollbacks_since_best += 1
        if state.rollbacks_since_best >= MAX_ROLLBACKS_WITHOUT_PROGRESS:
            raise diverged(state, self.output if self.saved else None)
        self.good.restore(self.model, self.optimizer)
        self.carried = None
        state.lr_scale *= 0.5
        state.rollbacks += 1
        self.reporter.event(f"step {state.step}: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'}; "
                            f"rolled back to the last good weights, learning rate halved")

    def due(self, interrupted: bool) -> Due:
        """What is due after this step: on the clock (agreed by all ranks) or by the step count."""
        config, now = self.config, time.perf_counter()
        eval_interval = config.eval_interval or (max(5.0, config.max_time / 20) if config.max_time else 30.0)
        out_of_time, evaluation, checkpoint_due, stop_now = self.dist.agree([
            bool(config.max_time and now - self.started >= config.max_time),
            not config.eval_every and now - self.last_eval >= eval_interval,
            not config.checkpoint_every and now - self.last_checkpoint >= config.checkpoint_interval,
            interrupted,
        ])
        evaluation = evaluation or bool(config.eval_every and self.state.step % config.eval_every == 0)
        checkpoint_due = checkpoint_due or bool(config.checkpoint_every
                                                and self.state.step % config.checkpoint_every == 0)
        return Due(out_of_time, evaluation, checkpoint_due, stop_now)

    def next_epoch(self) -> None:
        self.state.epoch += 1
        self.state.column = 0
        self.carried = None

    def weights_in_use(self) -> ContextManager[Any]:
        """The NT-ASGD average swapped into the model once averaging has begun, else the model as it is."""
        return self.average.swapped_in(self.model) if self.average else nullcontext()

    def evaluate(self) -> bool:
        """Validate, log a metrics record, save the weights if they are the best; True to stop early."""
        self.model.eval()
        with self.weights_in_use(), autocast(self.device, self.amp_dtype):
            val_nll, val_count = stream_nll(self.model, self.valid_tokens, rows=self.config.eval_batch_size, window=256,
                                            start_token=self.corpus.tokenizer.eol_id)
        self.model.train()
        val_loss = val_nll / max(1, val_count)
        record = self.metrics_record(val_loss)
        record["best"] = self.keep_if_best(val_loss)
        record["averaging"] = self.average is not None
        self.start_averaging_if_triggered(val_loss)
        self.log(record)
        self.state.window_loss, self.state.window_steps = 0.0, 0
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.last_eval = self.window_start
        return self.config.patience is not None and self.state.evaluations_since_best >= self.config.patience

    def metrics_record(self, val_loss: float) -> dict[str, Any]:
        """A line of metrics.jsonl, less whether it is the best and whether the weights are averaged."""
        state, now = self.state, time.perf_counter()
        return {
            "step": state.step, "epoch": state.epoch, "tokens": state.tokens,
            "train_loss": state.window_loss / state.window_steps if state.window_steps else None,
            "val_loss": val_loss, "val_bpc": val_loss * self.tokens_per_char / math.log(2),
            "val_ppl": math.exp(min(val_loss, 700)),
            "val_word_ppl": units.word_perplexity(val_loss, self.valid_counts.tokens, self.valid_counts.words),
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_s": self.window_tokens * self.dist.world_size / max(1e-9, now - self.window_start),
            "elapsed_s": now - self.started,
            "rollbacks": state.rollbacks,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    def keep_if_best(self, val_loss: float) -> bool:
        """Save the weights if the loss is the lowest yet; else count a non-improving evaluation (and
        halve the rate under the plateau schedule). True if it was the best."""
        state = self.state
        if not val_loss < state.best_val_loss:  # a NaN loss is no improvement either
            state.evaluations_since_best += 1
            if self.config.schedule == "plateau":
                state.lr_scale *= 0.5
                self.reporter.event(f"step {state.step}: no better validation loss; learning rate halved")
            return False
        state.best_val_loss = val_loss
        state.evaluations_since_best = 0
        state.rollbacks_since_best = 0
        if self.writes:
            self.make_model_dir()
            with self.weights_in_use():
                checkpoint.save_weights(self.output, self.model, {"step": str(state.step), "val_loss": repr(val_loss)})
        return True

    def start_averaging_if_triggered(self, val_loss: float) -> None:
        """NT-ASGD: record the loss, and begin averaging once it stops improving."""
        if self.config.optimizer != "ntasgd" or self.average is not None:
            return
        self.state.val_losses.append(val_loss)
        if averaging_triggered(self.state.val_losses, self.config.nonmono):
            self.average = WeightAverage(self.model)
            self.reporter.event(f"step {self.state.step}: validation loss stopped improving; averaging the weights "
                                "from here (NT-ASGD)")

    def log(self, record: dict[str, Any]) -> None:
        """The record to metrics.jsonl, TensorBoard, the history and the reporter."""
        if self.writes:
            checkpoint.append_metrics(self.output, record)
            if self.tensorboard is not None:
                for key in ("train_loss", "val_loss", "val_bpc", "lr", "tokens_per_s"):
                    if record[key] is not None:
                        self.tensorboard.add_scalar(key, record[key], self.state.step)
                self.tensorboard.flush()
        self.history.append(record)
        self.reporter.evaluation(record)

    def make_model_dir(self) -> None:
        """Create the model directory at the first save (rank 0), and only then name it the latest model."""
        if self.saved:
            return
        checkpoint.create_model_dir(self.output, self.model, self.corpus.tokenizer, self.settings,
                                    {"step": str(self.state.step)})
        project.record_latest(self.output)  # only now: a run killed before its first model changes no default
        self.tensorboard = open_tensorboard(self.output)
        self.saved = True

    def save_checkpoint(self) -> None:
        """Write the checkpoint `resume` continues from: weights, optimiser, RunState, every rank's
        random generator and carried state, and the weight average."""
        state, dist = self.state, self.dist
        state.elapsed_s = time.perf_counter() - self.started
        generators = dist.gather(torch.get_rng_state()[None].to(self.device), 0).cpu()
        tensors = {f"rng.cpu.{rank}": generator.clone() for rank, generator in enumerate(generators)}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.carried is not None:  # the state tuple, one tensor each, batch rows on axis 1
            tensors |= {f"carried.{i}": dist.gather(part, 1).cpu() for i, part in enumerate(self.carried)}
        if self.average is not None:
            tensors |= {f"average.{name}": mean.cpu() for name, mean in self.average.means.items()}
            state.averaged_steps = self.average.steps
        if self.writes:
            self.make_model_dir()
            checkpoint.save_checkpoint(self.output, self.model, self.optimizer.state_dict(), asdict(state), tensors)
        self.last_checkpoint = time.perf_counter()

    def finish(self) -> TrainResult:
        """Close TensorBoard; the result, or KeyboardInterrupt once an interrupted run is saved."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        state = self.state
        if self.stopped_because == "interrupted":
            self.reporter.event(f"interrupted at step {state.step}; checkpoint saved: "
                                f"continue with --resume {self.output}")
            raise KeyboardInterrupt
        result = TrainResult(self.output, state.step, state.tokens, time.perf_counter() - self.started,
                             state.best_val_loss, state.best_val_loss * self.tokens_per_char / math.log(2),
                             self.stopped_because, self.history,
                             units.word_perplexity(state.best_val_loss, self.valid_counts.tokens, self.valid_counts.words),
                             self.corpus.tokenizer.kind, round(peak_rss_mb(), 1))
        self.reporter.finish(result)
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
