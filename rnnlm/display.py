"""What people see: the training progress display and the result tables (Rich, on stderr or stdout)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from rnnlm.durations import format_duration
from rnnlm.units import natural_text

stderr = Console(stderr=True)


class TrainingDisplay:
    """A live progress bar on a terminal; one log line per evaluation when stderr is a file or pipe."""

    def __init__(self, console: Console = stderr) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: Any = None
        self.validation = "-"  # the latest validation figure in the model's natural unit
        self.tokenizer = ""
        self.last_refresh = 0.0

    def start(self, info: dict[str, Any]) -> None:
        self.tokenizer = info["tokenizer"]
        budget = f", budget {format_duration(info['max_time'])}" if info["max_time"] else ""
        processes = f", {info['processes']} processes" if info["processes"] > 1 else ""
        resumed = f", resuming at step {info['resumed_at']:,}" if info["resumed_at"] is not None else ""
        self.console.print(
            f"training {info['parameters']:,} parameters on {info['train_tokens']:,} tokens "
            f"({info['device']}, {info['precision']}{processes}{budget}{resumed}) -> {info['output']}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed:>7.0f}"), BarColumn(),
                TextColumn("{task.percentage:>3.0f}%  loss {task.fields[loss]:.3f} nats/token  "
                           "val {task.fields[validation]}  {task.fields[speed]:,.0f} tokens/s  "
                           "left {task.fields[left]}"),
                console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=None, loss=math.nan, validation="-", speed=0.0, left="?")

    def step(self, info: dict[str, Any]) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last_refresh < 0.25:
            return
        self.last_refresh = now
        progress = max(info["progress"], 1e-9)
        left = format_duration(info["elapsed_s"] * (1 - progress) / progress) if info["progress"] > 0 else "?"
        self.progress.update(self.task, completed=info["step"], total=info["step"] / progress, loss=info["loss"],
                             validation=self.validation, speed=info["tokens_per_s"], left=left)

    def evaluation(self, record: dict[str, Any]) -> None:
        self.validation = natural_text(self.tokenizer, record["val_word_ppl"], record["val_bpc"]) or "-"
        if self.progress is None:
            train_loss = record["train_loss"]
            train = f"{train_loss:.4f}" if train_loss is not None else "-"
            self.console.print(
                f"step {record['step']:>7}  epoch {record['epoch']:>3}  train {train} nats/token  "
                f"val {self.validation} ({record['val_loss']:.4f} nats/token)"
                f"{' (best)' if record['best'] else ''}  {record['tokens_per_s']:,.0f} tokens/s  "
                f"{format_duration(record['elapsed_s'])}",
                highlight=False, soft_wrap=True,
            )

    def event(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def finish(self, result: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        table = Table(title="training finished", show_header=False, title_justify="left")
        table.add_row("stopped by", result.stopped_because)
        table.add_row("steps", f"{result.steps:,}")
        table.add_row("tokens seen", f"{result.tokens:,}")
        table.add_row("time", format_duration(result.elapsed_s))
        table.add_row("peak memory", f"{result.peak_rss_mb:,.0f} MiB resident")
        best = natural_text(result.tokenizer, result.best_val_word_ppl, result.best_val_bpc)
        table.add_row("best validation", f"{best} ({result.best_val_loss:.4f} nats/token)")
        table.add_row("model", str(result.directory))
        self.console.print(table)


class PrepareDisplay:
    """A progress bar per pass over the text (bytes, MB/s) on a terminal; a closing line with the throughput."""

    def __init__(self, console: Console = stderr) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None
        self.task_total = 0
        self.corpus_bytes = 0
        self.started = time.perf_counter()

    def start(self, corpus_bytes: int) -> None:
        self.corpus_bytes = corpus_bytes
        self.started = time.perf_counter()
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=self.console)
            self.progress.start()

    def phase(self, description: str, total_bytes: int) -> None:
        if self.progress is not None:
            self._complete_task()
            self.task_total = max(1, total_bytes)
            self.task = self.progress.add_task(description, total=self.task_total)

    def advance(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, nbytes)

    def _complete_task(self) -> None:
        """Show the pass as done: the byte totals of a pass are estimates."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.task_total)

    def finish(self) -> None:
        if self.progress is not None:
            self._complete_task()
            self.progress.stop()
        elapsed = time.perf_counter() - self.started
        megabytes = self.corpus_bytes / 1e6
        self.console.print(f"prepared {megabytes:,.1f} MB of text in {elapsed:,.1f} s "
                           f"({megabytes / max(elapsed, 1e-9):,.1f} MB/s)", highlight=False)


def perplexity_table(report: dict[str, Any], source: str) -> Table:
    table = Table(title=f"{source} ({report['mode']})", title_justify="left")
    for column in ("measure", "value", "normalised by"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("perplexity per token", f"{report['ppl']:.3f}", f"{report['tokens']:,} tokens (one end-of-line per line)")
    table.add_row("perplexity per word", f"{report['word_ppl']:.3f}", f"{report['words']:,} words (one per line end)")
    table.add_row("bits per character", f"{report['bpc']:.4f}", f"{report['chars']:,} characters (newlines included)")
    table.add_row("cross-entropy", f"{report['nats_per_token']:.4f}", "nats per token")
    table.add_row("total NLL", f"{report['nll']:.2f}", "nats")
    table.add_row("out of vocabulary", f"{report['oov']:,}", f"tokens; perplexity per token without them {report['ppl_excluding_oov']:.3f}")
    return table


def rescoring_progress(rescored: Iterable[Sequence[Any]], console: Console = stderr) -> Iterator[Sequence[Any]]:
    """The rescored utterances, passed through; on a terminal, a running count of them on stderr
    (updated at most five times a second, cleared at the end), as n-best lists can be long."""
    if not console.is_terminal:
        yield from rescored
        return
    utterances = hypotheses = 0
    shown = 0.0
    for results in rescored:
        utterances += 1
        hypotheses += len(results)
        if time.monotonic() - shown > 0.2:
            console.file.write(f"\rrnnlm rescore: {utterances:,} utterances, {hypotheses:,} hypotheses")
            console.file.flush()
            shown = time.monotonic()
        yield results
    console.file.write(f"\rrnnlm rescore: {utterances:,} utterances, {hypotheses:,} hypotheses rescored\n")


def models_table(listed: list[Any], folder: str) -> Table:
    """`rnnlm models`: one row per model directory (rnnlm.inventory.ModelInfo), the one used here starred."""
    from rnnlm.durations import spoken_duration
    from rnnlm.inventory import short_count
    from rnnlm.project import shown

    table = Table(title=f"models in {folder} (* used here without -m)", title_justify="left")
    for column in ("", "path", "corpus", "model", "parameters", "best validation", "trained", "notes"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for info in listed:
        notes = [*info.roles, *([info.problem] if info.problem else [])]
        if info.writer_pid:
            notes.append("being trained")
        trained = [spoken_duration(info.training_s) if info.training_s is not None else "",
                   f"{info.trained_at:%Y-%m-%d %H:%M}" if info.trained_at else ""]
        table.add_row("*" if info.default else "", shown(info.path), info.corpus or "-",
                      f"{info.tokenizer}, {info.size()}" if info.tokenizer else "-",
                      short_count(info.parameters) if info.parameters else "-", info.validation(),
                      ", ".join(part for part in trained if part) or "-", "; ".join(notes))
    return table
