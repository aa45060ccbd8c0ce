"""Acceptance: on text from a known first-order Markov source, the model's held-out
cross-entropy per token comes within 3% of the source's exact entropy rate.

The source has six symbols plus the newline, and the newline is one of the Markov states,
so the character tokenizer's token stream (end-of-line tokens included) is the chain itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnlm.checkpoint import load_model
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.fileio import iter_text_chunks
from rnnlm.model import ModelConfig
from rnnlm.scoring import perplexity
from rnnlm.training import TrainConfig, train

SYMBOLS = "abcdef\n"
TRAIN_TOKENS = 200_000
VALID_TOKENS = 10_000
TEST_TOKENS = 20_000


def markov_source(seed: int = 2, concentration: float = 0.5) -> tuple[np.ndarray, np.ndarray, float]:
    """Transition matrix P (rows from a seeded Dirichlet), its stationary distribution and entropy rate."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(len(SYMBOLS), concentration), size=len(SYMBOLS))
    # stationary distribution: the left eigenvector of P for eigenvalue 1, normalised
    values, vectors = np.linalg.eig(P.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    pi = pi / pi.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(P > 0, P * np.log(P), 0.0)
    entropy_rate = float(-(pi[:, None] * plogp).sum())
    return P, pi, entropy_rate


def sample_chain(P: np.ndarray, pi: np.ndarray, n: int, rng: np.random.Generator) -> str:
    cumulative = np.cumsum(P, axis=1)
    cumulative[:, -1] = 1.0
    uniforms = rng.random(n)
    state = int(rng.choice(len(pi), p=pi))
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        state = int(np.searchsorted(cumulative[state], uniforms[i], side="right"))
        out[i] = state
    text = "".join(SYMBOLS[s] for s in out)
    return text if text.endswith("\n") else text + "\n"


def test_source_is_what_the_test_claims() -> None:
    P, pi, H = markov_source()
    assert np.allclose(P.sum(1), 1) and np.all(P > 0)
    assert np.allclose(pi @ P, pi, atol=1e-12) and np.all(pi > 0)
    assert 1.0 <= H <= 1.5
    # the entropy rate of a chain is below the entropy of its stationary distribution
    assert H < -(pi * np.log(pi)).sum()


def test_model_cross_entropy_approaches_the_entropy_rate(tmp_path) -> None:
    P, pi, H = markov_source()
    rng = np.random.default_rng(12345)
    texts = {name: sample_chain(P, pi, n, rng)
             for name, n in (("train", TRAIN_TOKENS), ("valid", VALID_TOKENS), ("test", TEST_TOKENS))}
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")

    corpus = prepare([str(tmp_path / "train.txt")], tmp_path / "prepared",
                     PrepareOptions(valid=str(tmp_path / "valid.txt")))
    assert corpus.tokenizer.vocab_size == len(SYMBOLS) + 1  # six symbols, end-of-line, unknown
    assert corpus.meta["splits"]["train"]["tokens"] == len(texts["train"])

    config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, cell="lstm", layers=1, embedding_size=16,
                         hidden_size=32, dropout=0.0, tie=False)
    result = train(corpus, tmp_path / "model", config,
                   TrainConfig(epochs=4, batch_size=32, bptt=64, lr=1e-2, warmup_steps=20, precision="fp32",
                               device="cpu", eval_interval=1000.0, random_seed=0))
    assert result.steps == 4 * math.ceil(((len(texts["train"]) - 1) // 32) / 64)

    loaded = load_model(tmp_path / "model")
    with (tmp_path / "test.txt").open("rb") as stream:
        measured = perplexity(loaded.model, loaded.tokenizer, iter_text_chunks(stream, "test"))
    assert measured.mode == "stream"
    assert measured.tokens == len(texts["test"]) >= TEST_TOKENS
    assert measured.oov == 0
    cross_entropy = measured.nll / measured.tokens
    print(f"model {cross_entropy:.4f} nats/token, source entropy rate {H:.4f} ({cross_entropy / H - 1:+.2%})")
    assert cross_entropy == pytest.approx(H, rel=0.03), f"model {cross_entropy:.4f} nats/token, source H = {H:.4f}"
