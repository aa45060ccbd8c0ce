"""The Python interface to a trained model: `rnnlm.load()` gives a LanguageModel that scores,
measures and samples text exactly as the command line does.

Every method calls the functions the commands call (rnnlm.scoring.score_lines for `rnnlm score`,
rnnlm.scoring.PerplexityMeter for `rnnlm perplexity`, rnnlm.generate.generate for `rnnlm sample`),
so the numbers are the same and nothing is computed twice in two ways. On top of them, `start`,
`advance`, `end` and `next_log_probs` score text piece by piece from an immutable State, as
KenLM's Python module does. Log-probabilities are natural logs (nats). docs/python.md is the guide.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union, overload

import numpy as np
import torch

from rnnlm.checkpoint import LoadedModel, load_model
from rnnlm.config import DynamicEvaluation, SamplingConfig, fresh_random_seed
from rnnlm.defaults import SCORE_CHUNK_LINES
from rnnlm.direction import encode_directed
from rnnlm.errors import UserError
from rnnlm.fileio import iter_text_chunks, open_binary_input
from rnnlm.generate import generate, seed_warning
from rnnlm.model import State as RecurrentState
from rnnlm.project import resolve_model
from rnnlm.scoring import LineScore, PerplexityMeter, score_lines, scored_windows, time_window
from rnnlm.tokenizers import SPACE_SYMBOL, Tokenizer
from rnnlm.training import resolve_device

PathLike = Union[str, "os.PathLike[str]"]


def load(model: PathLike | None = None, *, device: str = "auto") -> LanguageModel:
    """Open a model directory; None takes the model the commands use without -m (RNNLM_MODEL, then
    the project's latest, then the user-wide latest: rnnlm.project.resolve_model).

    `device`: "auto" (CUDA if present, else the CPU), "cpu", "cuda", "cuda:N".
    Raises ModelNotFound, CorruptModel (both UserError, so RnnlmError)."""
    chosen = resolve_model(None if model is None else Path(os.fspath(model)))
    return LanguageModel(load_model(chosen.path, str(resolve_device(device))))


@dataclass(frozen=True)
class PerplexityResult:
    """What `rnnlm perplexity --json` prints, field by field (the same names and values).

    Tokens include one end-of-line token per line; words are whitespace words plus one per line
    end; characters are Unicode code points, newlines included."""

    mode: str  # "stream", "independent-lines" or "dynamic-stream"
    nll: float  # total negative log-likelihood, nats
    tokens: int
    words: int
    chars: int
    lines: int
    oov: int  # scored tokens that are the unknown token
    ppl: float  # perplexity per token
    word_ppl: float  # perplexity per word
    bpc: float  # bits per character
    ppl_excluding_oov: float  # perplexity per token over the known tokens (nan when there are none)
    tokens_excluding_oov: int
    nats_per_token: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON object `rnnlm perplexity --json` prints."""
        return asdict(self)


@dataclass(frozen=True)
class State:
    """Where a reader of the text stands, as a value: advancing a State returns a new one and never
    changes it, so one state can be continued in several ways (as KenLM's State is copied).

    It holds the model's recurrent state *before* the last token read, and that token: the next
    step feeds it, which gives the distribution of the token after it. A fresh state's last token
    is the end-of-line, the context every line is scored from."""

    last_token: int
    recurrent: RecurrentState | None = field(default=None, repr=False)  # None: the model's zero state
    tokens: int = 0  # tokens read since `start()`


class LanguageModel:
    """A trained model with its tokenizer, ready to score and sample (`rnnlm.load()` makes one)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        self._model = loaded.model
        self._tokenizer: Tokenizer = loaded.tokenizer

    def __repr__(self) -> str:
        return f"LanguageModel({os.fspath(self.directory)!r})"

    @property
    def directory(self) -> Path:
        """The model directory this model was read from."""
        return self._loaded.directory

    @property
    def config(self) -> dict[str, Any]:
        """The model's config.json (model settings, training settings, corpus)."""
        return self._loaded.config

    @property
    def reverse(self) -> bool:
        """Whether this is a backward model (train --reverse), which reads each line last token first."""
        return bool(self._model.config.reverse)

    @property
    def vocabulary(self) -> list[str]:
        """Each token's piece, by id: the names token_scores and next_log_probs use."""
        return [self._tokenizer.piece(i) for i in range(self._tokenizer.vocab_size)]

    # ----------------------------------------------------------------------------------------------
    # Line scores, as `rnnlm score` gives them

    @overload
    def score(self, text: str) -> float: ...

    @overload
    def score(self, text: Iterable[str]) -> list[float]: ...

    def score(self, text: str | Iterable[str]) -> float | list[float]:
        """Natural log of P(line, end-of-line | end-of-line) from a fresh state: what `rnnlm score`
        prints. A string is one line; any other iterable is many lines (such as an open file: each
        line's newline is dropped), scored in length-sorted batches as the command scores them."""
        if isinstance(text, str):
            return self._line_scores([text])[0].logprob
        return [score.logprob for score in self._line_scores(text)]

    def token_scores(self, text: str) -> list[tuple[str, float]]:
        """Each token of a line with its natural-log probability, end-of-line last, as `rnnlm score
        --per-token` gives them (a backward model's tokens in the order it reads them)."""
        score = self._line_scores([text], detail=True)[0]
        return [(self._tokenizer.piece(i), value) for i, value in zip(score.token_ids, score.token_logprobs)]

    def word_scores(self, text: str) -> list[tuple[str, float]]:
        """Each whitespace word of a line with the sum of its tokens' log-probabilities, in reading
        order, then the end-of-line: the units of the per-word perplexity. White space between
        words counts with the word after it, white space at the end with the end-of-line; so the
        values add up to score(text)."""
        score = self._line_scores([text], detail=True)[0]
        pairs = list(zip(score.token_ids[:-1], score.token_logprobs[:-1]))
        if self.reverse:
            pairs.reverse()  # words are grouped in the order of the text
        surfaces = token_surfaces(self._tokenizer, _one_line(text), [i for i, _ in pairs])
        names, values, trailing = group_words(surfaces, [value for _, value in pairs])
        words = _one_line(text).split()
        names = words if len(words) == len(names) else names
        eol = (self._tokenizer.piece(score.token_ids[-1]), score.token_logprobs[-1] + trailing)
        return [*zip(names, values), eol]

    def _line_scores(self, lines: Iterable[str], detail: bool = False) -> list[LineScore]:
        """score_lines over the lines, SCORE_CHUNK_LINES at a time, as `rnnlm score` reads its input."""
        scores: list[LineScore] = []
        for chunk in _line_chunks(lines):
            scores += score_lines(self._model, self._tokenizer, chunk, detail)
        return scores

    # ----------------------------------------------------------------------------------------------
    # Perplexity, as `rnnlm perplexity` measures it

    def perplexity(self, source: PathLike | Iterable[str], *, independent_lines: bool = False,
                   dynamic: bool | DynamicEvaluation = False) -> PerplexityResult:
        """Perplexity of a text file (a str or path-like names a file; "-" is standard input) or of
        an iterable of lines, as `rnnlm perplexity --json` gives it: one running stream by
        default, each line from a fresh state with `independent_lines`, or with dynamic evaluation
        (True for the command's default settings, or a DynamicEvaluation). Dynamic evaluation
        adapts a copy of the model: this one is unchanged afterwards."""
        settings = DynamicEvaluation() if dynamic is True else dynamic or None
        if settings is not None:
            settings.validate()
        model = copy.deepcopy(self._model) if settings is not None else self._model
        meter = PerplexityMeter(model, self._tokenizer, independent_lines, settings)
        with _text_chunks(source) as (name, chunks):
            for text in chunks:
                meter.add(text)
        result = meter.finish()
        if result.tokens == 0:
            raise UserError(f"{name}: is empty; nothing to measure")
        return PerplexityResult(**result.to_dict())

    # ----------------------------------------------------------------------------------------------
    # Sampling, as `rnnlm sample` generates text

    def sample(self, seed: str = "", *, length: int = SamplingConfig.length,
               temperature: float = SamplingConfig.temperature, top_k: int = SamplingConfig.top_k,
               top_p: float = SamplingConfig.top_p, beam: int | None = None, random_seed: int | None = None,
               stop: Iterable[str] = (), until_eol: bool = False) -> str:
        """The seed and a continuation of it (for a backward model, the text before the seed, then
        the seed), as `rnnlm sample` prints it without its final newline.

        `length` tokens at most; `temperature` 0 decodes greedily; `beam`, a beam width, searches
        for the most likely continuation instead of sampling; `random_seed` makes a sample
        reproducible (the same as `rnnlm sample --random-seed N`); `stop` strings and `until_eol`
        end the sample early (the stop string is kept)."""
        config = self._sampling(seed, length, temperature, top_k, top_p, beam, random_seed, stop, until_eol)
        return self._generated(seed, config)

    def stream(self, seed: str = "", *, length: int = SamplingConfig.length,
               temperature: float = SamplingConfig.temperature, top_k: int = SamplingConfig.top_k,
               top_p: float = SamplingConfig.top_p, beam: int | None = None, random_seed: int | None = None,
               stop: Iterable[str] = (), until_eol: bool = False) -> Iterator[str]:
        """sample()'s text in parts as it is decoded (the seed first), for showing it as it comes:
        the parts join to what sample() returns with the same arguments. A beam search, and a
        backward model, give their text whole at the end (neither knows it before)."""
        config = self._sampling(seed, length, temperature, top_k, top_p, beam, random_seed, stop, until_eol)
        if self.reverse or config.strategy == "beam":
            yield self._generated(seed, config)
            return
        if seed:
            yield seed
        yield from _streamed(self._model, self._tokenizer, seed, config)

    def _generated(self, seed: str, config: SamplingConfig) -> str:
        """The first sample's text with its seed, in reading order."""
        text = generate(self._model, self._tokenizer, seed, config)[0].text
        return text + seed if self.reverse else seed + text

    def _sampling(self, seed: str, length: int, temperature: float, top_k: int, top_p: float, beam: int | None,
                  random_seed: int | None, stop: Iterable[str], until_eol: bool) -> SamplingConfig:
        """The settings `rnnlm sample` would use for these arguments, checked as it checks them."""
        config = SamplingConfig(strategy="sample" if beam is None else "beam", temperature=temperature, top_k=top_k,
                                top_p=top_p, length=length, beam_size=beam or SamplingConfig.beam_size,
                                stop=tuple(stop), until_eol=until_eol,
                                random_seed=fresh_random_seed() if random_seed is None else random_seed)
        config.validate()
        warning = seed_warning(self._tokenizer, seed, "seed")
        if warning:
            warnings.warn(warning, stacklevel=3)
        return config

    # ----------------------------------------------------------------------------------------------
    # Incremental scoring from immutable states

    def start(self) -> State:
        """The state at the start of a line (after an end-of-line), from which score() scores."""
        return State(last_token=self._tokenizer.eol_id)

    def advance(self, state: State, text: str) -> tuple[State, float]:
        """Read `text` after `state`: the new state and the natural log of P(text's tokens | state).

        A forward model may read newlines (each is an end-of-line token), so a text can be read
        as one stream. A backward model reads a line from its end: give it one line's pieces
        last piece first, without newlines, then end(). The pieces of a line sum to score(line)
        when each piece is tokenised as in the whole line (always for characters; at white space
        for words and subwords)."""
        if self.reverse and "\n" in text:
            raise UserError("a backward model reads one line from its end: advance its pieces, last first, "
                            "without newlines, then call end()")
        pieces = list(encode_directed(self._tokenizer, text, self.reverse))
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        return self._read(state, ids)

    def end(self, state: State) -> tuple[State, float]:
        """Read the end-of-line token: the state of the next line's start, and log P(end-of-line | state)."""
        return self._read(state, np.array([self._tokenizer.eol_id], dtype=np.int64))

    def next_log_probs(self, state: State) -> torch.Tensor:
        """The distribution of the next token after `state`: a 1-D float64 CPU tensor of natural-log
        probabilities indexed by token id (`vocabulary[i]` names token i; the end-of-line is
        included, so advancing by any token i gives log-probability value [i] up to rounding)."""
        device = self._model.embedding.weight.device
        with torch.no_grad():
            logits = self._model(torch.tensor([[state.last_token]], device=device), state.recurrent).logits
        return torch.log_softmax(logits[0, -1].double(), dim=-1).cpu()

    def _read(self, state: State, ids: np.ndarray) -> tuple[State, float]:
        """Feed the last token and all of `ids` but the last, scoring `ids`, a window at a time as
        the scorers do; the new state holds copies of the recurrent tensors, shared with no one."""
        if len(ids) == 0:
            return state, 0.0
        stream = np.concatenate([[state.last_token], ids]).astype(np.int64)
        window = time_window(1, self._model.config.vocab_size)
        blocks = (stream[column:column + window + 1] for column in range(0, len(ids), window))
        recurrent, total = state.recurrent, 0.0
        for scored in scored_windows(self._model, blocks, recurrent):
            recurrent, total = scored.state, total + float(scored.log_probs.double().sum())
        copied = tuple(tensor.clone() for tensor in recurrent)  # type: ignore[union-attr]
        return State(int(ids[-1]), copied, state.tokens + len(ids)), total


def _one_line(text: str) -> str:
    """A line without the newline that ends it in a file; a string holding two lines is an error."""
    line = text[:-1] if text.endswith("\n") else text
    if "\n" in line:
        raise UserError(f"a line to score holds a newline: {line[:40]!r}…; pass the lines one by one")
    return line


def token_surfaces(tokenizer: Tokenizer, line: str, ids: list[int]) -> list[str]:
    """The text each token of a line stands for (in text order, end-of-line excluded), for grouping
    tokens into words: the line's own characters for a character model (its unknown tokens too),
    a word after a space for a word model, the piece with its space symbol for a subword model."""
    if tokenizer.kind == "char" and len(ids) == len(line):
        return list(line)
    if tokenizer.kind == "word":
        return [" " + tokenizer.piece(i) for i in ids]
    return [tokenizer.piece(i).replace(SPACE_SYMBOL, " ") for i in ids]


def group_words(surfaces: list[str], values: list[float]) -> tuple[list[str], list[float], float]:
    """Words made of consecutive tokens and the sum of their values; a token of white space alone
    counts with the next word. Returns the words, their sums, and the sum of trailing white space."""
    words: list[str] = []
    sums: list[float] = []
    pending = 0.0
    after_space = True
    for surface, value in zip(surfaces, values):
        if not surface.strip():
            pending, after_space = pending + value, True
            continue
        if after_space or surface[0].isspace():
            words.append("")
            sums.append(0.0)
        words[-1] += surface.strip()
        sums[-1] += pending + value
        pending, after_space = 0.0, surface[-1].isspace()
    return words, sums, pending


@contextmanager
def _text_chunks(source: PathLike | Iterable[str]) -> Iterator[tuple[str, Iterator[str]]]:
    """A source's name and its text in chunks that end on line boundaries: a file read as
    `rnnlm perplexity FILE` reads it, or lines joined SCORE_CHUNK_LINES at a time."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        with open_binary_input(name) as stream:
            yield ("<stdin>" if name == "-" else name), iter_text_chunks(stream, name)
        return
    yield "<lines>", ("".join(line + "\n" for line in chunk) for chunk in _line_chunks(source))


def _line_chunks(lines: Iterable[str]) -> Iterator[list[str]]:
    """Lines (each checked to be one, its newline dropped) SCORE_CHUNK_LINES at a time, as the commands read them."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(_one_line(line))
        if len(chunk) == SCORE_CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Cancelled(Exception):
    """Raised in the generating thread when the reader of a stream has gone."""


class _Relay:
    """Carries the text generate() hands its callback, in a worker thread, to the generator that
    reads it: generate() decodes through a callback, and a generator cannot be one."""

    DONE = object()

    def __init__(self) -> None:
        self.parts: queue.Queue[Any] = queue.Queue()
        self.cancelled = False

    def put(self, text: str) -> None:
        if self.cancelled:
            raise _Cancelled
        if text:
            self.parts.put(text)

    def run(self, model: Any, tokenizer: Tokenizer, seed: str, config: SamplingConfig) -> None:
        try:
            generate(model, tokenizer, seed, config, on_text=self.put)
        except _Cancelled:
            pass
        except BaseException as error:  # handed to the reader, which raises it
            self.parts.put(error)
        finally:
            self.parts.put(self.DONE)


def _streamed(model: Any, tokenizer: Tokenizer, seed: str, config: SamplingConfig) -> Iterator[str]:
    """generate()'s streamed text as a generator; a reader that stops early stops the generation."""
    relay = _Relay()
    worker = threading.Thread(target=relay.run, args=(model, tokenizer, seed, config), daemon=True)
    worker.start()
    try:
        while (part := relay.parts.get()) is not _Relay.DONE:
            if isinstance(part, BaseException):
                raise part
            yield part
    finally:
        relay.cancelled = True
        worker.join()
