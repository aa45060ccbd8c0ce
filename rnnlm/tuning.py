"""Choosing --lm-weight and --word-penalty on references: the grid point with the fewest word errors.

Each hypothesis's word errors against its reference (Levenshtein distance over whitespace words)
are counted once; every grid point then only re-ranks the stored scores, so the search costs
arithmetic, not model time. Word error rate (WER) is errors / reference words; sentence error
rate (SER) is the share of utterances whose chosen hypothesis has a word error. Tuning needs
every n-best list at once: it holds them in memory, unlike plain rescoring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rnnlm.errors import UserError
from rnnlm.rescoring import Hypothesis, RescoreSettings, Rescored, numbered_lines, rank
from rnnlm.tokenizers import count_words

LM_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(61))  # 0 to 3
WORD_PENALTIES = tuple(round(0.25 * i, 2) for i in range(-16, 17))  # -4 to 4


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

    def row(self) -> str:
        wer = 100 * self.errors / max(1, self.reference_words)
        ser = 100 * self.wrong_sentences / max(1, self.sentences)
        return f"{self.label:<40} WER {wer:6.2f}%  SER {ser:6.2f}%  ({self.errors} errors, {self.reference_words} words)"


class Tuner:
    """The n-best lists of every utterance with their LM log-probs and word errors, as flat arrays."""

    def __init__(self, groups: Sequence[Sequence[Hypothesis]], lm_logprobs: Sequence[Sequence[float]],
                 references: dict[str, str], name: str) -> None:
        missing = [group[0].utt_id for group in groups if group[0].utt_id not in references]
        if missing:
            raise UserError(f"{name}: has no reference for utterance {missing[0]!r} "
                            f"({len(missing)} of {len(groups)} utterances have none)")
        flat = [h for group in groups for h in group]
        self.first_pass = np.array([h.first_pass for h in flat])
        self.lm = np.array([lp for group in lm_logprobs for lp in group])
        self.words = np.array([count_words(h.text) for h in flat], dtype=np.float64)
        self.errors = np.array([word_errors(h.text.split(), references[h.utt_id].split()) for h in flat])
        self.starts = np.cumsum([0] + [len(group) for group in groups[:-1]])
        self.group_of = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
        self.reference_words = sum(count_words(references[group[0].utt_id]) for group in groups)

    def outcome(self, label: str, scores: np.ndarray) -> Outcome:
        """The errors of the best-scored hypothesis of each utterance (ties: the earlier one)."""
        chosen = self._chosen(scores)
        return Outcome(label, int(self.errors[chosen].sum()), self.reference_words,
                       int(np.count_nonzero(self.errors[chosen])), len(self.starts))

    def _chosen(self, scores: np.ndarray) -> np.ndarray:
        best = np.maximum.reduceat(scores, self.starts)[self.group_of]
        positions = np.where(scores == best, np.arange(len(scores)), len(scores))
        return np.minimum.reduceat(positions, self.starts)

    def scores(self, settings: RescoreSettings) -> np.ndarray:
        return self.first_pass + settings.lm_weight * self.lm + settings.word_penalty * self.words

    def best_settings(self) -> RescoreSettings:
        """The grid point with the fewest errors; of equals, the smallest penalty, then the weight nearest 1."""
        candidates = [RescoreSettings(w, p) for w in LM_WEIGHTS for p in WORD_PENALTIES]
        return min(candidates, key=lambda s: (self.outcome("", self.scores(s)).errors, abs(s.word_penalty),
                                              abs(s.lm_weight - 1)))

    def report(self, chosen: RescoreSettings) -> list[str]:
        """The table: oracle, first pass, the default combination and the chosen one."""
        oracle = Outcome("oracle (fewest errors in each n-best list)", 0, self.reference_words, 0, len(self.starts))
        oracle.errors = int(np.minimum.reduceat(self.errors, self.starts).sum())
        oracle.wrong_sentences = int(np.count_nonzero(np.minimum.reduceat(self.errors, self.starts)))
        rows = [oracle, self.outcome("first pass", self.first_pass),
                self.outcome("lm-weight 1, word-penalty 0", self.scores(RescoreSettings())),
                self.outcome(f"lm-weight {chosen.lm_weight:g}, word-penalty {chosen.word_penalty:g} (chosen)",
                             self.scores(chosen))]
        return [row.row() for row in rows]


def tune(results: Iterable[Sequence[Rescored]], references: dict[str, str], name: str,
         ) -> tuple[RescoreSettings, list[str], list[list[Rescored]]]:
    """The chosen settings, the report table, and every utterance ranked with the chosen settings."""
    groups, logprobs = [], []
    for group in results:
        groups.append([r.hypothesis for r in group])
        logprobs.append([r.lm_logprob for r in group])
    if not groups:
        raise UserError("the n-best list is empty: nothing to tune on")
    tuner = Tuner(groups, logprobs, references, name)
    chosen = tuner.best_settings()
    return chosen, tuner.report(chosen), [rank(g, lp, chosen) for g, lp in zip(groups, logprobs)]
