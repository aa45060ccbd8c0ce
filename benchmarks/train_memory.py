"""Resident memory of training over time, word level and character level, against a plain PyTorch loop.

Word level: a synthetic corpus with a large vocabulary, 2,000,000 words drawn from a Zipf
distribution (exponent 1) over 33,278 word types, the size of a standard word-level benchmark.
`rnnlm train` runs for a fixed time with its defaults (bf16 autocast where the CPU has it, the
clustered softmax), with `--precision fp32`, and with `--softmax-head 0`; a plain PyTorch loop
(2x256 LSTM, tied, full softmax, fp32, SGD, 20 streams of 35 words) is the reference. With
`--before DIR` (a copy of an earlier rnnlm/ package) the defaults run once more with that code.
Character level (`--level char`): a text file (default tinyshakespeare from the corpora mirror),
`rnnlm train` with its defaults and with `--precision fp32`, against a plain loop of the same shape
(2x512 LSTM, AdamW, 64 streams of 64 characters). Each run is its own process, whose resident
memory is sampled every few seconds. `--concurrent` starts every run at once: the memory figures
stand, the speed columns are then left out (the runs share the cores).

    python benchmarks/train_memory.py [--level word|char] [--minutes 15] [--concurrent] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import DEFAULT_CORPORA, RESULTS, write_markdown

REPOSITORY = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
TYPES = 33_278
WORDS = 2_000_000
WORDS_PER_LINE = 20
EVAL_INTERVAL = "30s"  # the same for every run, so that each spends its minutes training


@dataclass(frozen=True)
class Level:
    """A tokenization level: how its corpus is prepared, its runs, and the plain loop of its shape."""

    name: str
    page: str  # benchmarks/results/PAGE.md and PAGE.png
    title: str
    prepare_options: tuple[str, ...]
    configurations: tuple[tuple[str, tuple[str, ...]], ...]  # run name, rnnlm train options
    size: int  # the plain loop's embedding and hidden size
    tied: bool
    optimizer: str  # sgd or adamw
    lr: float
    clip: float
    rows: int
    window: int


LEVELS = {
    # a 4,000-word validation split: on a loaded 2-core machine a larger one's evaluations took most of the time
    "word": Level("word", "train_memory", "Training memory: a large-vocabulary word corpus",
                  ("--tokenizer", "word", "--valid-fraction", "0.002"),
                  (("defaults", ()), ("--precision fp32", ("--precision", "fp32")), ("--softmax-head 0", ("--softmax-head", "0"))),
                  256, True, "sgd", 20.0, 0.25, 20, 35),
    "char": Level("char", "train_memory_char", "Training memory: a character corpus",
                  ("--tokenizer", "char", "--valid-fraction", "0.01"),
                  (("defaults", ()), ("--precision fp32", ("--precision", "fp32"))),
                  512, False, "adamw", 1e-2, 1.0, 64, 64),
}


def zipf_corpus(path: Path, words: int = WORDS, types: int = TYPES, seed: int = 0) -> None:
    """`words` words in lines of 20, word k (from 1) drawn with probability proportional to 1/k."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, types + 1)
    ids = rng.choice(types, words, p=weights / weights.sum())
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = []
    for k in range(types):  # a distinct lowercase spelling per rank, in base 26
        spelling, k = "", k + 1
        while k:
            k, digit = divmod(k - 1, 26)
            spelling = letters[digit] + spelling
        vocabulary.append(spelling)
    lines = (" ".join(vocabulary[i] for i in ids[start:start + WORDS_PER_LINE]) for start in range(0, words, WORDS_PER_LINE))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Run:
    name: str
    command: list[str]
    package_root: Path
    output: Path | None = None  # the model directory of an rnnlm run
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    tokens_per_s: float = 0.0
    reported_peak_mib: float | None = None

    def level(self, minute: float) -> float:
        """The median of the samples taken in the minute before `minute`: the memory a run holds
        then, without the spikes of single steps or evaluations."""
        return float(np.median([r for t, r in zip(self.seconds, self.rss_mib) if minute - 1 <= t / 60 <= minute]))

    def growth(self, minutes: float) -> float:
        """From minute 2 (once the first minute's start-up is done) to the last minute of training
        (the samples after it are the final evaluation and saving)."""
        return self.level(minutes) / self.level(2) - 1


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / MIB


