"""Resident memory of word-level training over time, against a plain PyTorch loop.

A synthetic corpus with a large vocabulary: 2,000,000 words drawn from a Zipf distribution
(exponent 1) over 33,278 word types, the size of a standard word-level benchmark. `rnnlm train`
runs for a fixed time with its defaults (bf16 autocast where the CPU has it, the clustered
softmax), with `--precision fp32`, and with `--softmax-head 0`; a plain PyTorch loop (2x256
LSTM, tied, full softmax, fp32, SGD, 20 streams of 35 words) is the reference. Each runs in its
own process, whose resident memory is sampled every few seconds. With `--before DIR` (a copy of
an earlier rnnlm/ package) the defaults run once more with that code, for the speed ratio.

    python benchmarks/train_memory.py [--minutes 15] [--before /tmp/before20] [--words 2000000]
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

from common import RESULTS, write_markdown

REPOSITORY = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
TYPES = 33_278
WORDS = 2_000_000
WORDS_PER_LINE = 20
VALID_FRACTION = "0.002"  # 4,000 words: on a loaded 2-core machine a larger split's evaluations took most of the time
EVAL_INTERVAL = "30s"  # the same for every run, so that each spends its minutes training


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
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    tokens_per_s: float = 0.0
    reported_peak_mib: float | None = None

    def at(self, seconds: float) -> float:
        """The resident memory sampled last before `seconds`."""
        return max((r for t, r in zip(self.seconds, self.rss_mib) if t <= seconds), default=self.rss_mib[0])

    def growth(self) -> float:
        """From minute 1 (the largest sample up to it) to the end."""
        first_minute = max(r for t, r in zip(self.seconds, self.rss_mib) if t <= 60)
        return self.rss_mib[-1] / first_minute - 1


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / MIB


def sample(name: str, command: list[str], package_root: Path, interval: float) -> Run:
    """Run `command` with `package_root` first on the path, sampling its resident memory."""
    env = dict(os.environ, PYTHONPATH=str(package_root))
    run = Run(name)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None:
        try:
            run.rss_mib.append(rss_mib(process.pid))
            run.seconds.append(time.perf_counter() - started)
        except OSError:
            break
        time.sleep(interval)
    output = process.communicate()[0]
    if process.returncode:
        raise SystemExit(f"{name} failed:\n{output[-3000:]}")
    print(f"{name}: peak {max(run.rss_mib):,.0f} MiB", flush=True)
    return run


def train_rnnlm(name: str, prepared: Path, work: Path, minutes: float, options: list[str], package_root: Path,
                interval: float) -> Run:
    output = work / name.replace(" ", "_").replace("/", "")
    command = [sys.executable, "-m", "rnnlm", "train", str(prepared), "-o", str(output), "--max-time", f"{minutes * 60:.0f}s",
               "--device", "cpu", "--eval-interval", EVAL_INTERVAL, *options]
    run = sample(name, command, package_root, interval)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    speeds = [record["tokens_per_s"] for record in records[1:]] or [records[-1]["tokens_per_s"]]
    run.tokens_per_s = float(np.median(speeds))  # training windows only: evaluation time is left out
    run.reported_peak_mib = records[-1].get("peak_rss_mb")
    return run


def reference_loop(prepared: Path, minutes: float, result: Path) -> None:
    """The word model a user writes from the PyTorch examples: 2x256 LSTM, tied, one full
    softmax, fp32, SGD at rate 20, clipping at 0.25, 20 streams of 35 words."""
    import torch
    from torch import nn

    from rnnlm.data import load_prepared

    corpus = load_prepared(prepared)
    tokens = torch.from_numpy(np.asarray(corpus.splits["train"], dtype=np.int64))
    vocab, size, rows, window = corpus.tokenizer.vocab_size, 256, 20, 35
    streams = tokens[: len(tokens) // rows * rows].view(rows, -1)
    torch.manual_seed(0)
    embedding, lstm, decoder = nn.Embedding(vocab, size), nn.LSTM(size, size, 2, batch_first=True, dropout=0.3), nn.Linear(size, vocab)
    decoder.weight = embedding.weight
    drop = nn.Dropout(0.3)
    parameters = [*embedding.parameters(), *lstm.parameters(), decoder.bias]
    optimizer = torch.optim.SGD(parameters, lr=20)
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
        nn.utils.clip_grad_norm_(parameters, 0.25)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        column += window
        seen += y.numel()
    result.write_text(json.dumps({"tokens_per_s": seen / (time.perf_counter() - started)}), encoding="utf-8")


def plot(runs: list[Run], path: Path, minutes: float) -> bool:
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
    axes.set_title(f"Word-level training, 33,278-type Zipfian corpus, {minutes:g} minutes per run")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def report(runs: list[Run], minutes: float, drawn: bool, before: Path | None) -> None:
    reference = next(run for run in runs if run.name.startswith("plain"))
    speeds = {run.name: run.tokens_per_s for run in runs}
    table = [["run", "peak RSS (MiB, sampled)", "peak_rss_mb (metrics)", "RSS at minute 1 (MiB)", "RSS at end (MiB)",
              "growth minute 1 to end", "tokens/s", "× plain loop's tokens/s"]]
    for run in runs:
        reported = f"{run.reported_peak_mib:,.0f}" if run.reported_peak_mib else "-"
        table.append([run.name, f"{max(run.rss_mib):,.0f}", reported, f"{run.at(60):,.0f}", f"{run.rss_mib[-1]:,.0f}",
                      f"{run.growth():+.1%}", f"{run.tokens_per_s:,.0f}", f"{run.tokens_per_s / reference.tokens_per_s:.2f}"])
    peaks = {run.name: max(run.rss_mib) for run in runs}
    notes = [f"Each run trains for {minutes:g} minutes in its own process; resident memory (RSS, from /proc) is sampled "
             "every few seconds. Growth compares the last sample with the largest in the first minute. "
             "tokens/s: the median over evaluation windows (evaluation time left out); the plain loop's over its whole run.",
             ""]
    if "--precision fp32" in peaks:
        notes.append(f"Defaults' peak ÷ `--precision fp32` peak: {peaks['defaults'] / peaks['--precision fp32']:.2f} (target ≤ 1.3).")
    if "defaults, before the fix" in speeds:
        notes.append(f"Defaults' speed after ÷ before the fix (same run, same machine): "
                     f"{speeds['defaults'] / speeds['defaults, before the fix']:.2f} (code before: `{before}`).")
    notes += ["", "The cause of the growth before the fix, measured with glibc's heap statistics: "
              "[train_memory_cause.md](train_memory_cause.md) (benchmarks/train_memory_cause.py). The number of rare "
              "targets varies per batch, so the rare level's temporaries (13-20 MB each) took a new shape every step "
              "and fragmented the heap; rnnlm/softmax.py pads those rows to a few bucket sizes and casts the decoder "
              "to bf16 once per step."]
    if drawn:
        notes += ["", "![resident memory over time](train_memory.png)"]
    write_markdown("train_memory", "Training memory: a large-vocabulary word corpus", table, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per run")
    parser.add_argument("--before", type=Path, help="a directory holding an earlier rnnlm/ package, for the speed ratio")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--words", type=int, default=WORDS, help="corpus size in words (fewer: a quick trial)")
    parser.add_argument("--reference-loop", type=Path, help=argparse.SUPPRESS)  # internal: run the plain loop here
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_loop:
        reference_loop(args.reference_loop, args.minutes, args.result)
        return
    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        work = Path(scratch)
        zipf_corpus(work / "zipf.txt", args.words)
        subprocess.run([sys.executable, "-m", "rnnlm", "prepare", str(work / "zipf.txt"), "-o", str(work / "prepared"),
                        "--tokenizer", "word", "--valid-fraction", VALID_FRACTION], env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), check=True)
        result = work / "reference.json"
        loop = sample("plain PyTorch loop (fp32, full softmax)", [sys.executable, __file__, "--reference-loop", str(work / "prepared"),
                      "--minutes", str(args.minutes), "--result", str(result)], REPOSITORY, args.interval)
        loop.tokens_per_s = json.loads(result.read_text(encoding="utf-8"))["tokens_per_s"]
        configurations = [("defaults", [], REPOSITORY), ("defaults, before the fix", [], args.before),
                          ("--precision fp32", ["--precision", "fp32"], REPOSITORY),
                          ("--softmax-head 0", ["--softmax-head", "0"], REPOSITORY)]
        runs = [loop]
        for name, options, package in configurations:
            if package is not None:
                runs.insert(-1, train_rnnlm(name, work / "prepared", work, args.minutes, options, package, args.interval))
                report(runs, args.minutes, plot(runs, RESULTS / "train_memory.png", args.minutes), args.before)  # so far


if __name__ == "__main__":
    main()
