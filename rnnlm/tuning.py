"""Choosing the rescoring weights on references: the settings with the fewest word errors.

Each hypothesis's word errors against its reference (Levenshtein distance over whitespace words)
are counted once, and each model's log-probabilities are kept apart (rnnlm.combination.ModelLogprobs);
every candidate then only re-ranks stored scores, so the search costs arithmetic, not model time.
For each model weighting (and --lm-column weight) the whole grid of --lm-weight x --word-penalty
is searched, the penalty in proportion to the weight (lm-weight x -10 to 10 nats a word, step
0.25): it has to offset the LM's cost per word, which the weight scales. A word-level LM charges
4-7 nats a word, so a fixed range of penalties left a heavy LM weight no way to stay neutral about
hypothesis length, and tuning then chose to ignore the LM. The model weights and the column weight
are chosen by coordinate search: starting from the best of the default weighting and each model
alone, one coordinate at a time takes the best of its grid values, until a round improves nothing.
Every model alone (column weight 1) is a starting point, so the chosen combination never has more
errors than the best model alone; and without --lm-column a model alone never has more than the
first pass (lm-weight 0, word-penalty 0 is on the grid). Word error rate (WER) is
errors / reference words; sentence error rate (SER) is the share of utterances whose chosen
hypothesis has a word error. Tuning needs every n-best list at once: it holds them in memory,
unlike plain rescoring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rnnlm.combination import Combination, ModelLogprobs, model_logprobs
from rnnlm.errors import UserError
from rnnlm.rescoring import Hypothesis, RescoreSettings, Rescored, numbered_lines, rank
from rnnlm.tokenizers import count_words

LM_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(61))  # 0 to 3
PENALTY_PER_LM_WEIGHT = tuple(round(0.25 * i, 2) for i in range(-40, 41))  # -10 to 10 nats per word
MODEL_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # one model's share, the others keep their ratio
COLUMN_WEIGHTS = tuple(round(0.25 * i, 2) for i in range(13))  # 0 to 3
MAX_ROUNDS = 10


def word_penalties(lm_weight: float) -> list[float]:
    """The word penalties searched with an LM weight: that weight times -10 to 10 nats a word."""
    return sorted({round(lm_weight * per_weight, 4) for per_weight in PENALTY_PER_LM_WEIGHT})


def word_errors(hypothesis: Sequence[str], reference: Sequence[str]) -> int:
    """Substitutions, insertions and deletions that turn `hypothesis` into `reference` (fewest)."""
    previous = list(range(len(reference) + 1))
    for i, word in enumerate(hypothesis, start=1):
        current = [i]
        for j, wanted in enumerate(reference, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != wanted)))
        previous = current
    return previous[-1]


def read_references(chunks: Iterable[str], name: str) -> dict[str, str]:
    """utt-id -> reference text, from `utt-id<TAB>reference` lines."""
    references: dict[str, str] = {}
    for number, line in numbered_lines(chunks):
        utt_id, tab, text = line.partition("\t")
        if not tab or not utt_id:
            raise UserError(f"{name}: line {number}: expected utt-id<TAB>reference text")
        if utt_id in references:
            raise UserError(f"{name}: line {number}: utterance {utt_id!r} has a reference already")
        references[utt_id] = text
    return references


@dataclass
class Outcome:
    label: str
    errors: int
    reference_words: int
    wrong_sentences: int
    sentences: int

    @property
    def wer(self) -> float:
        return 100 * self.errors / max(1, self.reference_words)

    @property
    def ser(self) -> float:
        return 100 * self.wrong_sentences / max(1, self.sentences)

    def row(self) -> str:
        return f"{self.label:<48} WER {self.wer:6.2f}%  SER {self.ser:6.2f}%  ({self.errors} errors, {self.reference_words} words)"


@dataclass(frozen=True)
class Choice:
    """A point of the search: the rescoring settings and the model weights, with its word errors."""

    settings: RescoreSettings
    weights: tuple[float, ...]
    errors: int = 0

    def describe(self, column: bool) -> str:
        text = f"lm-weight {self.settings.lm_weight:g}, word-penalty {self.settings.word_penalty:g}"
        if len(self.weights) > 1:
            text += ", weights " + ",".join(f"{w:g}" for w in self.weights)
        return text + (f", column weight {self.settings.column_weight:g}" if column else "")

    def options(self, column: bool) -> str:
        """The command-line options that rescore with this choice."""
        text = f"--lm-weight {self.settings.lm_weight:g} --word-penalty {self.settings.word_penalty:g}"
        if len(self.weights) > 1:
            text += " --weights " + ",".join(f"{w:g}" for w in self.weights)
        return text + (f" --lm-column-weight {self.settings.column_weight:g}" if column else "")


class Tuner:
    """The n-best lists of every utterance with the models' log-probs and word errors, as flat arrays."""

    def __init__(self, groups: Sequence[Sequence[Hypothesis]], logprobs: ModelLogprobs, references: dict[str, str],
                 name: str, column: bool = False) -> None:
        missing = [group[0].utt_id for group in groups if group[0].utt_id not in references]
        if missing:
            raise UserError(f"{name}: has no reference for utterance {missing[0]!r} "
                            f"({len(missing)} of {len(groups)} utterances have none)")
        flat = [h for group in groups for h in group]
        self.logprobs = logprobs
        self.column = column
        self.first_pass = np.array([h.first_pass for h in flat])
        self.column_scores = np.array([h.column for h in flat])
        self.words = np.array([count_words(h.text) for h in flat], dtype=np.float64)
        self.errors = np.array([word_errors(h.text.split(), references[h.utt_id].split()) for h in flat])
        self.starts = np.cumsum([0] + [len(group) for group in groups[:-1]])
        longest = max(len(group) for group in groups)
        self.slots = np.full((len(groups), longest), len(flat))  # each utterance's hypotheses; past its end: a slot of -inf
        for row, (start, group) in enumerate(zip(self.starts, groups)):
            self.slots[row, : len(group)] = np.arange(start, start + len(group))
        self.reference_words = sum(count_words(references[group[0].utt_id]) for group in groups)
        self.models = len(logprobs.per_line)
        self._lm: dict[tuple[float, ...], np.ndarray] = {}
        self._points: dict[tuple[tuple[float, ...], float], Choice] = {}

    def lm(self, weights: tuple[float, ...]) -> np.ndarray:
        """Each hypothesis's combined LM score under these model weights."""
        if weights not in self._lm:
            self._lm[weights] = self.logprobs.combined(weights)
        return self._lm[weights]

    def scores(self, choice: Choice) -> np.ndarray:
        """New scores, in the order of RescoreSettings.score."""
        s = choice.settings
        return self.first_pass + s.lm_weight * self.lm(choice.weights) + s.column_weight * self.column_scores \
            + s.word_penalty * self.words

    def outcome(self, label: str, scores: np.ndarray) -> Outcome:
        """The errors of the best-scored hypothesis of each utterance (ties: the earlier one)."""
        chosen = self._chosen(scores[None, :])[0]
        return Outcome(label, int(self.errors[chosen].sum()), self.reference_words,
                       int(np.count_nonzero(self.errors[chosen])), len(self.starts))

    def oracle(self) -> Outcome:
        fewest = np.minimum.reduceat(self.errors, self.starts)
        return Outcome("oracle (fewest errors in each n-best list)", int(fewest.sum()), self.reference_words,
                       int(np.count_nonzero(fewest)), len(self.starts))

    def _chosen(self, scores: np.ndarray) -> np.ndarray:
        """For each row of scores, the index of each utterance's best hypothesis (ties: the earlier,
        as argmax takes the first maximum)."""
        padded = np.concatenate([scores, np.full((len(scores), 1), -np.inf)], axis=1)[:, self.slots]
        return self.slots[np.arange(len(self.slots)), padded.argmax(axis=2)]

    def point(self, weights: tuple[float, ...], column_weight: float) -> Choice:
        """The best lm-weight and word-penalty for these model and column weights: the fewest errors;
        of equals, the smallest penalty, then the lm-weight nearest 1."""
        key = (weights, column_weight)
        if key not in self._points:
            lm = self.lm(weights)
            best: tuple[int, float, float] | None = None
            for lm_weight in LM_WEIGHTS:
                penalties = word_penalties(lm_weight)
                base = self.first_pass + lm_weight * lm + column_weight * self.column_scores
                rows = base[None, :] + np.array(penalties)[:, None] * self.words[None, :]
                errors = self.errors[self._chosen(rows)].sum(axis=1)
                for penalty, count in zip(penalties, errors.tolist()):
                    candidate = (count, abs(penalty), abs(lm_weight - 1), lm_weight, penalty)
                    best = candidate if best is None or candidate[:3] < best[:3] else best
            assert best is not None
            self._points[key] = Choice(RescoreSettings(best[3], best[4], column_weight), weights, best[0])
        return self._points[key]

    def alone(self, model: int) -> Choice:
        """One model with its own best lm-weight and word-penalty (column weight 1)."""
        return self.point(tuple(float(i == model) for i in range(self.models)), 1.0)

    def search(self, start: Sequence[float]) -> Choice:
        """Coordinate search from the best of `start` (the default weighting) and each model alone."""
        best = self.point(tuple(start), 1.0)
        if self.models > 1:
            best = _fewest(best, [self.alone(i) for i in range(self.models)])
        for _ in range(MAX_ROUNDS):
            before = best.errors
            for model in range(self.models if self.models > 1 else 0):
                best = _fewest(best, [self.point(_shifted(best.weights, model, share), best.settings.column_weight)
                                      for share in MODEL_WEIGHTS])
            if self.column:
                best = _fewest(best, [self.point(best.weights, c) for c in COLUMN_WEIGHTS])
            if best.errors == before:
                break
        return best

    def report(self, chosen: Choice, default: Choice, names: Sequence[str]) -> list[str]:
        """The table: oracle, first pass, the defaults, each model alone (several) and the chosen values."""
        rows = [self.oracle(), self.outcome("first pass", self.first_pass),
                self.outcome(default.describe(self.column), self.scores(default))]
        if self.models > 1:
            rows += [self.outcome(f"{name} alone: {self.alone(i).describe(False)}", self.scores(self.alone(i)))
                     for i, name in enumerate(names)]
        rows.append(self.outcome(f"{chosen.describe(self.column)} (chosen)", self.scores(chosen)))
        return [row.row() for row in rows]


