"""Text generation: greedy decoding, sampling (temperature, top-k, top-p) and beam search.

The seed is run through the model once; after that each step feeds only the newest token of
every sequence and carries its recurrent state, so a step costs the same however long the
text. Parallel samples, and the hypotheses of a beam, run together as one batch: beam search
reorders the states of its hypotheses with `select_state` and never re-feeds a prefix.

Every log-probability is log P(generated tokens | end-of-line, seed) under the model itself,
in nats, whatever temperature or cut-offs shaped the sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from rnnlm.config import SamplingConfig
from rnnlm.direction import encode_directed
from rnnlm.errors import InvalidOption, UserError
from rnnlm.model import RNNLanguageModel, State, select_state
from rnnlm.scoring import time_window
from rnnlm.slices import slice_text, token_windows
from rnnlm.tokenizers import Tokenizer


@dataclass
class Sample:
    """One continuation of the seed."""

    text: str  # the generated text, up to and including the stop string that ended it
    tokens: list[int]
    logprob: float  # log P(tokens | end-of-line, seed) under the model, in nats
    score: float  # logprob / len(tokens) ** length_penalty: what beam search ranks by
    stopped: bool  # ended by a stop string rather than by the length limit


@dataclass(frozen=True)
class Hypothesis:
    """A continuation being generated; `text` is kept decoded only while stop strings or streaming need it.

    `text[:settled_length]` is the text of `tokens[:settled_tokens]`, final whatever tokens follow:
    only the tokens after it are decoded again at each step.
    """

    tokens: tuple[int, ...] = ()
    logprob: float = 0.0
    text: str = ""
    stopped: bool = False
    settled_tokens: int = 0
    settled_length: int = 0


def length_normalised(logprob: float, tokens: int, length_penalty: float) -> float:
    """logprob / tokens ** length_penalty: 0 ranks by total log-probability, 1 by log-probability per token."""
    return logprob / max(tokens, 1) ** length_penalty


class Continuations:
    """Extends hypotheses token by token and ends them at stop strings, matched on the decoded text.

    Tokens are decoded after the token before them (at first, the seed's last token), so that
    what joins them (the space before a word, for a word tokenizer) is part of the continuation.
    Only the tokens since the last one that started a character are decoded again at each step,
    so a step costs the same however long the text: before such a token the text is complete,
    while after a byte piece it may still end in a partial UTF-8 character that later bytes
    complete. The text is decoded only when stop strings or streaming need it.
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], stream: bool, context_token: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.longest_stop = max(map(len, stops), default=0)
        self.decode_each_step = stream or bool(stops)
        self.context_token = context_token

    def decode(self, tokens: Sequence[int], context: int | None = None) -> str:
        """The text of `tokens` following the token `context` (default: the seed's last)."""
        context = self.context_token if context is None else context
        return self.tokenizer.decode([context, *tokens])[len(self.tokenizer.decode([context])):]

    def extend(self, hypothesis: Hypothesis, token: int, logprob: float) -> Hypothesis:
        tokens = (*hypothesis.tokens, token)
        total = hypothesis.logprob + logprob
        if not self.decode_each_step:
            return Hypothesis(tokens, total)
        settled_tokens, settled_length = hypothesis.settled_tokens, hypothesis.settled_length
        if self.tokenizer.starts_character(token):
            settled_tokens, settled_length = len(hypothesis.tokens), len(hypothesis.text)
        context = tokens[settled_tokens - 1] if settled_tokens else self.context_token
        text = hypothesis.text[:settled_length] + self.decode(tokens[settled_tokens:], context)
        start = max(0, len(hypothesis.text) - self.longest_stop + 1)  # a new match ends in the new text
        ends = [at + len(stop) for stop in self.stops if (at := text.find(stop, start)) >= 0]
        if ends:
            return Hypothesis(tokens, total, text[:min(ends)], True, settled_tokens, settled_length)
        return Hypothesis(tokens, total, text, False, settled_tokens, settled_length)

    @staticmethod
    def final_text(hypothesis: Hypothesis) -> str:
        """The part of the text that no later token can change: what streaming may show."""
        return hypothesis.text if hypothesis.stopped else hypothesis.text[:hypothesis.settled_length]

    def sample(self, hypothesis: Hypothesis, length_penalty: float) -> Sample:
        text = hypothesis.text if self.decode_each_step else self.decode(hypothesis.tokens)
        score = length_normalised(hypothesis.logprob, len(hypothesis.tokens), length_penalty)
        return Sample(text, list(hypothesis.tokens), hypothesis.logprob, score, hypothesis.stopped)


