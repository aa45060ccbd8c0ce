"""Log-likelihoods: of a running token stream, of independent lines, and a file's perplexity.

Conventions (docs/design.md): the end-of-line token is the start context and is never scored
as context; every line's end-of-line token is scored. Totals are natural-log NLL (nats);
per-word figures count whitespace words plus one per line end; bits per character count
Unicode code points including the newline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from rnnlm.config import DynamicEvaluation
from rnnlm.prepared_corpus import TextCounts
from rnnlm.direction import encode_directed
from rnnlm.errors import UserError
from rnnlm.fileio import split_lines
from rnnlm.model import RNNLanguageModel, State, detach_state
from rnnlm.slices import SLICE_CHARS, count_words_sliced, encode_slices, slice_text, token_windows
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

    def add_window(self, window: ScoredWindow, unk_id: int | None) -> None:
        """Count one scored window in (its unknown tokens too, given the unknown token's id)."""
        self.nll -= window.log_probs.sum().item()
        self.tokens += window.log_probs.numel()
        if unk_id is not None:
            unknown = window.targets == unk_id
            self.oov += int(unknown.sum().item())
            self.oov_nll -= window.log_probs[unknown].sum().item()


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


@dataclass(frozen=True)
class ScoredWindow:
    """One window of a token stream as the model scored it."""

    targets: torch.Tensor  # (rows, time): the token ids scored
    log_probs: torch.Tensor  # (rows, time), fp32: natural-log P(target | everything before it), no graph
    state: State  # the recurrent state after the window, which the next window starts from


Update = Callable[[torch.Tensor], None]  # learns from a window's target log-probs (which carry their graph)


def scored_windows(model: RNNLanguageModel, blocks: Iterable[np.ndarray], state: State | None = None,
                   update: Update | None = None) -> Iterator[ScoredWindow]:
    """The one windowed scoring loop (score, perplexity, dynamic evaluation, validation).

    Each block holds a context column, then the window's targets: shape (rows, 1 + time), or
    (1 + time,) for one row. The recurrent state runs from block to block, so a stream of any
    length costs one window of memory. Without `update` the windows run in inference mode; with
    it, each window keeps its graph for `update` (dynamic evaluation's gradient step, taken after
    the window is scored), and the state is cut from that graph before the next window.
    """
    device = model.embedding.weight.device
    for block in blocks:
        tokens = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        tokens = tokens if tokens.dim() == 2 else tokens[None]
        if update is None:
            with torch.inference_mode():
                output = model(tokens[:, :-1], state, targets=tokens[:, 1:])
            log_probs, state = output.target_log_probs, output.state
        else:
            with torch.enable_grad():
                output = model(tokens[:, :-1], state, targets=tokens[:, 1:])
                update(output.target_log_probs)
            log_probs, state = output.target_log_probs.detach(), detach_state(output.state)
        yield ScoredWindow(tokens[:, 1:], log_probs, state)


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
    """stream_nll's totals (unknown tokens counted apart, given `unk_id`) and the final state."""
    stream = np.concatenate([np.array([start_token], dtype=np.int64), np.asarray(tokens, dtype=np.int64)])
    rows = max(1, min(rows, len(stream) - 1))
    row_length = (len(stream) - 1) // rows
    grid = np.lib.stride_tricks.as_strided(stream, (rows, row_length + 1), (row_length * 8, 8))
    window = min(window, time_window(rows, model.config.vocab_size))
    blocks = (grid[:, column : column + window + 1] for column in range(0, row_length, window))
    totals = NLLTotals()
    for scored in scored_windows(model, blocks, state):
        totals.add_window(scored, unk_id)
        state = scored.state
    return totals, state


def encode_line(tokenizer: Tokenizer, line: str, reverse: bool = False) -> np.ndarray:
    """A line's tokens (last to first for a backward model) followed by its end-of-line token."""
    return np.concatenate(list(_line_slices(tokenizer, line, reverse)))


def _line_slices(tokenizer: Tokenizer, line: str, reverse: bool) -> Iterator[np.ndarray]:
    """A line's tokens slice by slice, as a model of that direction reads them, then its end-of-line token."""
    yield from encode_directed(tokenizer, line, reverse)
    yield np.array([tokenizer.eol_id], dtype=np.int64)


@torch.inference_mode()
def score_lines(model: RNNLanguageModel, tokenizer: Tokenizer, lines: Sequence[str],
                detail: bool = False) -> list[LineScore]:
    """Score each line on its own, from a fresh state, in length-sorted padded batches; a line
    longer than a slice (SLICE_CHARS characters) alone, in bounded memory (score_long_line)."""
    scores: list[LineScore | None] = [None] * len(lines)
    encoded: dict[int, np.ndarray] = {}
    for index, line in enumerate(lines):
        if len(line) > SLICE_CHARS:
            scores[index] = score_long_line(model, tokenizer, line, detail)
        else:
            encoded[index] = encode_line(tokenizer, line, model.config.reverse)
    order = sorted(encoded, key=lambda i: len(encoded[i]))
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


@torch.inference_mode()
def score_long_line(model: RNNLanguageModel, tokenizer: Tokenizer, line: str, detail: bool = False) -> LineScore:
    """One line of any length, from a fresh state, holding a slice of its text and a window of its
    tokens at a time (with `detail`, also its per-token results): the windows fall where the
    batched path puts them for a line alone, so the log-probabilities are the same."""
    window = time_window(1, model.config.vocab_size)
    logprob = oov_logprob = 0.0
    tokens = oov = 0
    ids: list[np.ndarray] = []
    logprobs: list[np.ndarray] = []
    blocks = token_windows(_line_slices(tokenizer, line, model.config.reverse), tokenizer.eol_id, window)
    for scored in scored_windows(model, blocks):
        values = scored.log_probs[0].cpu().double().numpy()
        targets = scored.targets[0].cpu().numpy()
        unknown = targets == tokenizer.unk_id
        logprob += float(values.sum())
        oov_logprob += float(values[unknown].sum())
        tokens += len(values)
        oov += int(np.count_nonzero(unknown))
        if detail:
            ids.append(targets.copy())
            logprobs.append(values)
    return LineScore(logprob=logprob, tokens=tokens, oov=oov, words=count_words_sliced(line) + 1, chars=len(line) + 1,
                     oov_logprob=oov_logprob, token_ids=np.concatenate(ids).tolist() if detail else [],
                     token_logprobs=np.concatenate(logprobs).tolist() if detail else [])


def _length_batches(order: list[int], encoded: dict[int, np.ndarray]) -> Iterator[list[int]]:
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
    longest = max(len(s) for s in sequences)
    stream = np.full((len(sequences), longest + 1), start_token, dtype=np.int64)  # the context column, then targets
    for row, sequence in enumerate(sequences):
        stream[row, 1 : len(sequence) + 1] = sequence
    window = time_window(len(sequences), model.config.vocab_size)
    blocks = (stream[:, column : column + window + 1] for column in range(0, longest, window))
    pieces = [scored.log_probs.cpu().double().numpy() for scored in scored_windows(model, blocks)]
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

    def add_text(self, text: str) -> None:
        """Count text as `prepare` counts it (one definition of words and characters)."""
        counts = TextCounts()
        counts.add_text(text)
        self.words += counts.words
        self.chars += counts.chars
        self.lines += counts.lines

    def add_totals(self, totals: NLLTotals) -> None:
        self.nll += totals.nll
        self.oov_nll += totals.oov_nll
        self.tokens += totals.tokens
        self.oov += totals.oov

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


class DynamicUpdate:
    """Dynamic evaluation's step (Krause et al., 2018): after each segment is scored, one SGD
    step on its mean NLL, and a decay of the weights back towards the trained ones."""

    def __init__(self, model: RNNLanguageModel, settings: DynamicEvaluation) -> None:
        self.model = model
        self.settings = settings
        self.trained = [p.detach().clone() for p in model.parameters()]

    def __call__(self, log_probs: torch.Tensor) -> None:
        """Learn from one scored segment's target log-probabilities."""
        self.model.zero_grad(set_to_none=True)
        (-log_probs.mean()).backward()
        self._step()

    @torch.no_grad()
    def _step(self) -> None:
        for parameter, trained in zip(self.model.parameters(), self.trained):
            if parameter.grad is not None:
                parameter.sub_(self.settings.lr * parameter.grad)
            if self.settings.decay:
                parameter.add_(self.settings.decay * (trained - parameter))


def _counted_tokens(tokenizer: Tokenizer, text: str, result: Perplexity, reverse: bool) -> Iterator[np.ndarray]:
    """The tokens of a text chunk a slice at a time, every line ended by its end-of-line token (the
    last line too, with or without its newline; a backward model's lines read last token first);
    the text is counted into `result` on the way."""
    if not text:
        return
    for piece in slice_text(text):
        result.add_text(piece)
    if reverse:
        for line in split_lines(text):
            yield from _line_slices(tokenizer, line, reverse)
    else:
        yield from encode_slices(tokenizer, text)
    if not text.endswith("\n"):
        result.add_text("\n")
        if not reverse:
            yield np.array([tokenizer.eol_id], dtype=np.int64)


def perplexity(model: RNNLanguageModel, tokenizer: Tokenizer, chunks: Iterable[str],
               independent_lines: bool = False, dynamic: DynamicEvaluation | None = None) -> Perplexity:
    """Perplexity of text given as chunks that end on line boundaries (the last may not).

    Stream mode carries the state across lines and chunks, as the published PTB numbers do;
    independent-lines mode scores each line from a fresh state, as `score` does. With
    `dynamic`, the model (a copy is not made: the caller's model adapts) learns as it reads.
    Either way a slice of text and a window of tokens are held at a time, however long a line.
    """
    meter = PerplexityMeter(model, tokenizer, independent_lines, dynamic)
    for text in chunks:
        meter.add(text)
    return meter.finish()


class PerplexityMeter:
    """Totals of a text fed chunk by chunk, so several models can read one stream side by side.

    Between chunks the tokens of an unfinished window wait, so that the windows fall where they
    would on the whole text at once (rnnlm.slices.token_windows) and the totals do not depend on
    where the input was cut into chunks."""

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, independent_lines: bool = False,
                 dynamic: DynamicEvaluation | None = None) -> None:
        if dynamic is not None and independent_lines:
            raise UserError("dynamic evaluation reads the text as one stream; it does not combine with --independent-lines")
        self.model = model
        self.tokenizer = tokenizer
        self.independent_lines = independent_lines
        self.result = Perplexity("independent-lines" if independent_lines else "dynamic-stream" if dynamic else "stream")
        self.update = DynamicUpdate(model, dynamic) if dynamic is not None else None
        self.window = dynamic.segment if dynamic is not None else time_window(1, model.config.vocab_size)
        self.state: State | None = None
        self.pending = np.array([tokenizer.eol_id], dtype=np.int64)  # context token, then unscored tokens

    def add(self, text: str) -> None:
        """Score a chunk that ends on a line boundary (or ends the text)."""
        if self.independent_lines:
            for score in score_lines(self.model, self.tokenizer, split_lines(text)):
                self.result.add_line(score)
            return
        pieces = chain([self.pending[1:]], _counted_tokens(self.tokenizer, text, self.result, self.model.config.reverse))
        for block in token_windows(pieces, int(self.pending[0]), self.window):
            if len(block) <= self.window:  # the last, unfinished window: it waits for the next chunk
                self.pending = block.copy()
                return
            self._score(block)
            self.pending = block[-1:].copy()

    def finish(self) -> Perplexity:
        """The totals, once the last unfinished window is scored."""
        if len(self.pending) > 1:
            self._score(self.pending)
            self.pending = self.pending[-1:]
        return self.result

    def _score(self, block: np.ndarray) -> None:
        """One window, the state carried from the one before."""
        totals = NLLTotals()
        for scored in scored_windows(self.model, [block], self.state, self.update):
            totals.add_window(scored, self.tokenizer.unk_id)
            self.state = scored.state
        self.result.add_totals(totals)