def _fewest(current: Choice, candidates: Iterable[Choice]) -> Choice:
    """The candidate with the fewest errors, if it has fewer than `current` (ties keep `current`)."""
    for candidate in candidates:
        if candidate.errors < current.errors:
            current = candidate
    return current


def _shifted(weights: tuple[float, ...], model: int, share: float) -> tuple[float, ...]:
    """`model` gets `share` of a total weight of 1; the others split the rest in their current ratio."""
    others = sum(w for i, w in enumerate(weights) if i != model)
    rest = 1.0 - share
    shifted = [share if i == model else (w * rest / others if others else rest / (len(weights) - 1))
               for i, w in enumerate(weights)]
    return tuple(round(w, 6) for w in shifted)


def tune(utterances: Iterable[list[Hypothesis]], combination: Combination, references: dict[str, str], name: str,
         column: bool = False) -> tuple[Choice, list[str], list[list[Rescored]]]:
    """The chosen settings and model weights, the report table, and every utterance ranked with them."""
    groups = list(utterances)
    if not groups:
        raise UserError("the n-best list is empty: nothing to tune on")
    logprobs = model_logprobs(combination, [h.text for group in groups for h in group])
    tuner = Tuner(groups, logprobs, references, name, column)
    default = Choice(RescoreSettings(), tuple(combination.weights))
    chosen = tuner.search(combination.weights)
    table = tuner.report(chosen, default, [str(loaded.directory) for loaded in combination.models])
    lm = iter(tuner.lm(chosen.weights).tolist())
    return chosen, table, [rank(group, [next(lm) for _ in group], chosen.settings) for group in groups]
