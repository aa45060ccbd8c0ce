"""One huge line: time and peak memory of `rnnlm score` and `rnnlm perplexity` on a single line
of 1 MB and of 10 MB, against the same text spread over ordinary lines.

Each command runs as its own process (as a user runs it), on one generated line of words and
on the same characters with a newline in place of every 16th space (ordinary lines of about
80 characters: the same number of tokens for a character model). Time is wall-clock; peak
memory is the process's maximum resident set (ru_maxrss), which includes Python, torch and
the model. A run on one short line gives the floor that every command starts from. Reading
a line a slice of text and a window of tokens at a time, the 10 MB line should take about ten
times the 1 MB line and about the same memory; the ordinary lines are scored in batches of
many lines at once, which one line, read in order through a recurrent network, cannot be.

    python benchmarks/long_lines.py [--model DIR] [--sizes 1 10] [--repeats 2]

Without --model, a small character LSTM (2 layers of 64) is trained for --train-seconds on a
generated corpus in a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_markdown

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat and dog ran to is it not so big small red blue over under with from "
         "house garden river morning evening little green old new bright dark quick slow").split()
LINE_WORDS = 16  # words per ordinary line in the reference text


def environment() -> dict[str, str]:
    """The children's environment: this checkout's rnnlm, one thread, their own user state."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def generated_text(chars: int, seed: int) -> str:
    """Random words separated by single spaces, cut to `chars` characters (ASCII: one byte each)."""
    rng = random.Random(seed)
    words = []
    length = 0
    while length <= chars:
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)[:chars].rstrip() + "x"  # the line does not end in a space


def ordinary_lines(line: str) -> str:
    """The same characters with a newline for every LINE_WORDS-th space."""
    words = line.split(" ")
    return "\n".join(" ".join(words[i : i + LINE_WORDS]) for i in range(0, len(words), LINE_WORDS))


def train_model(directory: Path, seconds: int, env: dict[str, str]) -> Path:
    corpus = directory / "corpus.txt"
    lines = (generated_text(60 + 7 * (seed % 13), seed) for seed in range(6000))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = directory / "model"
    subprocess.run([sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", str(model), "--max-time", f"{seconds}s",
                    "--hidden-size", "64", "--embedding-size", "32", "--tokenizer", "char"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return model


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall-clock seconds, peak resident memory (MiB) and standard output of `rnnlm ARGS`."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "rnnlm", *args], stdout=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise SystemExit(f"rnnlm {' '.join(args)} failed with exit code {process.returncode}")
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024, out.read().decode("utf-8")


def measure_once(command: str, path: Path, model: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds, peak MiB and total NLL (nats) of one command on one file."""
    if command == "score":
        seconds, peak, out = run(["score", str(path), "-m", str(model), "--format", "value"], env)
        return seconds, peak, -sum(float(value) for value in out.split())
    seconds, peak, out = run(["perplexity", str(path), "-m", str(model), "--json"], env)
    return seconds, peak, json.loads(out)["nll"]


def measure(command: str, path: Path, model: Path, env: dict[str, str], repeats: int) -> tuple[float, float, float]:
    """The fastest of `repeats` runs (the one least slowed by other work on a shared machine), the largest peak."""
    runs = [measure_once(command, path, model, env) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: train a small one first)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 10], help="line sizes in MB (10^6 bytes)")
    parser.add_argument("--train-seconds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the fastest is kept)")
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="rnnlm-long-lines-") as scratch:
        work = Path(scratch)
        env["RNNLM_HOME"] = str(work / "home")  # the user's latest-model pointer and cache stay as they are
        env["RNNLM_CACHE_DIR"] = str(work / "cache")
        model = args.model or train_model(work, args.train_seconds, env)
        rows, notes = measure_sizes(work, model, args.sizes, env, args.repeats)
    table = [["command", "input", "seconds", "characters/s", "peak RSS (MiB)", "total NLL (nats)"], *rows]
    write_markdown("long_lines", "One huge line: score and perplexity on a single line of "
                   + " and ".join(f"{size:g} MB" for size in args.sizes), table, notes)


def measure_sizes(work: Path, model: Path, sizes: list[float], env: dict[str, str],
                  repeats: int) -> tuple[list[list[str]], list[str]]:
    """The table's rows (a floor run, then each size as one line and as ordinary lines) and the ratios."""
    floor = work / "short.txt"
    floor.write_text("the cat sat on a mat\n", encoding="utf-8")
    rows = []
    results: dict[tuple[str, str, float], tuple[float, float, float]] = {}
    for command in ("score", "perplexity"):
        seconds, peak, nll = measure(command, floor, model, env, repeats + 1)
        results[command, "floor", 0.0] = seconds, peak, nll
        rows.append([f"`{command}`", "one short line (the floor)", f"{seconds:.1f}", "", f"{peak:.0f}", f"{nll:.2f}"])
    for size in sizes:
        line = generated_text(int(size * 1e6), seed=int(size * 1000))
        inputs = {"one line": line + "\n", "ordinary lines": ordinary_lines(line) + "\n"}
        for shape, text in inputs.items():
            path = work / f"{shape.replace(' ', '-')}-{size:g}MB.txt"
            path.write_text(text, encoding="utf-8")
            for command in ("score", "perplexity"):
                seconds, peak, nll = measure(command, path, model, env, repeats)
                results[command, shape, size] = seconds, peak, nll
                rows.append([f"`{command}`", f"{size:g} MB, {shape}", f"{seconds:.1f}", f"{len(text) / seconds:,.0f}",
                             f"{peak:.0f}", f"{nll:.2f}"])
            path.unlink()
    return rows, ratio_notes(results, sizes, model, repeats)


def ratio_notes(results: dict[tuple[str, str, float], tuple[float, float, float]], sizes: list[float],
                model: Path, repeats: int) -> list[str]:
    config = json.loads((model / "config.json").read_text())["model"]
    notes = [f"Model: {config['cell']} {config['layers']}×{config['hidden_size']}, embedding {config['embedding_size']}, "
             f"vocabulary {config['vocab_size']} (a character model: one token per character, newline included); "
             f"each command is a new process with OMP_NUM_THREADS=1; seconds are the fastest of {repeats} runs "
             f"({repeats + 1} for the floor), peak RSS the largest. Peak RSS includes Python, torch and the model, "
             "and the floor's time their start (the floor row).", ""]
    small, large = min(sizes), max(sizes)
    for command in ("score", "perplexity"):
        line_small, line_large = results[command, "one line", small], results[command, "one line", large]
        lines_large = results[command, "ordinary lines", large]
        start = results[command, "floor", 0.0][0]
        notes.append(f"- `{command}`, one line, {large:g} MB against {small:g} MB: "
                     f"**{(line_large[0] - start) / (line_small[0] - start):.1f}× the time** beyond the floor's "
                     f"({line_large[0] / line_small[0]:.1f}× in all) for {large / small:g}× the text, "
                     f"**{line_large[1] / line_small[1]:.2f}× the peak memory**; "
                     f"against the same {large:g} MB in ordinary lines: {line_large[0] / lines_large[0]:.1f}× the "
                     f"time, {line_large[1] / lines_large[1]:.2f}× the peak memory.")
    notes += ["", "The ordinary lines go through the network many at a time (score: length-sorted batches of up to "
              "256 lines; perplexity: one running stream, like the single line), so for `score` the difference is "
              "batching, which a single line read in order through a recurrent network cannot have."]
    return notes


if __name__ == "__main__":
    main()
