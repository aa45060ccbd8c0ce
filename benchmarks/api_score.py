"""How fast the Python API scores PTB test (`lm.score(lines)`), against `rnnlm score` on the same file.

Both score the same 3,761 lines with the same model directory, alternately, `--repeats` times each:
the command in a subprocess (`rnnlm score FILE --summary`, whose own tokens/s excludes its start-up
and model loading), the API in this process (`lm.score(open(FILE))`, timed from opening the file
to the last score, the model loaded beforehand). The two must agree on every score. Without
--model, a PTB model is trained first for --train-time with the defaults (speed does not depend
on how well it is trained).

    flock /tmp/rnnlm-bench.lock python benchmarks/api_score.py [--model DIR] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_CORPORA, write_markdown

import rnnlm

SUMMARY = re.compile(r"([\d,]+) lines, ([\d,]+) tokens .* ([\d,]+) tokens/s")


def train_model(corpora: Path, directory: Path, budget: str) -> Path:
    """A PTB word model trained with the defaults for `budget` (rnnlm train ptb --mirror CORPORA)."""
    command = [sys.executable, "-m", "rnnlm", "train", "ptb", "--mirror", str(corpora), "--max-time", budget,
               "-o", str(directory)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return directory


def command_line(model: Path, path: Path) -> tuple[float, int, list[float]]:
    """The command's own tokens/s (--summary), its token count and its scores."""
    completed = subprocess.run([sys.executable, "-m", "rnnlm", "score", str(path), "-m", str(model), "--format", "value",
                                "--summary"], capture_output=True, text=True, check=True)
    match = SUMMARY.search(completed.stderr)
    assert match, completed.stderr
    return float(match[3].replace(",", "")), int(match[2].replace(",", "")), list(map(float, completed.stdout.split()))


def api(lm: rnnlm.LanguageModel, path: Path, tokens: int) -> tuple[float, list[float]]:
    """lm.score over the open file, as tokens/s, and the scores."""
    started = time.perf_counter()
    with path.open(encoding="utf-8") as lines:
        scores = lm.score(lines)
    return tokens / (time.perf_counter() - started), scores


def measure(model: Path, path: Path, repeats: int) -> tuple[list[float], list[float], int]:
    """Alternate runs of the command and the API; their scores must agree (the command prints 6 decimals)."""
    lm = rnnlm.load(model, device="cpu")
    lm.score(["warm up"])
    cli_speeds, api_speeds = [], []
    for _ in range(repeats):
        speed, tokens, cli_scores = command_line(model, path)
        cli_speeds.append(speed)
        speed, api_scores = api(lm, path, tokens)
        api_speeds.append(speed)
        assert len(api_scores) == len(cli_scores)
        assert all(abs(a - c) <= 1e-5 + 1e-6 * abs(c) for a, c in zip(api_scores, cli_scores))
    return cli_speeds, api_speeds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA, help="folder with ptb/ptb.{train,test}.txt")
    parser.add_argument("--model", type=Path, help="a PTB model directory (default: train one for --train-time)")
    parser.add_argument("--train-time", default="1m", help="training budget when --model is not given")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = args.corpora / "ptb" / "ptb.test.txt"
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or train_model(args.corpora, Path(scratch) / "model", args.train_time)
        cli_speeds, api_speeds, tokens = measure(model, path, args.repeats)
        settings = rnnlm.load(model, device="cpu").config["model"]
    cli, api_speed = statistics.median(cli_speeds), statistics.median(api_speeds)
    table = [["scorer", "tokens/s (median)", "runs", "ratio to the command"],
             ["`rnnlm score FILE` (its --summary figure)", f"{cli:,.0f}", ", ".join(f"{s:,.0f}" for s in cli_speeds),
              "1.00"],
             ["`lm.score(open(FILE))`", f"{api_speed:,.0f}", ", ".join(f"{s:,.0f}" for s in api_speeds),
              f"**{api_speed / cli:.2f}×**"]]
    write_markdown("api_score", f"Python API against the command: scoring PTB test, {tokens:,} tokens", table, [
        f"Model: {settings['cell']} {settings['layers']}×{settings['hidden_size']}, vocabulary {settings['vocab_size']:,}, "
        f"softmax head {settings.get('softmax_head')} (trained with the defaults"
        f"{'' if args.model else ' for ' + args.train_time}); CPU, default torch threads in both.",
        "Tokens include one end-of-line token per line. Runs alternate (command, API) so that a change in the",
        "machine's load touches both; every API score equals the command's printed one (6 decimals).",
        "The target is a ratio of at least 0.9: the API calls the same batched scorer (rnnlm.scoring.score_lines,",
        "2,048 lines per call, as the command reads its input).",
    ])


if __name__ == "__main__":
    main()
