"""Log-likelihoods: of a running token stream, of independent lines, and a file's perplexity.

Conventions (docs/design.md): the end-of-line token is the start context and is never scored
as context; every line's end-of-line token is scored. Totals are natural-log NLL (nats);
per-word figures count whitespace words plus one per line end; bits per character count
Unicode code points including the newline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from rnnlm.config import DynamicEvaluation
from rnnlm.data import TextCounts
from rnnlm.errors import UserError
from rnnlm.fileio import split_lines
from rnnlm.model import RNNLanguageModel, State, detach_state
from rnnlm.tokenizers import Tokenizer, count_words

LOGIT_BUDGET = 1 << 22  # floats of logits held at once while scoring
MAX_BATCH_LINES = 256


@dataclass
class NLLTotals:
    nll: float = 0.0  # nats, summed over scored tokens
    tokens: int = 0
    oov: int = 0  # scored tokens that are the unknown token
    oov_nll: float = 0.0

    def add(self, other: NLLTotals) -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.oov += other.oov
        self.oov_nll += other.oov_nll


@dataclass
class LineScore:
    logprob: float  # natural log of P(tokens of the line, end-of-line | end-of-line)
    tokens: int
    oov: int
    words: int
    chars: int
    oov_logprob: float = 0.0  # the part of `logprob` spent on unknown tokens
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)


def time_window(rows: int, vocab_size: int, longest: int = 512) -> int:
    return max(8, min(longest, LOGIT_BUDGET // max(1, rows * vocab_size)))


@torch.inference_mode()
def stream_nll(model: RNNLanguageModel, tokens: np.ndarray, rows: int, window: int, start_token: int,
               state: State | None = None, unk_id: int | None = None) -> tuple[float, int]:
    """Total NLL and scored-token count of `start_token` followed by `tokens`, state carried.

    With rows > 1 the stream is cut into that many parallel rows (as in training), which is
    faster and scores all but a few trailing tokens; rows=1 scores every token exactly.
    """
    totals, _ = stream_totals(model, tokens, rows, window, start_token, state, unk_id)
    return totals.nll, totals.tokens


@torch.inference_mode()
def stream_totals(model: RNNLanguageModel, tokens: np.ndarray, rows: int, window: int, start_token: int,
                  state: State | None = None, unk_id: int | None = None) -> tuple[NLLTotals, State | None]:
    stream = np.concatenate([np.array([start_token], dtype=np.int64), np.asarray(tokens, dtype=np.int64)])
    rows = max(1, min(rows, len(stream) - 1))
    row_length = (len(stream) - 1) // rows
    grid = np.lib.stride_tricks.as_strided(stream, (rows, row_length + 1), (row_length * 8, 8))
    device = model.embedding.weight.device
    window = min(window, time_window(rows, model.config.vocab_size))
    totals = NLLTotals()
    for column in range(0, row_length, window):
        block = torch.from_numpy(np.ascontiguousarray(grid[:, column : column + window + 1])).to(device)
        logprobs, state = model(block[:, :-1], state, targets=block[:, 1:])
        totals.nll -= logprobs.sum().item()
        totals.tokens += logprobs.numel()
        if unk_id is not None:
            unknown = block[:, 1:] == unk_id
            totals.oov += int(unknown.sum().item())
            totals.oov_nll -= logprobs[unknown].sum().item()
    return totals, state


def encode_line(tokenizer: Tokenizer, line: str, reverse: bool = False) -> np.ndarray:
    """A line's tokens (last to first for a backward model) followed by its end-of-line token."""
    ids = tokenizer.encode(line)
    return np.append(ids[::-1] if reverse else ids, tokenizer.eol_id)


