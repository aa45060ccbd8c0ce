"""Several models scoring the same lines: a log-linear or a linear combination of their probabilities.

Each model scores a line with its own tokenizer, from a fresh state. The log-linear combination
(--mix loglinear, the default) of a line is sum_i weight_i * log P_i(line); with weights that sum
to one (the default: equal weights) it is the log of a weighted geometric mean, as a forward +
backward average is usually taken: a score, not a normalised log-probability. The linear
combination (--mix linear) mixes token probabilities, p(token) = sum_i weight_i * p_i(token),
which is a normalised model again; it needs the models to read the same tokens in the same order
(the same tokenizer and direction) and weights that sum to one. Counts that depend on a tokenizer
(tokens, OOV) are the first model's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rnnlm.checkpoint import LoadedModel
from rnnlm.errors import InvalidOption
from rnnlm.fileio import split_lines
from rnnlm.config import DynamicEvaluation
from rnnlm.scoring import LineScore, Perplexity, PerplexityMeter, score_lines

MIXES = ("loglinear", "linear")
WEIGHT_SUM_TOLERANCE = 1e-6  # --mix linear: how far from one the weights may sum (printed weights round)


@dataclass
class Combination:
    models: list[LoadedModel]
    weights: list[float]
    mix: str = "loglinear"

    def __post_init__(self) -> None:
        if self.mix == "linear":
            check_mixable(self.models)

    @property
    def first(self) -> LoadedModel:
        return self.models[0]

    @property
    def linear(self) -> bool:
        """Token-level mixing applies (one model alone needs none)."""
        return self.mix == "linear" and len(self.models) > 1


def parse_weights(text: str | None, count: int, mix: str = "loglinear") -> list[float]:
    """The --weights list (comma-separated, one per model, each at least 0, not all 0); equal by default.

    A linear mixture is a probability only if the weights sum to one, so --mix linear requires it."""
    if text is None:
        return [1.0 / count] * count
    if count == 1:
        raise InvalidOption("weights", "combines several models; give `model` two or more times")
    try:
        weights = [float(field) for field in text.split(",")]
    except ValueError:
        raise InvalidOption("weights", f"must be {count} comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise InvalidOption("weights", f"gives {len(weights)} weights for {count} model(s)")
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise InvalidOption("weights", f"must each be a finite number at least 0, not all 0; got {text!r}")
    if mix == "linear" and abs(sum(weights) - 1) > WEIGHT_SUM_TOLERANCE:
        raise InvalidOption("weights", f"must sum to 1 with `mix` linear, which mixes probabilities; got {text!r}")
    return weights


def check_mixable(models: Sequence[LoadedModel]) -> None:
    """Token probabilities mix only when every model reads the same tokens in the same order."""
    first = models[0]
    for other in models[1:]:
        if other.tokenizer.to_dict() != first.tokenizer.to_dict():
            raise InvalidOption("mix", f"linear: {other.directory} has another tokenizer than {first.directory}; "
                                "token probabilities mix only over the same tokens (use loglinear)")
        if other.model.config.reverse != first.model.config.reverse:
            raise InvalidOption("mix", f"linear: {other.directory} reads lines in the other direction than "
                                f"{first.directory}; token probabilities mix only in one order (use loglinear)")


def mix_token_logprobs(weights: Sequence[float], logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """log sum_i w_i p_i(token) for each token, from each model's token log-probabilities (nats).

    Models of weight 0 drop out, so a weight of 1 returns that model's values unchanged."""
    rows = np.stack([values + math.log(w) for w, values in zip(weights, logprobs) if w > 0])
    top = rows.max(axis=0)
    return top + np.log(np.exp(rows - top).sum(axis=0))


def combined_line_scores(combination: Combination, lines: Sequence[str], detail: bool = False) -> list[LineScore]:
    """Each line's combined score; one model's scores pass through unchanged.

    Token detail (`detail`) exists for one model or a linear mixture (its mixed token
    log-probabilities); log-linear combined scores carry none (the command line refuses
    --per-token there)."""
    linear = combination.linear
    per_model = [score_lines(loaded.model, loaded.tokenizer, lines, detail or linear) for loaded in combination.models]
    if len(per_model) == 1:
        return per_model[0]
    if linear:
        return [_mixed_line(combination, scores, detail) for scores in zip(*per_model)]
    combined = []
    for scores in zip(*per_model):
        first = scores[0]
        combined.append(LineScore(
            logprob=_weighted(combination.weights, [s.logprob for s in scores]),
            tokens=first.tokens, oov=first.oov, words=first.words, chars=first.chars,
            oov_logprob=_weighted(combination.weights, [s.oov_logprob for s in scores]),
        ))
    return combined


