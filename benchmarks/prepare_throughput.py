"""How fast `rnnlm prepare` tokenizes a large corpus, and how much memory it needs, per tokenizer.

Builds a corpus of at least --size-gb gigabytes in a temporary folder by repeating a shared
corpus with its lines shuffled afresh each time, runs `rnnlm prepare` on it once per
tokenizer in a subprocess, and measures the wall time, the throughput (corpus bytes per
second), the CPU time of prepare and its workers (which, unlike wall time, does not grow
when other work shares the machine) and the peak memory: the largest resident set of the
process tree (sampled every 50 ms) and of any single process (wait4). The results go to
benchmarks/results/prepare_throughput.md; the temporary files are deleted.

    python benchmarks/prepare_throughput.py [--corpus ../shared/corpora/tinyshakespeare/input.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"
RESULTS = REPO / "benchmarks" / "results" / "prepare_throughput.md"
TOKENIZERS = ("char", "word", "bpe", "unigram")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build_corpus(source: Path, target: Path, size: int, seed: int = 0) -> int:
    """Write repetitions of `source`, each with its lines shuffled, until `size` bytes are reached."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    written = 0
    with target.open("w", encoding="utf-8") as out:
        while written < size:
            rng.shuffle(lines)
            block = "".join(lines)
            out.write(block)
            written += len(block.encode("utf-8"))
    return written


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


@dataclass
class Run:
    tokenizer: str
    seconds: float
    cpu_seconds: float
    peak_tree_bytes: int
    peak_process_bytes: int
    meta: dict


class PeakSampler(threading.Thread):
    """Samples a process tree's resident memory every 50 ms until stopped; `peak` holds the largest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> None:
        self.done.set()
        self.join()


def run_prepare(corpus: Path, output: Path, tokenizer: str) -> Run:
    """One `rnnlm prepare` in a subprocess, its process tree's memory sampled while it runs."""
    command = [sys.executable, "-m", "rnnlm", "prepare", str(corpus), "-o", str(output), "--tokenizer", tokenizer]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    sampler = PeakSampler(process.pid)
    sampler.start()
    stderr = process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"rnnlm prepare --tokenizer {tokenizer} failed:\n{stderr}")
    print(stderr.strip(), file=sys.stderr)
    meta = json.loads((output / "meta.json").read_text(encoding="utf-8"))
    return Run(tokenizer, seconds, usage.ru_utime + usage.ru_stime, sampler.peak, usage.ru_maxrss * 1024, meta)


def machine(load: tuple[float, ...]) -> dict[str, str]:
    """The machine and software, and the load average before the runs (imports torch: call after them)."""
    import numpy
    import sentencepiece
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "CPU": f"{cpu}, {len(os.sched_getaffinity(0))} cores available",
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.0f} GiB",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, "
                    f"sentencepiece {sentencepiece.__version__}, numpy {numpy.__version__}",
        "load average (1, 5, 15 min) before the runs": ", ".join(f"{x:.2f}" for x in load),
    }


def report(runs: list[Run], corpus_bytes: int, source: Path, info: dict[str, str], argv: list[str]) -> str:
    lines = [
        "# `rnnlm prepare` throughput and memory",
        "",
        f"Corpus: `{source.name}` repeated with its lines shuffled each time, {corpus_bytes / 1e9:.2f} GB "
        f"({corpus_bytes:,} bytes); default split (5% validation). Throughput is corpus bytes / wall time of the "
        "whole `rnnlm prepare` (line count, tokenizer training, encoding, writing). CPU time is that of prepare and "
        "its worker processes; corpus bytes / CPU time is what one otherwise idle core would deliver without "
        "workers. Peak memory: the largest resident set of the process tree (prepare and its workers together, "
        "sampled every 50 ms) and of any single process.",
        "",
        "| tokenizer | vocabulary | train tokens | wall time | throughput | CPU time | MB per CPU second "
        "| peak memory (tree) | largest process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.tokenizer} | {run.meta['vocab_size']:,} | {run.meta['splits']['train']['tokens']:,} | "
            f"{run.seconds:.1f} s | **{corpus_bytes / 1e6 / run.seconds:.1f} MB/s** | {run.cpu_seconds:.1f} s | "
            f"{corpus_bytes / 1e6 / run.cpu_seconds:.1f} | "
            f"{run.peak_tree_bytes / 2**20:,.0f} MiB | {run.peak_process_bytes / 2**20:,.0f} MiB |")
    lines += ["", "Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "Reproduce with:", "", "```sh", " ".join(["python", *argv]), "```", "",
              "Each tokenizer runs as `rnnlm prepare CORPUS -o DIR --tokenizer KIND` (OMP_NUM_THREADS=1).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text file to repeat (default: %(default)s)")
    parser.add_argument("--size-gb", type=float, default=1.0, help="corpus size in GB (default: %(default)s)")
    parser.add_argument("--tokenizers", nargs="+", default=list(TOKENIZERS), choices=TOKENIZERS)
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown report (default: %(default)s)")
    args = parser.parse_args()
    size = int(args.size_gb * 1e9)
    work = Path(tempfile.mkdtemp(prefix="rnnlm-bench-"))
    try:
        if shutil.disk_usage(work).free < 5 * size:  # the corpus, and up to twice its size in token ids
            sys.exit(f"{work}: needs {5 * size / 1e9:.0f} GB free")
        corpus_bytes = build_corpus(args.corpus, work / "corpus.txt", size)
        load = os.getloadavg()
        runs = []
        for tokenizer in args.tokenizers:
            runs.append(run_prepare(work / "corpus.txt", work / tokenizer, tokenizer))
            shutil.rmtree(work / tokenizer)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report(runs, corpus_bytes, args.corpus, machine(load), sys.argv), encoding="utf-8")
        print(args.output.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
