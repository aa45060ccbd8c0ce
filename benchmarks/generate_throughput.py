"""Generation throughput of `rnnlm.generate` against the naive generator of the classic tutorials.

The char-rnn tutorials (Keras' lstm_text_generation and its many copies) make each new
character by running the last fixed window of characters through the network from a fresh
state. `rnnlm` runs the seed once and then feeds one token per step, carrying the recurrent
state. This times both on a 2-layer, 512-unit character LSTM with random weights (the speed
does not depend on the weights) and writes a Markdown table to benchmarks/results/.

Run from anywhere:  python benchmarks/generate_throughput.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from common import write_markdown
from rnnlm.config import SamplingConfig
from rnnlm.generate import generate
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.tokenizers import CharTokenizer, Tokenizer

# The characters of tinyshakespeare, newline aside: 64 characters, 66 tokens with end-of-line and unknown.
ALPHABET = " !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SEED = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n")


@torch.inference_mode()
def naive_window_generate(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str, length: int, window: int,
                          generator: torch.Generator) -> list[int]:
    """The tutorials' generator: every new character re-runs the last `window` characters from a fresh state."""
    ids = tokenizer.encode(seed_text).tolist()
    for _ in range(length):
        logits = model(torch.tensor([ids[-window:]])).logits
        probs = torch.softmax(logits[0, -1].float(), dim=-1)
        ids.append(int(torch.multinomial(probs, 1, generator=generator)))
    return ids[-length:]


def discard(text: str) -> None:
    """Stands in for writing the streamed text to standard output."""


def best_time(run: Callable[[], int], repeats: int) -> tuple[int, float]:
    """Tokens made by one run and the fastest of `repeats` timed runs, after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run()
        times.append(time.perf_counter() - start)
    return tokens, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=500, help="tokens per sample for rnnlm's generators")
    parser.add_argument("--naive-length", type=int, default=100, help="tokens for the (slow) naive generator")
    parser.add_argument("--window", type=int, default=100, help="characters the naive generator re-feeds")
    parser.add_argument("--streams", type=int, default=16, help="samples generated together as one batch")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per generator; the fastest counts")
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = CharTokenizer(ALPHABET)
    model = RNNLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, cell="lstm", layers=2, embedding_size=512,
                                         hidden_size=512, dropout=0.0, tie=True)).eval()

    def rnnlm_run(stream: bool = False, **settings: object) -> Callable[[], int]:
        config = SamplingConfig(length=args.length, random_seed=0, **settings)  # type: ignore[arg-type]

        def run() -> int:
            samples = generate(model, tokenizer, SEED, config, on_text=discard if stream else None)
            return sum(len(s.tokens) for s in samples)
        return run

    def naive_run() -> int:
        generator = torch.Generator().manual_seed(0)
        return len(naive_window_generate(model, tokenizer, SEED, args.naive_length, args.window, generator))

    rows = [
        ("rnnlm, 1 stream (text decoded and streamed as generated)", 1, rnnlm_run(stream=True)),
        (f"rnnlm, {args.streams} streams as one batch", args.streams, rnnlm_run(num_samples=args.streams)),
        (f"rnnlm, beam search, beam size {args.beam_size} (tokens of the best hypothesis)", args.beam_size,
         rnnlm_run(strategy="beam", beam_size=args.beam_size)),
        (f"naive: re-feed the last {args.window} characters for every character", 1, naive_run),
    ]
    results = [(name, rows_per_step, *best_time(run, args.repeats)) for name, rows_per_step, run in rows]
    naive_rate = results[-1][2] / results[-1][3]
    table = [["generator", "sequences per step", "tokens", "seconds", "tokens/s", "× naive"]]
    for name, rows_per_step, tokens, seconds in results:
        rate = tokens / seconds
        table.append([name, str(rows_per_step), f"{tokens:,}", f"{seconds:.3f}", f"{rate:,.0f}", f"{rate / naive_rate:,.1f}"])
    write_markdown("generate_throughput", "Generation throughput", table, [
        f"A 2-layer LSTM, 512 units, embedding 512 (tied decoder), {tokenizer.vocab_size} character tokens, "
        f"random weights, float32 on the CPU; sampling at temperature 1 from a {len(SEED)}-character seed. "
        f"Each generator ran once to warm up, then {args.repeats} times; the fastest run counts. Beam search "
        "counts the tokens of the hypothesis it returns (each step advances every hypothesis of the beam).",
    ])


if __name__ == "__main__":
    main()
