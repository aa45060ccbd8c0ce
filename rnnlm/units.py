"""The unit each kind of model is read in: perplexity per word for a word model (as word-LM papers
report it), bits per character for a character model, both for a subword model, whose tokens
are neither. Training progress, its summary, the model notice and `rnnlm models` all say a
validation figure this way, leading with it; nats per token stay beside it where space allows."""

from __future__ import annotations

import math

WORD_PERPLEXITY = "word_ppl"
BITS_PER_CHARACTER = "bpc"
NATURAL_UNITS = {"word": (WORD_PERPLEXITY,), "char": (BITS_PER_CHARACTER,)}
SUBWORD_UNITS = (WORD_PERPLEXITY, BITS_PER_CHARACTER)  # bpe, unigram and any later subword tokenizer
MAX_EXPONENT = 700.0  # math.exp overflows a float just above 709


def word_perplexity(nats_per_token: float, tokens: int, words: int) -> float:
    """exp(NLL / words), words counting one per line end."""
    return math.exp(min(nats_per_token * tokens / max(1, words), MAX_EXPONENT))


def bits_per_character(nats_per_token: float, tokens: int, chars: int) -> float:
    """NLL / characters / ln 2, characters being code points with the newline."""
    return nats_per_token * tokens / max(1, chars) / math.log(2)


def natural_units(tokenizer: str) -> tuple[str, ...]:
    """The figures a model of this tokenizer is read in, the one it is best known by first."""
    return NATURAL_UNITS.get(tokenizer, SUBWORD_UNITS)


def natural_text(tokenizer: str, word_ppl: float | None, bpc: float | None) -> str | None:
    """'perplexity 142.31 per word', '1.523 bits/char', or both for a subword model; None when
    the figures it needs are unknown (a model directory from an older rnnlm)."""
    texts = {WORD_PERPLEXITY: None if word_ppl is None else f"perplexity {word_ppl:.2f} per word",
             BITS_PER_CHARACTER: None if bpc is None else f"{bpc:.3f} bits/char"}
    parts = [texts[unit] for unit in natural_units(tokenizer)]
    return None if None in parts else ", ".join(parts)  # type: ignore[arg-type]