def next_token_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                            top_p: float = 1.0) -> torch.Tensor:
    """Probabilities after temperature, then top-k, then top-p (nucleus), renormalised.

    Rows of `logits` are independent. Temperature must be positive here (0 is greedy).
    """
    scaled = logits.float() / temperature
    if top_k and top_k < scaled.shape[-1]:
        kth_largest = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth_largest, -torch.inf)
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # keeps the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def prime(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str) -> tuple[torch.Tensor, State, int]:
    """Run the end-of-line context and the seed (last token first, for a backward model) through
    the model: last logits, state and token.

    The seed goes in windows, a slice of its text at a time, so that a long seed holds one
    window of logits rather than a distribution for every one of its tokens."""
    device = model.embedding.weight.device
    output = model(torch.tensor([[tokenizer.eol_id]], device=device))
    last_token = tokenizer.eol_id
    window = time_window(1, model.config.vocab_size)
    for block in token_windows(encode_directed(tokenizer, seed_text, model.config.reverse), tokenizer.eol_id, window):
        output = model(torch.from_numpy(block[1:])[None].to(device), output.state)
        last_token = int(block[-1])
    return output.logits[:, -1], output.state, last_token


def unseen_text(tokenizer: Tokenizer, text: str) -> str:
    """The characters (words, for a word tokenizer) of `text` that map to the unknown token, each
    once, for a warning; empty when the tokenizer knows them all. Each distinct one is encoded
    once, and a long text is split a slice at a time."""
    words = tokenizer.kind == "word"
    units: dict[str, None] = {}
    for piece in slice_text(text):
        units.update(dict.fromkeys(piece.split() if words else piece.replace("\n", "")))
    unseen = [unit for unit in units if tokenizer.unk_id in tokenizer.encode(unit)]
    return (" " if words else "").join(unseen)


def seed_warning(tokenizer: Tokenizer, seed: str, name: str) -> str | None:
    """What to warn about a seed the model has partly not seen, or None; a seed that is not UTF-8
    (lone surrogates from a mis-decoded argument) is refused. `name` is how the caller calls it."""
    try:
        seed.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{name} is not valid UTF-8") from None
    unseen = unseen_text(tokenizer, seed)
    return f"the model has not seen {unseen!r} in training; the seed uses the unknown token for them" if unseen else None


@torch.inference_mode()
def generate(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str, config: SamplingConfig,
             on_text: Callable[[str], None] | None = None) -> list[Sample]:
    """Continuations of `seed_text`: greedy or sampled ones in order, or a beam search's best first.

    With greedy decoding or sampling, `on_text` receives the first sample's text as it is generated,
    each part once it is final (a partial UTF-8 character waits for its last byte). A backward
    model writes the text before the seed instead (see _generate_backward).
    """
    config.validate()
    model.eval()
    if model.config.reverse:
        return _generate_backward(model, tokenizer, seed_text, config)
    logits, state, last_token = prime(model, tokenizer, seed_text)
    continuations = Continuations(tokenizer, config.stop_strings, stream=on_text is not None, context_token=last_token)
    hypotheses = _search(model, logits, state, config, continuations, on_text)
    return [continuations.sample(h, config.length_penalty) for h in hypotheses]


def _generate_backward(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str,
                       config: SamplingConfig) -> list[Sample]:
    """The text before the seed, in reading order, back to the start of its line at most.

    A backward model reads a line last token first, and after the line's start (its end-of-line
    token) comes the next line of the corpus, not the one before: so every sample ends at its
    first end of line, which is not part of its text. Stop strings, matched on text as it is
    written forward, have no meaning here; nothing can be shown before the sample is complete.
    """
    if config.stop:
        raise InvalidOption("stop", "a backward model writes right to left, back to the start of the line; "
                                    "stop strings are not matched for it")
    config = replace(config, until_eol=True)
    logits, state, last_token = prime(model, tokenizer, seed_text)
    continuations = Continuations(tokenizer, config.stop_strings, stream=False, context_token=last_token)
    hypotheses = _search(model, logits, state, config, continuations, None)
    seed_ids = list(tokenizer.encode(seed_text))
    seed_length = len(tokenizer.decode(seed_ids))
    samples = []
    for hypothesis in hypotheses:
        before = [t for t in reversed(hypothesis.tokens) if t != tokenizer.eol_id]  # at most the one, generated last
        text = tokenizer.decode(before + seed_ids)
        score = length_normalised(hypothesis.logprob, len(hypothesis.tokens), config.length_penalty)
        samples.append(Sample(text[:len(text) - seed_length], list(hypothesis.tokens), hypothesis.logprob, score,
                              hypothesis.stopped))
    return samples


def _search(model: RNNLanguageModel, logits: torch.Tensor, state: State, config: SamplingConfig,
            continuations: Continuations, on_text: Callable[[str], None] | None) -> list[Hypothesis]:
    with _onednn_off():
        if config.strategy == "beam":
            return _beam_search(model, logits, state, config, continuations)
        return _sample(model, logits, state, config, continuations, on_text)