def _mixed_line(combination: Combination, scores: Sequence[LineScore], detail: bool) -> LineScore:
    """One line under the linear mixture: its tokens' mixed log-probabilities, summed."""
    mixed = mix_token_logprobs(combination.weights, [np.asarray(s.token_logprobs) for s in scores])
    first = scores[0]
    unknown = np.asarray(first.token_ids) == combination.first.tokenizer.unk_id
    return LineScore(logprob=float(mixed.sum()), tokens=first.tokens, oov=first.oov, words=first.words,
                     chars=first.chars, oov_logprob=float(mixed[unknown].sum()),
                     token_ids=first.token_ids if detail else [], token_logprobs=mixed.tolist() if detail else [])


def line_logprobs(combination: Combination, lines: list[str]) -> list[float]:
    """The combined line scores alone, as rescoring needs them."""
    return [score.logprob for score in combined_line_scores(combination, lines)]


@dataclass
class ModelLogprobs:
    """Each model's log-probabilities of the same lines, kept apart so that the weights can still
    change (tuning): per line for a log-linear combination, per token for a linear one."""

    linear: bool
    per_line: np.ndarray  # (models, lines), nats
    per_token: np.ndarray  # (models, tokens of every line end to end); linear only, else (models, 0)
    line_starts: np.ndarray  # index in per_token of each line's first token

    def combined(self, weights: Sequence[float]) -> np.ndarray:
        """Each line's combined score with these weights."""
        if not self.linear:
            return sum(weight * row for weight, row in zip(weights, self.per_line))  # type: ignore[return-value]
        return np.add.reduceat(mix_token_logprobs(weights, list(self.per_token)), self.line_starts)


def model_logprobs(combination: Combination, lines: Sequence[str]) -> ModelLogprobs:
    linear = combination.linear
    per_model = [score_lines(loaded.model, loaded.tokenizer, lines, linear) for loaded in combination.models]
    per_line = np.array([[s.logprob for s in scores] for scores in per_model]).reshape(len(per_model), len(lines))
    if not linear:
        return ModelLogprobs(False, per_line, np.zeros((len(per_model), 0)), np.zeros(0, dtype=np.int64))
    per_token = np.array([np.concatenate([s.token_logprobs for s in scores]) for scores in per_model])
    starts = np.cumsum([0] + [s.tokens for s in per_model[0][:-1]])
    return ModelLogprobs(True, per_line, per_token, starts)


def combined_perplexity(combination: Combination, chunks: Iterable[str], independent_lines: bool = False,
                        dynamic: DynamicEvaluation | None = None) -> Perplexity:
    """The totals of a text (chunks ending on line boundaries) under the combination: the models
    read it side by side (rnnlm.scoring.PerplexityMeter) and their NLLs combine as line scores do;
    a linear mixture, which mixes tokens, sums its line scores (independent lines only)."""
    if combination.linear:
        if not independent_lines:
            raise InvalidOption("mix", "linear mixes the scores of independent lines; give `independent_lines`")
        result = Perplexity("independent-lines")
        for text in chunks:
            for score in combined_line_scores(combination, split_lines(text)):
                result.add_line(score)
        return result
    meters = [PerplexityMeter(m.model, m.tokenizer, independent_lines, dynamic) for m in combination.models]
    for text in chunks:
        for meter in meters:
            meter.add(text)
    results = [meter.finish() for meter in meters]
    if len(results) == 1:
        return results[0]
    first, weights = results[0], combination.weights
    return Perplexity(first.mode, nll=_weighted(weights, [r.nll for r in results]), tokens=first.tokens,
                      words=first.words, chars=first.chars, lines=first.lines, oov=first.oov,
                      oov_nll=_weighted(weights, [r.oov_nll for r in results]))


def _weighted(weights: Sequence[float], values: Sequence[float]) -> float:
    return sum(weight * value for weight, value in zip(weights, values))
