"""N-best rescoring: add a language model's line log-probabilities to a first-pass decoder's scores.

A hypothesis's new score is first-pass + lm_weight * LM log-prob + column_weight * column +
word_penalty * words, where the LM log-prob is the line log-probability `rnnlm score` prints
(natural log, end-of-line included; several models combine as rnnlm.combination says), the column
is an optional score the input already carries (--lm-column, e.g. an n-gram model's) and words are
the hypothesis's whitespace words. Input is
streamed: utterances are read as their hypotheses arrive (they must be consecutive), batched
across utterances for the model, and written in input order, so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from rnnlm.errors import InvalidOption, UserError
from rnnlm.fileio import split_lines
from rnnlm.tokenizers import count_words

BATCH_HYPOTHESES = 2048  # hypotheses scored together, across utterances


@dataclass
class Hypothesis:
    utt_id: str
    first_pass: float  # higher is better
    text: str
    column: float = 0.0  # the --lm-column score, when there is one


@dataclass
class Rescored:
    hypothesis: Hypothesis
    lm_logprob: float  # nats
    score: float
    rank: int  # 1: the best of its utterance


@dataclass
class RescoreSettings:
    lm_weight: float = 1.0
    word_penalty: float = 0.0
    column_weight: float = 1.0

    def validate(self) -> None:
        for argument, value in (("lm_weight", self.lm_weight), ("word_penalty", self.word_penalty),
                                ("lm_column_weight", self.column_weight)):
            if not math.isfinite(value):
                raise InvalidOption(argument, f"must be a finite number, got {value}")

    def score(self, hypothesis: Hypothesis, lm_logprob: float) -> float:
        return (hypothesis.first_pass + self.lm_weight * lm_logprob + self.column_weight * hypothesis.column
                + self.word_penalty * count_words(hypothesis.text))


def parse_tsv_line(line: str, number: int, name: str, lm_column: int | None = None) -> Hypothesis:
    """One `utt-id<TAB>first-pass-score<TAB>hypothesis` line; the hypothesis may be empty.

    With `lm_column` N (fields counted from 1: utt-id, first-pass score, 3, ...), fields 3 to N
    are score columns, field N is the one read, and the hypothesis is everything after field N,
    so a hypothesis may hold tabs whatever the columns."""
    last = lm_column or 2
    fields = line.split("\t", last)
    if len(fields) <= last or not fields[0]:
        wanted = f", fields 3 to {last} scores (--lm-column {last})" if lm_column else ""
        raise UserError(f"{name}: line {number}: expected utt-id<TAB>first-pass-score{wanted}<TAB>hypothesis; "
                        f"found {len(fields)} tab-separated field(s)")
    hypothesis = Hypothesis(fields[0], _finite(fields[1], f"{name}: line {number}: the first-pass score"), fields[last])
    if lm_column:
        hypothesis.column = _finite(fields[last - 1], f"{name}: line {number}: the --lm-column {last} score")
    return hypothesis


def group_utterances(hypotheses: Iterable[tuple[int, Hypothesis]], name: str) -> Iterator[list[Hypothesis]]:
    """The hypotheses of each utterance, as soon as the next utterance (or the end) shows it is complete.

    (line number, hypothesis) pairs come in; an utterance id met again after another utterance is an error.
    """
    seen: set[str] = set()
    group: list[Hypothesis] = []
    for number, hypothesis in hypotheses:
        if group and hypothesis.utt_id != group[0].utt_id:
            yield group
            group = []
        if not group:
            if hypothesis.utt_id in seen:
                raise UserError(f"{name}: line {number}: utterance {hypothesis.utt_id!r} appeared before, "
                                "separated from it; the hypotheses of an utterance must be on consecutive lines")
            seen.add(hypothesis.utt_id)
        group.append(hypothesis)
    if group:
        yield group


def rank(group: Sequence[Hypothesis], logprobs: Sequence[float], settings: RescoreSettings) -> list[Rescored]:
    """The group's hypotheses in input order with new scores and ranks (ties: the earlier line ranks first)."""
    results = [Rescored(h, lp, settings.score(h, lp), 0) for h, lp in zip(group, logprobs)]
    for position, index in enumerate(sorted(range(len(results)), key=lambda i: -results[i].score), start=1):
        results[index].rank = position
    return results


