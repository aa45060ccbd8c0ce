"""PTB word level (Mikolov's 10k-word version): test perplexity after a wall-clock budget of training.

`rnnlm train ptb` with its defaults, once per budget, against the pytorch/examples
reference loop (see quality.py) run in the same benchmark; writes results/ptb.md and ptb.png.

    python benchmarks/ptb.py [--budgets 8 30] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import DEFAULT_CORPORA
from quality import Corpus, benchmark

OPTIONS: list[str] = []  # the defaults, which follow the corpus and the budget


def ptb(corpora: Path) -> Corpus:
    """Words with an end-of-sentence token after each line; the 10,000 types of the training split."""
    def words(name: str) -> list[str]:
        return [w for line in (corpora / "ptb" / name).read_text(encoding="utf-8").splitlines() for w in [*line.split(), "<eos>"]]

    splits = {name: words(f"ptb.{name}.txt") for name in ("train", "valid", "test")}
    index = {word: i for i, word in enumerate(sorted(set(splits["train"])))}
    ids = {name: np.array([index[w] for w in split]) for name, split in splits.items()}
    return Corpus("ptb", "ppl", ids["train"], ids["valid"], ids["test"], len(index),
                  ["ptb", "--mirror", str(corpora)], "ptb", corpora / "ptb" / "ptb.test.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[8.0, 30.0], help="training budgets in minutes")
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        benchmark(ptb(args.corpora), args.budgets, OPTIONS, Path(workdir), "PTB word level: test perplexity by training budget",
                  ceiling=300.0)


if __name__ == "__main__":
    main()
