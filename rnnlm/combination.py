"""Several models scoring the same lines: a log-linear combination of their line log-probabilities.

Each model scores a line with its own tokenizer, from a fresh state; the combined score of a
line is sum_i weight_i * log P_i(line). With weights that sum to one (the default: equal
weights) this is the log of a weighted geometric mean of the models' probabilities, as a
forward + backward average is usually taken; it is a score, not a normalised log-probability.
Counts that depend on a tokenizer (tokens, OOV) are the first model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rnnlm.checkpoint import LoadedModel
from rnnlm.errors import InvalidOption
from rnnlm.scoring import LineScore, Perplexity, score_lines


@dataclass
class Combination:
    models: list[LoadedModel]
    weights: list[float]

    @property
    def first(self) -> LoadedModel:
        return self.models[0]


def parse_weights(text: str | None, count: int) -> list[float]:
    """The --weights list (comma-separated, one per model, each at least 0, not all 0); equal by default."""
    if text is None:
        return [1.0 / count] * count
    if count == 1:
        raise InvalidOption("--weights: combines several models; give -m two or more times")
    try:
        weights = [float(field) for field in text.split(",")]
    except ValueError:
        raise InvalidOption(f"--weights: expected {count} comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise InvalidOption(f"--weights: {len(weights)} weights given for {count} model(s)")
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise InvalidOption(f"--weights: each weight must be a finite number at least 0, not all 0; got {text!r}")
    return weights


def combined_line_scores(combination: Combination, lines: Sequence[str], detail: bool = False) -> list[LineScore]:
    """Each line's weighted sum of the models' log-probabilities; one model's scores pass through unchanged.

    Token detail (`detail`) belongs to one model: with several, the combined scores carry none
    (the command line refuses --per-token with several -m).
    """
    per_model = [score_lines(loaded.model, loaded.tokenizer, lines, detail) for loaded in combination.models]
    if len(per_model) == 1:
        return per_model[0]
    combined = []
    for scores in zip(*per_model):
        first = scores[0]
        combined.append(LineScore(
            logprob=_weighted(combination.weights, [s.logprob for s in scores]),
            tokens=first.tokens, oov=first.oov, words=first.words, chars=first.chars,
            oov_logprob=_weighted(combination.weights, [s.oov_logprob for s in scores]),
        ))
    return combined


def line_logprobs(combination: Combination, lines: list[str]) -> list[float]:
    """The combined line scores alone, as rescoring needs them."""
    return [score.logprob for score in combined_line_scores(combination, lines)]


def combined_perplexity(results: Sequence[Perplexity], weights: Sequence[float]) -> Perplexity:
    """The models' totals on one text, NLL combined as line scores are; counts are the first model's."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    return Perplexity(first.mode, nll=_weighted(weights, [r.nll for r in results]), tokens=first.tokens,
                      words=first.words, chars=first.chars, lines=first.lines, oov=first.oov,
                      oov_nll=_weighted(weights, [r.oov_nll for r in results]))


def _weighted(weights: Sequence[float], values: Sequence[float]) -> float:
    return sum(weight * value for weight, value in zip(weights, values))
