"""Peak memory of `score` and `perplexity` on 10 MB and 100 MB of text, and of `sample` over
10,000 and 100,000 tokens: memory must not grow with the input or the output.

A small word model is trained for a few seconds on a Zipfian corpus (the spelling of
benchmarks/train_memory.py); the inputs are more lines drawn the same way. Each command runs in
its own process; its peak is the kernel's count for that process (wait4's ru_maxrss), taken
from a parent that never loads torch, so that no inherited peak hides in it. The reference is
the same command on the smaller input, in the same run.

    python benchmarks/score_memory.py [--small-mb 10] [--large-mb 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_markdown
from train_memory import REPOSITORY, zipf_corpus

TYPES = 5_000
TRAIN_WORDS = 200_000
BYTES_PER_WORD = 4.5  # a space and about 3.5 letters, for this vocabulary


def peak_of(command: list[str], cwd: Path) -> tuple[float, float]:
    """Peak resident memory (MiB) and seconds of `command`, its output discarded."""
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: nothing blocks however much is written
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{errors.read().decode('utf-8', 'replace')[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-mb", type=float, default=10.0)
    parser.add_argument("--large-mb", type=float, default=100.0)
    parser.add_argument("--tokens", type=int, nargs=2, default=[10_000, 100_000], help="sample lengths to compare")
    args = parser.parse_args()
    rnnlm = [sys.executable, "-m", "rnnlm"]
    with tempfile.TemporaryDirectory(prefix="score-memory-") as scratch:
        work = Path(scratch)
        zipf_corpus(work / "train.txt", TRAIN_WORDS, TYPES)
        subprocess.run([*rnnlm, "train", "train.txt", "-o", "model", "--tokenizer", "word", "--hidden-size", "64",
                        "--layers", "1", "--max-time", "20s"], cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))
        sizes = {"small": args.small_mb, "large": args.large_mb}
        for name, megabytes in sizes.items():
            zipf_corpus(work / f"{name}.txt", int(megabytes * 1e6 / BYTES_PER_WORD), TYPES, seed=1)
        rows = [["command", f"peak at {args.small_mb:g} MB / {args.tokens[0]:,} tokens (MiB)",
                 f"peak at {args.large_mb:g} MB / {args.tokens[1]:,} tokens (MiB)", "large ÷ small", "seconds (small, large)"]]
        jobs = {"score": lambda size: [*rnnlm, "score", f"{size}.txt", "-m", "model"],
                "perplexity": lambda size: [*rnnlm, "perplexity", f"{size}.txt", "-m", "model"]}
        for label, command in jobs.items():
            (small, small_s), (large, large_s) = (peak_of(command(size), work) for size in sizes)
            rows.append([f"`rnnlm {label}`", f"{small:,.0f}", f"{large:,.0f}", f"{large / small:.3f}", f"{small_s:.0f}, {large_s:.0f}"])
        (small, small_s), (large, large_s) = (peak_of([*rnnlm, "sample", "-m", "model", "--length", str(n), "--random-seed", "1"], work)
                                              for n in args.tokens)
        rows.append(["`rnnlm sample`", f"{small:,.0f}", f"{large:,.0f}", f"{large / small:.3f}", f"{small_s:.0f}, {large_s:.0f}"])
    notes = [f"Inputs: Zipfian text over {TYPES:,} word types (about {args.small_mb:g} and {args.large_mb:g} MB); the model: "
             f"a 1x64 LSTM word model trained for 20 s on {TRAIN_WORDS:,} words. Target: large ÷ small within 1.10."]
    write_markdown("score_memory", "Scoring and sampling memory against input and output length", rows, notes)


if __name__ == "__main__":
    main()
