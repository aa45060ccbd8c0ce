"""Every recurrent cell on tinyshakespeare and PTB at one wall-clock budget: what each costs and buys.

Each cell is trained with `rnnlm train CORPUS --cell CELL --max-time N` and the defaults otherwise
(the size rule of rnnlm.defaults follows the corpus and the budget, not the cell), then measured
with `rnnlm perplexity` on the held-out text: bits per character on tinyshakespeare's last 10%,
test perplexity per word on PTB. With --equal-parameters every other cell is trained a second
time at the hidden size whose parameter count is nearest the LSTM's, so that a cell's gain can be
told apart from its size. Runs take turns, one at a time; writes results/cells.md.

    python benchmarks/cells.py [--minutes 5] [--corpora ../shared/corpora] [--cells lstm sru]
                               [--only tinyshakespeare] [--equal-parameters]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_CORPORA, write_markdown
from ptb import ptb
from quality import Corpus, run_rnnlm
from shakespeare import tinyshakespeare

from rnnlm.cells import CELL_NAMES
from rnnlm.checkpoint import read_metrics
from rnnlm.info import ModelDetails, model_details
from rnnlm.model import ModelConfig
from rnnlm.sizing import parameter_count

HEADER = ["corpus", "cell", "layers × hidden", "parameters", "epochs", "tokens/s", "held-out figure", "command"]


def mean_tokens_per_second(model_dir: Path) -> float:
    """Training tokens over training seconds, from the last record of metrics.jsonl (validations included)."""
    last = read_metrics(model_dir)[-1]
    return last["tokens"] / last["elapsed_s"]


def run_cell(corpus: Corpus, cell: str, minutes: float, workdir: Path, hidden: int | None) -> tuple[ModelDetails, list[str]]:
    """Train and measure one cell; its model's description and its table row."""
    options = ["--cell", cell] + (["--hidden-size", str(hidden)] if hidden else [])
    cell_dir = workdir / f"{corpus.name}-{cell}-{hidden or 'default'}"
    cell_dir.mkdir(parents=True)
    _, figure, command = run_rnnlm(corpus, minutes, options, cell_dir)
    model_dir = cell_dir / f"{corpus.name}-{minutes:g}m"
    info = model_details(model_dir)
    unit = "ppl/word" if corpus.unit == "ppl" else "bits/char"
    row = [corpus.name, cell, f"{info.layers} × {info.hidden_size}", f"{info.parameters:,}", str(info.epochs_completed),
           f"{mean_tokens_per_second(model_dir):,.0f}", f"{figure:.3f} {unit}", f"`{command}`"]
    print(" | ".join(row), flush=True)
    return info, row


def matching_hidden_size(reference: ModelDetails, cell: str) -> int:
    """The hidden size (a multiple of 8) at which `cell` has the parameter count nearest the reference model's;
    a tied model's embedding follows its hidden size, an untied one keeps the reference's."""
    def parameters(hidden: int) -> int:
        embedding = hidden if reference.tie else reference.embedding_size
        return parameter_count(ModelConfig(reference.vocab_size, cell, reference.layers, embedding, hidden,  # type: ignore[arg-type]
                                           tie=bool(reference.tie), softmax_head=reference.softmax_head))
    return min(range(8, 4097, 8), key=lambda hidden: abs(parameters(hidden) - reference.parameters))


def corpus_rows(corpus: Corpus, cells: list[str], minutes: float, workdir: Path, equal_parameters: bool) -> list[list[str]]:
    """One row per cell at its default size; with equal_parameters, one more per cell at the LSTM's count."""
    infos: dict[str, ModelDetails] = {}
    rows: list[list[str]] = []
    for cell in cells:
        infos[cell], row = run_cell(corpus, cell, minutes, workdir, None)
        rows.append(row)
    if equal_parameters:
        reference = infos.get("lstm") or run_cell(corpus, "lstm", minutes, workdir, None)[0]
        for cell in (c for c in cells if c != "lstm"):
            rows.append(run_cell(corpus, cell, minutes, workdir, matching_hidden_size(reference, cell))[1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of every run")
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--cells", nargs="+", choices=CELL_NAMES, default=["lstm", "gru", "sru", "sru++", "mogrifier"])
    parser.add_argument("--only", choices=["tinyshakespeare", "ptb"], help="one corpus instead of both")
    parser.add_argument("--equal-parameters", action="store_true",
                        help="also train every other cell at the LSTM's parameter count")
    args = parser.parse_args()
    table = [HEADER]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpora = {"tinyshakespeare": lambda: tinyshakespeare(args.corpora, workdir), "ptb": lambda: ptb(args.corpora)}
        for name, corpus in corpora.items():
            if args.only in (None, name):
                table += corpus_rows(corpus(), args.cells, args.minutes, workdir, args.equal_parameters)
    notes = [
        f"Every run: a {args.minutes:g}-minute budget (validations included), the defaults otherwise; one run each, "
        "taking turns. Held-out figure: bits per character on tinyshakespeare's last 10% (the first 90% trains), "
        "test perplexity per word on PTB, each read as one stream by `rnnlm perplexity`.",
        "tokens/s: training tokens over training wall time, validations included. Parameters: every weight, "
        "embedding and softmax included. Rows with a hidden size other than the default: the size whose parameter "
        "count is nearest the LSTM's (--equal-parameters).",
    ]
    write_markdown("cells", f"Cells at a {args.minutes:g}-minute budget: held-out figure, size and speed", table, notes)


if __name__ == "__main__":
    main()