@torch.inference_mode()
def score_lines(model: RNNLanguageModel, tokenizer: Tokenizer, lines: Sequence[str],
                detail: bool = False) -> list[LineScore]:
    """Score each line on its own, from a fresh state, in length-sorted padded batches."""
    encoded = [encode_line(tokenizer, line, model.config.reverse) for line in lines]
    order = sorted(range(len(lines)), key=lambda i: len(encoded[i]))
    scores: list[LineScore | None] = [None] * len(lines)
    for batch in _length_batches(order, encoded):
        for index, line_logprobs in zip(batch, _score_batch(model, [encoded[i] for i in batch], tokenizer.eol_id)):
            ids = encoded[index]
            line = lines[index]
            scores[index] = LineScore(
                logprob=float(line_logprobs.sum()),
                tokens=len(ids),
                oov=int(np.count_nonzero(ids == tokenizer.unk_id)),
                oov_logprob=float(line_logprobs[ids == tokenizer.unk_id].sum()),
                words=count_words(line) + 1,
                chars=len(line) + 1,
                token_ids=ids.tolist() if detail else [],
                token_logprobs=line_logprobs.tolist() if detail else [],
            )
    return scores  # type: ignore[return-value]


def _length_batches(order: list[int], encoded: list[np.ndarray]) -> Iterator[list[int]]:
    """Groups of similar-length lines whose padded size stays within the token budget."""
    batch: list[int] = []
    for index in order:
        longest = len(encoded[index])  # `order` is sorted by length, so the newest is the longest
        if batch and (len(batch) + 1) * longest > LOGIT_BUDGET // 64 or len(batch) >= MAX_BATCH_LINES:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _score_batch(model: RNNLanguageModel, sequences: list[np.ndarray], start_token: int) -> list[np.ndarray]:
    """Per-token log-probabilities of each sequence, padded on the right and read in time windows."""
    device = model.embedding.weight.device
    longest = max(len(s) for s in sequences)
    targets = np.full((len(sequences), longest), start_token, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        targets[row, : len(sequence)] = sequence
    inputs = np.concatenate([np.full((len(sequences), 1), start_token, dtype=np.int64), targets[:, :-1]], axis=1)
    window = time_window(len(sequences), model.config.vocab_size)
    state = None
    pieces = []
    for column in range(0, longest, window):
        x = torch.from_numpy(np.ascontiguousarray(inputs[:, column : column + window])).to(device)
        y = torch.from_numpy(np.ascontiguousarray(targets[:, column : column + window])).to(device)
        logprobs, state = model(x, state, targets=y)
        pieces.append(logprobs.cpu().double().numpy())
    logprobs = np.concatenate(pieces, axis=1)
    return [logprobs[row, : len(sequence)] for row, sequence in enumerate(sequences)]


@dataclass
class Perplexity:
    """Running totals of a scored text, and the perplexities they give (docs/design.md definitions)."""

    mode: str
    nll: float = 0.0
    tokens: int = 0
    words: int = 0
    chars: int = 0
    lines: int = 0
    oov: int = 0
    oov_nll: float = 0.0

    def add_line(self, score: LineScore) -> None:
        self.nll -= score.logprob
        self.oov_nll -= score.oov_logprob
        self.tokens += score.tokens
        self.oov += score.oov
        self.words += score.words
        self.chars += score.chars
        self.lines += 1

    def add_text(self, lines: Sequence[str], totals: NLLTotals) -> None:
        """Add scored lines, counted as `prepare` counts them (one definition of words and characters)."""
        counts = TextCounts()
        counts.add_text("".join(line + "\n" for line in lines))
        self.nll += totals.nll
        self.oov_nll += totals.oov_nll
        self.tokens += totals.tokens
        self.oov += totals.oov
        self.words += counts.words
        self.chars += counts.chars
        self.lines += counts.lines

    def to_dict(self) -> dict[str, float | int | str]:
        in_vocab = self.tokens - self.oov
        return {
            "mode": self.mode,
            "nll": self.nll,
            "tokens": self.tokens,
            "words": self.words,
            "chars": self.chars,
            "lines": self.lines,
            "oov": self.oov,
            "ppl": _exp(self.nll / self.tokens),
            "word_ppl": _exp(self.nll / self.words),
            "bpc": self.nll / self.chars / math.log(2),
            "ppl_excluding_oov": _exp((self.nll - self.oov_nll) / in_vocab) if in_vocab else math.nan,
            "tokens_excluding_oov": in_vocab,
            "nats_per_token": self.nll / self.tokens,
        }


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


class _DynamicScorer:
    """Scores a running stream segment by segment, adapting the model after each segment."""

    def __init__(self, model: RNNLanguageModel, settings: DynamicEvaluation) -> None:
        self.model = model
        self.settings = settings
        self.trained = [p.detach().clone() for p in model.parameters()]

    def score(self, ids: np.ndarray, previous: int, state: State | None, unk_id: int) -> tuple[NLLTotals, State | None]:
        stream = torch.from_numpy(np.concatenate([[previous], ids]).astype(np.int64)).to(self.model.embedding.weight.device)
        totals = NLLTotals()
        for start in range(0, len(ids), self.settings.segment):
            segment = stream[start : start + self.settings.segment + 1][None]
            with torch.enable_grad():
                logprobs, state = self.model(segment[:, :-1], state, targets=segment[:, 1:])
                self.model.zero_grad(set_to_none=True)
                (-logprobs.mean()).backward()
            self._step()
            logprobs = logprobs.detach()
            unknown = segment[:, 1:] == unk_id
            totals.add(NLLTotals(-logprobs.sum().item(), logprobs.numel(), int(unknown.sum()), -logprobs[unknown].sum().item()))
            state = detach_state(state)
        return totals, state

    @torch.no_grad()
    def _step(self) -> None:
        for parameter, trained in zip(self.model.parameters(), self.trained):
            if parameter.grad is not None:
                parameter.sub_(self.settings.lr * parameter.grad)
            if self.settings.decay:
                parameter.add_(self.settings.decay * (trained - parameter))


def perplexity(model: RNNLanguageModel, tokenizer: Tokenizer, chunks: Iterable[str],
               independent_lines: bool = False, dynamic: DynamicEvaluation | None = None) -> Perplexity:
    """Perplexity of text given as chunks that end on line boundaries (the last may not).

    Stream mode carries the state across lines and chunks, as the published PTB numbers do;
    independent-lines mode scores each line from a fresh state, as `score` does. With
    `dynamic`, the model (a copy is not made: the caller's model adapts) learns as it reads.
    """
    meter = PerplexityMeter(model, tokenizer, independent_lines, dynamic)
    for text in chunks:
        meter.add(text)
    return meter.result


class PerplexityMeter:
    """Totals of a text fed chunk by chunk, so several models can read one stream side by side."""

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, independent_lines: bool = False,
                 dynamic: DynamicEvaluation | None = None) -> None:
        if dynamic is not None and independent_lines:
            raise UserError("dynamic evaluation reads the text as one stream; it does not combine with --independent-lines")
        self.model = model
        self.tokenizer = tokenizer
        self.independent_lines = independent_lines
        self.result = Perplexity("independent-lines" if independent_lines else "dynamic-stream" if dynamic else "stream")
        self.scorer = _DynamicScorer(model, dynamic) if dynamic is not None else None
        self.state: State | None = None
        self.previous = tokenizer.eol_id

    def add(self, text: str) -> None:
        """Score a chunk that ends on a line boundary (or ends the text)."""
        lines = split_lines(text)
        if not lines:
            return
        if self.independent_lines:
            for score in score_lines(self.model, self.tokenizer, lines):
                self.result.add_line(score)
            return
        ids = np.concatenate([encode_line(self.tokenizer, line, self.model.config.reverse) for line in lines])
        if self.scorer is not None:
            totals, self.state = self.scorer.score(ids, self.previous, self.state, self.tokenizer.unk_id)
        else:
            totals, self.state = stream_totals(self.model, ids, 1, 512, self.previous, self.state, self.tokenizer.unk_id)
        self.result.add_text(lines, totals)
        self.previous = int(ids[-1])