def sample(runs: list[Run], interval: float) -> None:
    """Start `runs` together, each with its package first on the path, sampling their resident memory.

    Their output goes to files: a pipe read only at the end could fill and stall a long run."""
    started = time.perf_counter()
    logs = [tempfile.TemporaryFile("w+", encoding="utf-8") for _ in runs]
    processes = [subprocess.Popen(run.command, env=dict(os.environ, PYTHONPATH=str(run.package_root)), stdout=log,
                                  stderr=subprocess.STDOUT, text=True) for run, log in zip(runs, logs)]
    while any(process.poll() is None for process in processes):
        for run, process in zip(runs, processes):
            try:
                if process.poll() is None:
                    run.rss_mib.append(rss_mib(process.pid))
                    run.seconds.append(time.perf_counter() - started)
            except OSError:
                pass
        time.sleep(interval)
    for run, process, log in zip(runs, processes, logs):
        log.seek(0)
        if process.returncode:
            raise SystemExit(f"{run.name} failed:\n{log.read()[-3000:]}")
        print(f"{run.name}: peak {max(run.rss_mib):,.0f} MiB", flush=True)


def rnnlm_run(name: str, options: tuple[str, ...], package_root: Path, prepared: Path, work: Path, minutes: float) -> Run:
    output = work / name.replace(" ", "_").replace("/", "").replace(",", "")
    command = [sys.executable, "-m", "rnnlm", "train", str(prepared), "-o", str(output), "--max-time", f"{minutes * 60:.0f}s",
               "--device", "cpu", "--eval-interval", EVAL_INTERVAL, *options]
    return Run(name, command, package_root, output)


