"""tinyshakespeare, characters, the first 90% for training and the rest held out (the
catalogue's split): bits per character on the held-out 10% after a wall-clock budget of training.

`rnnlm train` with the options below, once per budget, against the pytorch/examples
reference loop (see quality.py) run in the same benchmark; writes results/tinyshakespeare.md
and tinyshakespeare.png.

    python benchmarks/shakespeare.py [--budgets 15] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import DEFAULT_CORPORA
from quality import Corpus, benchmark

OPTIONS: list[str] = []  # the defaults


def tinyshakespeare(corpora: Path, workdir: Path) -> Corpus:
    """The catalogue's split (the first 90% of the characters train, the rest is held out), as
    character ids for the reference and as the held-out file `rnnlm perplexity` reads."""
    text = (corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    held_out = workdir / "valid.txt"
    held_out.write_text(text[cut:], encoding="utf-8")
    index = {char: i for i, char in enumerate(sorted(set(text[:cut])))}
    ids = {name: np.array([index[char] for char in part]) for name, part in (("train", text[:cut]), ("valid", text[cut:]))}
    # the held-out 10% is both the validation text and the one the figure is measured on, as in issue #2's split
    return Corpus("tinyshakespeare", "bpc", ids["train"], ids["valid"], ids["valid"], len(index),
                  ["tinyshakespeare", "--mirror", str(corpora)], "tinyshakespeare", held_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0], help="training budgets in minutes")
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        benchmark(tinyshakespeare(args.corpora, Path(workdir)), args.budgets, OPTIONS, Path(workdir),
                  "tinyshakespeare (90/10): held-out bits per character by training budget", ceiling=3.5)


if __name__ == "__main__":
    main()