def rescore(utterances: Iterable[list[Hypothesis]], line_logprobs: Callable[[list[str]], list[float]],
            settings: RescoreSettings, batch_hypotheses: int = BATCH_HYPOTHESES) -> Iterator[list[Rescored]]:
    """Each utterance's rescored hypotheses, in input order, scored in batches of whole utterances.

    If reading fails, the complete utterances read before the failure come out first.
    """
    pending: list[list[Hypothesis]] = []
    try:
        for group in utterances:
            pending.append(group)
            if sum(len(g) for g in pending) >= batch_hypotheses:
                yield from _rescore_batch(pending, line_logprobs, settings)
                pending = []
    except UserError:
        yield from _rescore_batch(pending, line_logprobs, settings)
        raise
    yield from _rescore_batch(pending, line_logprobs, settings)


def _rescore_batch(groups: list[list[Hypothesis]], line_logprobs: Callable[[list[str]], list[float]],
                   settings: RescoreSettings) -> Iterator[list[Rescored]]:
    if not groups:
        return
    logprobs = iter(line_logprobs([h.text for group in groups for h in group]))
    for group in groups:
        yield rank(group, [next(logprobs) for _ in group], settings)


def best(results: Sequence[Rescored]) -> Rescored:
    return next(r for r in results if r.rank == 1)


def write_results(out: TextIO, results: Sequence[Rescored], every_hypothesis: bool, column: bool = False) -> None:
    """`utt-id<TAB>best hypothesis`, or with every_hypothesis one line per hypothesis in input order:
    utt-id, first-pass score, [the --lm-column score,] LM log-prob, new score, new rank, hypothesis
    (tab-separated)."""
    if not every_hypothesis:
        winner = best(results).hypothesis
        out.write(f"{winner.utt_id}\t{winner.text}\n")
        return
    for r in results:
        h = r.hypothesis
        extra = f"{h.column:.6f}\t" if column else ""
        out.write(f"{h.utt_id}\t{h.first_pass:.6f}\t{extra}{r.lm_logprob:.6f}\t{r.score:.6f}\t{r.rank}\t{h.text}\n")


def numbered_lines(chunks: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for text chunks that end on line boundaries."""
    number = 0
    for text in chunks:
        for line in split_lines(text):
            number += 1
            yield number, line


def read_tsv(chunks: Iterable[str], name: str, lm_column: int | None = None) -> Iterator[tuple[int, Hypothesis]]:
    """(line number, hypothesis) for each `utt-id<TAB>first-pass-score<TAB>hypothesis` line (parse_tsv_line)."""
    for number, line in numbered_lines(chunks):
        yield number, parse_tsv_line(line, number, name, lm_column)


def read_kaldi(chunks: Iterable[str], cost_chunks: Iterable[str], name: str,
               costs_name: str) -> Iterator[tuple[int, Hypothesis]]:
    """(line number, hypothesis) from Kaldi's n-best text (`utt-id-N words...`) and its costs file
    (`utt-id-N cost` on the same line number; lower is better, so the first-pass score is -cost)."""
    costs = numbered_lines(cost_chunks)
    for number, line in numbered_lines(chunks):
        fields = line.split(maxsplit=1)
        key = fields[0] if fields else ""
        utt_id, dash, index = key.rpartition("-")
        if not (utt_id and dash and index.isdigit()):
            raise UserError(f"{name}: line {number}: expected utt-id-N followed by the hypothesis's words")
        cost_line = next(costs, None)
        if cost_line is None:
            raise UserError(f"{costs_name}: has no line {number}: fewer costs than hypotheses in {name}")
        cost_fields = cost_line[1].split()
        if len(cost_fields) != 2 or cost_fields[0] != key:
            raise UserError(f"{costs_name}: line {number}: expected {key!r} and its cost, as in {name}")
        yield number, Hypothesis(utt_id, -_finite(cost_fields[1], f"{costs_name}: line {number}: the cost"),
                                 fields[1] if len(fields) > 1 else "")
    extra = next(costs, None)
    if extra is not None:
        raise UserError(f"{costs_name}: line {extra[0]}: more costs than hypotheses in {name}")


def _finite(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{where} {text!r} is not a finite number")
    return value