def read_speed(run: Run) -> None:
    """tokens/s and the peak rnnlm recorded: from metrics.jsonl, or the plain loop's result file."""
    if run.output is None:
        run.tokens_per_s = json.loads(Path(run.command[-1]).read_text(encoding="utf-8"))["tokens_per_s"]
        return
    records = [json.loads(line) for line in (run.output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    speeds = [record["tokens_per_s"] for record in records[1:]] or [records[-1]["tokens_per_s"]]
    run.tokens_per_s = float(np.median(speeds))  # training windows only: evaluation time is left out
    run.reported_peak_mib = records[-1].get("peak_rss_mb")


def reference_loop(level: Level, prepared: Path, minutes: float, result: Path) -> None:
    """The model a user writes from the PyTorch examples, in the level's shape: one LSTM stack,
    one full softmax, fp32, dropout 0.3, gradient clipping, stateful windows."""
    import torch
    from torch import nn

    from rnnlm.prepared_corpus import load_prepared

    corpus = load_prepared(prepared)
    tokens = torch.from_numpy(np.asarray(corpus.splits["train"], dtype=np.int64))
    vocab, size, rows, window = corpus.tokenizer.vocab_size, level.size, level.rows, level.window
    streams = tokens[: len(tokens) // rows * rows].view(rows, -1)
    torch.manual_seed(0)
    embedding, lstm, decoder = nn.Embedding(vocab, size), nn.LSTM(size, size, 2, batch_first=True, dropout=0.3), nn.Linear(size, vocab)
    if level.tied:
        decoder.weight = embedding.weight
    drop = nn.Dropout(0.3)
    parameters = list({id(p): p for module in (embedding, lstm, decoder) for p in module.parameters()}.values())
    optimizer = (torch.optim.SGD(parameters, lr=level.lr) if level.optimizer == "sgd"
                 else torch.optim.AdamW(parameters, lr=level.lr))
    state, seen, column = None, 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < minutes * 60:
        if column + window + 1 > streams.shape[1]:
            column, state = 0, None
        x, y = streams[:, column:column + window], streams[:, column + 1:column + window + 1]
        output, state = lstm(drop(embedding(x)), state)
        loss = nn.functional.cross_entropy(decoder(drop(output)).reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, level.clip)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        column += window
        seen += y.numel()
    result.write_text(json.dumps({"tokens_per_s": seen / (time.perf_counter() - started)}), encoding="utf-8")


def plot(level: Level, runs: list[Run], minutes: float, corpus: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'rnnlm[bench]'): no plot")
        return False
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        axes.plot(np.array(run.seconds) / 60, run.rss_mib, label=run.name)
    axes.set_xlabel("minutes of training")
    axes.set_ylabel("resident memory (MiB)")
    axes.set_title(f"{level.name.capitalize()}-level training, {corpus}, {minutes:g} minutes per run")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"{level.page}.png", dpi=100)
    return True


def report(level: Level, runs: list[Run], minutes: float, drawn: bool, before: Path | None, concurrent: bool) -> None:
    reference = next(run for run in runs if run.name.startswith("plain"))
    table = [["run", "peak RSS (MiB, sampled)", "peak_rss_mb (metrics)", "RSS in minute 2 (MiB, median)",
              f"RSS in minute {minutes:g} (MiB, median)", "growth"] + ([] if concurrent else ["tokens/s", "× plain loop's tokens/s"])]
    for run in runs:
        reported = f"{run.reported_peak_mib:,.0f}" if run.reported_peak_mib else "-"
        row = [run.name, f"{max(run.rss_mib):,.0f}", reported, f"{run.level(2):,.0f}", f"{run.level(minutes):,.0f}",
               f"{run.growth(minutes):+.1%}"]
        if not concurrent:
            row += [f"{run.tokens_per_s:,.0f}", f"{run.tokens_per_s / reference.tokens_per_s:.2f}"]
        table.append(row)
    peaks = {run.name: max(run.rss_mib) for run in runs}
    speeds = {run.name: run.tokens_per_s for run in runs}
    together = ("All runs trained at the same time (`--concurrent`), so they shared the cores: memory is per process and "
                "stands; speeds are left out." if concurrent else "Runs trained one after another.")
    notes = [f"Each run trains for {minutes:g} minutes in its own process; resident memory (RSS, from /proc) is sampled "
             "every few seconds. Growth compares the median of the samples in the last minute of training with that of "
             "minute 2 (after start-up); the samples after the budget are the final evaluation and saving. "
             "peak_rss_mb is what `rnnlm train` itself records (VmHWM), spikes between samples included. " + together +
             ("" if concurrent else " tokens/s: the median over evaluation windows (evaluation time left out); the plain "
              "loop's over its whole run."), ""]
    notes.append(f"Defaults' peak ÷ `--precision fp32` peak: {peaks['defaults'] / peaks['--precision fp32']:.2f} (target ≤ 1.3).")
    if "defaults, before the fix" in speeds and not concurrent:
        notes.append(f"Defaults' speed after ÷ before the fix (same run, same machine): "
                     f"{speeds['defaults'] / speeds['defaults, before the fix']:.2f} (code before: `{before}`).")
    if level.name == "word":
        notes += ["", "The cause of the growth before the fix, measured with glibc's heap statistics: "
                  "[train_memory_cause.md](train_memory_cause.md) (benchmarks/train_memory_cause.py). The number of rare "
                  "targets varies per batch, so the rare level's temporaries (13-20 MB each) took a new shape every step "
                  "and fragmented the heap; rnnlm/softmax.py pads those rows to a few bucket sizes and casts the decoder "
                  "to bf16 once per step."]
    if drawn:
        notes += ["", f"![resident memory over time]({level.page}.png)"]
    write_markdown(level.page, level.title, table, notes)
    samples = {run.name: {"seconds": [round(t, 1) for t in run.seconds], "rss_mib": [round(r, 1) for r in run.rss_mib]}
               for run in runs}
    (RESULTS / f"{level.page}_samples.json").write_text(json.dumps(samples) + "\n", encoding="utf-8")


def prepared_corpus(level: Level, work: Path, words: int, text: Path | None) -> tuple[Path, str]:
    """The level's corpus, prepared in `work`, and its description."""
    if level.name == "word":
        text, described = work / "zipf.txt", f"{TYPES:,}-type Zipfian corpus"
        zipf_corpus(text, words)
    else:
        text = text or DEFAULT_CORPORA / "tinyshakespeare" / "input.txt"
        described = text.name if text.parent.name == "corpora" else f"{text.parent.name}/{text.name}"
    subprocess.run([sys.executable, "-m", "rnnlm", "prepare", str(text), "-o", str(work / "prepared"), *level.prepare_options],
                   env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), check=True)
    return work / "prepared", described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", choices=sorted(LEVELS), default="word")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per run")
    parser.add_argument("--concurrent", action="store_true", help="start every run at once (memory only, no speeds)")
    parser.add_argument("--before", type=Path, help="a directory holding an earlier rnnlm/ package, for the speed ratio")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--words", type=int, default=WORDS, help="word level: corpus size in words (fewer: a quick trial)")
    parser.add_argument("--text", type=Path, help="char level: the text file (default: tinyshakespeare from the mirror)")
    parser.add_argument("--reference-loop", type=Path, help=argparse.SUPPRESS)  # internal: run the plain loop here
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    level = LEVELS[args.level]
    if args.reference_loop:
        reference_loop(level, args.reference_loop, args.minutes, args.result)
        return
    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        work = Path(scratch)
        prepared, described = prepared_corpus(level, work, args.words, args.text)
        loop = Run("plain PyTorch loop (fp32, full softmax)", [sys.executable, __file__, "--level", level.name, "--reference-loop",
                   str(prepared), "--minutes", str(args.minutes), "--result", str(work / "reference.json")], REPOSITORY)
        configurations = list(level.configurations)
        if args.before is not None:
            configurations.insert(1, ("defaults, before the fix", ()))
        runs = [rnnlm_run(name, options, args.before if "before" in name else REPOSITORY, prepared, work, args.minutes)
                for name, options in configurations] + [loop]
        for batch in ([runs] if args.concurrent else [[run] for run in runs]):
            sample(batch, args.interval)
            for run in batch:
                read_speed(run)
        report(level, runs, args.minutes, plot(level, runs, args.minutes, described), args.before, args.concurrent)


if __name__ == "__main__":
    main()