@contextmanager
def _onednn_off() -> Iterator[None]:
    """Run one-token steps without oneDNN: its LSTM has a large cost per call, which made a step
    at batch 1 about six times slower than torch's own kernels (torch 2.13 on the CPU)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def _advance(model: RNNLanguageModel, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """Feed one token per row: the next logits and the new state."""
    output = model(tokens[:, None], state)
    return output.logits[:, -1], output.state


def _sample(model: RNNLanguageModel, logits: torch.Tensor, state: State, config: SamplingConfig,
            continuations: Continuations, on_text: Callable[[str], None] | None) -> list[Hypothesis]:
    """`num_samples` greedy or sampled continuations as one batch; a sample that stops leaves the batch."""
    generator = torch.Generator(device=logits.device).manual_seed(config.random_seed)
    greedy = config.strategy == "greedy" or config.temperature == 0
    rows = torch.zeros(config.num_samples, dtype=torch.long, device=logits.device)
    logits, state = logits.index_select(0, rows), select_state(state, rows)
    hypotheses = [Hypothesis()] * config.num_samples
    live = list(range(config.num_samples))  # the sample that each batch row continues
    shown = 0  # characters of the first sample's text given to on_text
    for step in range(config.length):
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = next_token_distribution(logits, config.temperature, config.top_k, config.top_p)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
        for sample, token, logprob in zip(live, tokens.tolist(), logprobs.tolist()):
            hypotheses[sample] = continuations.extend(hypotheses[sample], token, logprob)
        if on_text is not None:
            final = continuations.final_text(hypotheses[0])
            on_text(final[shown:])
            shown = len(final)
        going = [row for row, sample in enumerate(live) if not hypotheses[sample].stopped]
        if len(going) < len(live):
            if not going:
                break
            index = torch.tensor(going, device=tokens.device)
            tokens, state = tokens.index_select(0, index), select_state(state, index)
            live = [live[row] for row in going]
        if step + 1 < config.length:
            logits, state = _advance(model, tokens, state)
    if on_text is not None:
        on_text(hypotheses[0].text[shown:])
    return hypotheses


def _beam_search(model: RNNLanguageModel, logits: torch.Tensor, state: State, config: SamplingConfig,
                 continuations: Continuations) -> list[Hypothesis]:
    """The `num_samples` best continuations by score, best first, from `beam_size` hypotheses run as one batch.

    A hypothesis that reaches a stop string leaves the beam as finished; the search ends at
    `length` tokens, or earlier once no hypothesis left in the beam can still beat the
    `num_samples` best finished ones.
    """
    def best(hypotheses: list[Hypothesis]) -> list[Hypothesis]:
        return sorted(hypotheses, key=lambda h: length_normalised(h.logprob, len(h.tokens), config.length_penalty),
                      reverse=True)[:config.num_samples]

    live, finished = [Hypothesis()], []
    for step in range(config.length):
        logprobs = torch.log_softmax(logits.float(), dim=-1).double()
        totals = torch.tensor([h.logprob for h in live], dtype=torch.float64, device=logits.device)[:, None] + logprobs
        # twice the beam, so that hypotheses leaving it at a stop string seldom leave it short
        top = torch.topk(totals.flatten(), min(2 * config.beam_size, totals.numel())).indices
        extended = []
        for index, logprob in zip(top.tolist(), logprobs.flatten()[top].tolist()):
            parent, token = divmod(index, logprobs.shape[1])
            extended.append((parent, continuations.extend(live[parent], token, logprob)))
        finished = best(finished + [h for _, h in extended if h.stopped])
        kept = [(parent, h) for parent, h in extended if not h.stopped][:config.beam_size]
        live = [h for _, h in kept]
        if not live or _cannot_improve(live, finished, config):
            return finished
        if step + 1 < config.length:
            parents = torch.tensor([parent for parent, _ in kept], device=logits.device)
            tokens = torch.tensor([h.tokens[-1] for h in live], device=logits.device)
            logits, state = _advance(model, tokens, select_state(state, parents))
    return best(finished + live)


def _cannot_improve(live: list[Hypothesis], finished: list[Hypothesis], config: SamplingConfig) -> bool:
    """True when no live hypothesis can still beat the `num_samples`-th best finished one.

    Log-probabilities only fall as tokens are added, so a live hypothesis can score at most
    its log-probability over the largest length normaliser it may still reach.
    """
    if len(finished) < config.num_samples:
        return False
    alpha = config.length_penalty
    worst = length_normalised(finished[-1].logprob, len(finished[-1].tokens), alpha)
    return all(h.logprob / max((len(h.tokens) + 1) ** alpha, config.length ** alpha) < worst for h in live)
