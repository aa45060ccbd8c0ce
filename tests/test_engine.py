"""The training engine: exact resume after SIGKILL, recovery from non-finite losses,
schedules, and two-process DistributedDataParallel matching one process."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_corpus, run_cli
from rnnlm.checkpoint import CHECKPOINT, load_checkpoint, load_model, read_metrics
from rnnlm.batching import variable_window_length
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.prepared_corpus import PreparedCorpus, load_prepared
from rnnlm.errors import UserError
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.training import SilentReporter, TrainConfig, close_process_group, train

TINY = ["--hidden-size", "32", "--embedding-size", "16", "--layers", "1", "--batch-size", "8", "--bptt", "32",
        "--precision", "fp32", "--device", "cpu"]


def small_corpus(directory: Path, lines: int = 300) -> PreparedCorpus:
    text = directory / "corpus.txt"
    text.write_text(make_corpus(lines, seed=3), encoding="utf-8")
    return prepare([str(text)], directory / "prepared", PrepareOptions(valid_fraction=0.1))


def model_config(corpus: PreparedCorpus, dropout: float = 0.2) -> ModelConfig:
    return ModelConfig(vocab_size=corpus.tokenizer.vocab_size, layers=2, embedding_size=16, hidden_size=24,
                       dropout=dropout, tie=True)


RUN = TrainConfig(epochs=2, batch_size=8, bptt=16, lr=1e-2, warmup_steps=5, precision="fp32", device="cpu",
                  eval_every=7, checkpoint_every=10, random_seed=4)


class LossLog(SilentReporter):
    """Keeps every step's loss and every event; optionally kills its own process at a step."""

    def __init__(self, path: Path | None = None, kill_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.events: list[str] = []
        self.path, self.kill_at = path, kill_at

    def step(self, info: dict[str, Any]) -> None:
        self.losses[info["step"]] = info["loss"]
        if self.path is not None:
            with self.path.open("a") as stream:
                stream.write(json.dumps([info["step"], info["loss"]]) + "\n")
        if info["step"] == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def event(self, message: str) -> None:
        self.events.append(message)


def train_then_die(prepared_dir: str, output: str, log: str, kill_at: int) -> None:
    torch.set_num_threads(1)
    corpus = load_prepared(Path(prepared_dir))
    train(corpus, Path(output), model_config(corpus), RUN, LossLog(Path(log), kill_at))


def test_resume_after_sigkill_repeats_the_uninterrupted_losses(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path)
    reference = LossLog()
    train(corpus, tmp_path / "reference", model_config(corpus), RUN, reference)
    assert len(reference.losses) > 30

    killed = multiprocessing.get_context("spawn").Process(
        target=train_then_die, args=(str(corpus.directory), str(tmp_path / "run"), str(tmp_path / "log"), 23))
    killed.start()
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    state = json.loads((tmp_path / "run" / CHECKPOINT / "state.json").read_text())
    assert state["step"] == 20  # the last checkpoint before the kill, whole
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 21  # an evaluation after it

    resumed = LossLog()
    result = train(corpus, tmp_path / "run", model_config(corpus), RUN, resumed, resume=True)
    assert min(resumed.losses) == 21 and result.steps == max(reference.losses)
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(reference.losses[step], rel=1e-6), step
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [r["step"] for r in read_metrics(tmp_path / "reference")]


def test_variable_windows_scale_the_rate_to_their_length_and_resume_exactly(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path)
    config = replace(RUN, variable_bptt=True, bptt=12, schedule="constant", warmup_steps=0, eval_every=1,
                     checkpoint_every=10_000, epochs=2, patience=None)
    reference = LossLog()
    train(corpus, tmp_path / "reference", model_config(corpus), config, reference)
    records = [r for r in read_metrics(tmp_path / "reference") if r["epoch"] == 1]
    row_length = (len(corpus.splits["train"]) - 1) // config.batch_size
    length, column, expected = variable_window_length(12, config.random_seed, 1), 0, []
    while column < row_length:
        expected.append(min(length(column), row_length - column))
        column += expected[-1]
    assert [r["lr"] / config.lr * config.bptt for r in records] == pytest.approx(expected)
    assert len(set(expected)) > 3

    train(corpus, tmp_path / "run", model_config(corpus), replace(config, epochs=1), LossLog())
    resumed = LossLog()
    train(corpus, tmp_path / "run", model_config(corpus), config, resumed, resume=True)
    assert min(resumed.losses) == len(expected) + 1
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(reference.losses[step], rel=1e-6), step


def test_cli_resume_extends_a_finished_run_and_rejects_shape_changes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(200, seed=2), encoding="utf-8")
    first = run_cli("train", corpus, "-o", "model", "--epochs", "1", *TINY, cwd=tmp_path)
    assert first.returncode == 0, first
    steps = json.loads((tmp_path / "model" / CHECKPOINT / "state.json").read_text())["step"]

    changed = run_cli("train", "--resume", "model", "--hidden-size", "64", cwd=tmp_path)
    assert changed.returncode == 1 and "--hidden-size cannot change" in changed.stderr, changed

    resumed = run_cli("train", "--resume", "model", "--epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed
    assert f"resuming at step {steps}" in resumed.stderr
    assert json.loads((tmp_path / "model" / CHECKPOINT / "state.json").read_text())["step"] == 2 * steps


def test_interrupt_saves_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = small_corpus(tmp_path)

    class CtrlC(LossLog):
        def step(self, info: dict[str, Any]) -> None:
            if info["step"] == 12:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in a background job
    with pytest.raises(KeyboardInterrupt):
        train(corpus, tmp_path / "model", model_config(corpus), RUN, CtrlC())
    assert json.loads((tmp_path / "model" / CHECKPOINT / "state.json").read_text())["step"] == 12
    assert signal.getsignal(signal.SIGINT) is before  # training restores the handler it found


def poison_loss_at(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """Make the training loss NaN at the given calls of cross_entropy (counted from 1)."""
    original = torch.nn.functional.cross_entropy
    count = [0]

    def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
        count[0] += 1
        loss = original(*args, **kwargs)
        return loss * math.nan if count[0] in calls else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)


def test_a_non_finite_loss_rolls_back_and_training_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = small_corpus(tmp_path)
    poison_loss_at(monkeypatch, {15, 16})
    log = LossLog()
    result = train(corpus, tmp_path / "model", model_config(corpus), RUN, log)
    assert len(log.events) == 2 and "non-finite loss" in log.events[0]
    assert math.isfinite(result.best_val_loss)
    records = read_metrics(tmp_path / "model")
    assert records[-1]["rollbacks"] == 2 and all(math.isfinite(r["val_loss"]) for r in records)
    assert records[-1]["lr"] < 0.25 * RUN.lr + 1e-12  # halved twice
    model = load_model(tmp_path / "model").model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_checkpoint(tmp_path / "model", "cpu").state["lr_scale"] == 0.25


def test_endless_non_finite_losses_end_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = small_corpus(tmp_path)
    poison_loss_at(monkeypatch, set(range(3, 100)))
    with pytest.raises(UserError, match="training diverged"):
        train(corpus, tmp_path / "model", model_config(corpus), RUN)


def test_plateau_halves_the_rate_and_patience_stops(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path)
    # a rate so small that no update changes a weight: every validation after the first is no better
    config = replace(RUN, optimizer="sgd", schedule="plateau", lr=1e-30, epochs=3, eval_every=2, patience=3,
                     warmup_steps=0)
    log = LossLog()
    result = train(corpus, tmp_path / "model", model_config(corpus), config, log)
    records = read_metrics(tmp_path / "model")
    assert len({r["val_loss"] for r in records}) == 1  # the premise: the weights never change
    assert [r["best"] for r in records] == [True, False, False, False]  # stops after exactly `patience` of them
    assert result.stopped_because == "patience" and result.steps == 4 * config.eval_every
    # the rate of the steps after each validation: unchanged after the best one, then halved after each other
    assert [r["lr"] for r in records] == [1e-30, 1e-30, 0.5e-30, 0.25e-30]
    assert sum("learning rate halved" in event for event in log.events) == 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, prepared_dir: str, output: str, config: TrainConfig) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    corpus = load_prepared(Path(prepared_dir))
    train(corpus, Path(output), model_config(corpus, dropout=0.0), config)
    close_process_group()


def test_two_process_ddp_takes_the_same_step_as_one_process(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path, lines=60)
    config = replace(RUN, optimizer="sgd", lr=0.5, epochs=1, warmup_steps=0, eval_every=None, checkpoint_every=None)
    single = train(corpus, tmp_path / "single" / "model", model_config(corpus, dropout=0.0), config)
    assert 2 <= single.steps <= 12

    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(corpus.directory), str(tmp_path / "ddp" / "model"),
                                                  config), nprocs=2)
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["model"]  # only rank 0 wrote
    assert load_checkpoint(tmp_path / "ddp" / "model", "cpu").state["step"] == single.steps

    torch.manual_seed(config.random_seed)
    initial = RNNLanguageModel(model_config(corpus, dropout=0.0)).state_dict()
    one = load_checkpoint(tmp_path / "single" / "model", "cpu").weights
    two = load_checkpoint(tmp_path / "ddp" / "model", "cpu").weights
    for name, weight in one.items():
        change = weight - initial[name]
        assert (two[name] - weight).norm() <= 1e-5 * change.norm() + 1e-12, name
