"""One huge line: `score`, `perplexity` and `sample --seed` read it a slice of text and a window
of tokens at a time, and give the numbers that reading it whole gives.

Slicing is checked for every tokenizer (the tokens of the slices are the tokens of the whole);
a long line's score against the batched path that every ordinary line takes; memory by
counting what is held at once (characters tokenised, tokens fed to the model, bytes that
Python and numpy allocate), never by timing. Speed and peak memory of the commands are
measured in benchmarks/long_lines.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import WORDS, make_corpus, run_cli
from rnnlm.config import DynamicEvaluation
from rnnlm.prepared_corpus import TextCounts
from rnnlm.generate import prime, unseen_text
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.scoring import _score_batch, encode_line, perplexity, score_lines, stream_totals, time_window
from rnnlm.slices import (
    SLICE_CHARS,
    count_words_sliced,
    cuts_anywhere,
    encode_slices,
    slice_text,
    token_windows,
)
from rnnlm.tokenizers import SUBWORD_KINDS, Tokenizer, TokenizerSettings, count_words, train_tokenizer

KINDS = ("char", "word", "bpe", "unigram")
UNSEEN = ["✓", "☃", "𝔘𝔫𝔦", "zebra"]  # out of every vocabulary trained below (words and characters)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    text = make_corpus(300, seed=3)
    return {kind: train_tokenizer(kind, [text], TokenizerSettings(vocab_size=350 if kind in SUBWORD_KINDS else None))
            for kind in KINDS}


def random_model(tokenizer: Tokenizer, hidden: int = 16) -> RNNLanguageModel:
    """Random weights: every equality below holds whatever the weights, and they cost nothing to make."""
    torch.manual_seed(0)
    return RNNLanguageModel(ModelConfig(tokenizer.vocab_size, "lstm", 2, 8, hidden, 0.0, tie=False)).eval()


def long_line(chars: int, seed: int = 0, ascii: bool = False) -> str:
    """Words (a few unseen), single and double spaces and tabs, until the line is `chars` long."""
    rng = random.Random(seed)
    words = [word for word in WORDS + UNSEEN[:1] if word.isascii() or not ascii]
    parts: list[str] = []
    length = 0
    while length < chars:
        parts.append(rng.choice(words) + rng.choice([" ", " ", " ", "  ", "\t"]))
        length += len(parts[-1])
    return "".join(parts)[:chars]


# ---------------------------------------------------------------------------------------
# Slicing text and cutting windows


AWKWARD = ["the", "cat", " ", "  ", "\t", "\n", "\u3000", "\u2581", "\u2581\u2581x", "café", "日本", "🙂", *UNSEEN,
           "averyveryverylongwordwithoutanyspace"]


@pytest.mark.parametrize("kind", KINDS)
@given(parts=st.lists(st.sampled_from(AWKWARD), max_size=60), size=st.integers(1, 40))
def test_the_tokens_of_the_slices_are_the_tokens_of_the_whole(tokenizers, kind: str, parts: list[str],
                                                                size: int) -> None:
    tokenizer = tokenizers[kind]
    text = "".join(parts)
    assert "".join(slice_text(text, size, cuts_anywhere(tokenizer))) == text
    sliced = np.concatenate([np.empty(0, dtype=np.int64), *encode_slices(tokenizer, text, size)])
    assert sliced.tolist() == tokenizer.encode(text).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_line_tokenised_in_slices_is_the_line_tokenised_whole(tokenizers, kind: str) -> None:
    tokenizer = tokenizers[kind]
    line = long_line(3 * SLICE_CHARS + 123)
    pieces = list(encode_slices(tokenizer, line))
    assert len(pieces) >= 3
    assert np.concatenate(pieces).tolist() == tokenizer.encode(line).tolist()


@given(text=st.text(alphabet=" \n\tab", max_size=200), size=st.integers(1, 30))
@example(text="a\n", size=1)  # the only cut is the end of the text: no empty slice after it
def test_slices_are_cut_before_a_space_or_after_a_newline_and_kept_short_where_they_can_be(text: str,
                                                                                             size: int) -> None:
    slices = list(slice_text(text, size))
    assert "".join(slices) == text and all(slices[1:])
    for before, piece in zip(slices, slices[1:]):
        assert piece.startswith(" ") or before.endswith("\n")
    for piece in slices:
        if len(piece) > size:  # only where no cut lies within reach
            assert " " not in piece[1 : size + 1] and "\n" not in piece[:size]
    assert all(len(piece) == size for piece in list(slice_text(text, size, anywhere=True))[:-1])


@given(text=st.text(alphabet=" \n\t\u3000ab✓", max_size=200), size=st.integers(1, 30))
def test_words_counted_in_slices_are_the_words_of_the_whole(text: str, size: int) -> None:
    assert count_words_sliced(text, size) == count_words(text) == len(text.split())


@given(lengths=st.lists(st.integers(0, 30), max_size=12), window=st.integers(1, 9))
def test_windows_fall_where_they_would_on_the_whole_stream(lengths: list[int], window: int) -> None:
    starts = np.cumsum([0, *lengths])
    pieces = [np.arange(start, start + length) for start, length in zip(starts, lengths)]
    stream = np.arange(-1, starts[-1])  # the context token -1, then every token of the pieces
    expected = [stream[column : column + window + 1].tolist() for column in range(0, len(stream) - 1, window)]
    assert [block.tolist() for block in token_windows(pieces, -1, window)] == expected


# ---------------------------------------------------------------------------------------
# Scores: a long line as the batched path scores it alone; sums and streams agree


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_a_long_line_scores_as_the_batched_path_scores_it_alone(tokenizers, kind: str) -> None:
    tokenizer = tokenizers[kind]
    model = random_model(tokenizer)
    line = long_line(SLICE_CHARS + 5000, seed=1)
    score = score_lines(model, tokenizer, [line], detail=True)[0]
    ids = encode_line(tokenizer, line)
    with torch.inference_mode():
        reference = _score_batch(model, [ids], tokenizer.eol_id)[0]  # what every line got before
    unknown = ids == tokenizer.unk_id
    assert score.token_ids == ids.tolist()
    np.testing.assert_allclose(score.token_logprobs, reference, rtol=1e-6, atol=1e-9)
    assert math.isclose(score.logprob, float(reference.sum()), rel_tol=1e-6)
    assert (score.tokens, score.oov) == (len(ids), int(unknown.sum()))
    assert kind in SUBWORD_KINDS or score.oov > 0  # byte fallback leaves subwords none
    assert math.isclose(score.oov_logprob, float(reference[unknown].sum()), rel_tol=1e-6, abs_tol=1e-9)
    assert (score.words, score.chars) == (len(line.split()) + 1, len(line) + 1)


def test_long_lines_among_short_ones_change_no_score_and_sum_to_independent_perplexity(tokenizers) -> None:
    tokenizer = tokenizers["char"]
    model = random_model(tokenizer)
    short = make_corpus(40, seed=5).splitlines()
    long = [long_line(SLICE_CHARS + 1, seed=2), long_line(SLICE_CHARS + 700, seed=3)]
    lines = short[:20] + long[:1] + short[20:] + long[1:]
    scores = score_lines(model, tokenizer, lines)
    alone = score_lines(model, tokenizer, short) + [score_lines(model, tokenizer, [line])[0] for line in long]
    assert [s.logprob for s in scores] == [s.logprob for s in alone[:20] + alone[-2:-1] + alone[20:-2] + alone[-1:]]
    text = "".join(line + "\n" for line in lines)
    cut = text.index("\n", len(text) // 3) + 1
    independent = perplexity(model, tokenizer, [text[:cut], text[cut:]], independent_lines=True)
    assert math.isclose(independent.nll, -sum(s.logprob for s in scores), rel_tol=1e-9)
    assert independent.tokens == sum(s.tokens for s in scores) and independent.lines == len(lines)


@pytest.mark.parametrize("kind", ["char", "word"])
def test_stream_perplexity_with_a_long_line_is_the_stream_read_whole(tokenizers, kind: str) -> None:
    tokenizer = tokenizers[kind]
    model = random_model(tokenizer)
    lines = [*make_corpus(30, seed=6).splitlines(), long_line(2 * SLICE_CHARS + 11, seed=4), "", "the end"]
    text = "".join(line + "\n" for line in lines)
    ids = np.concatenate([encode_line(tokenizer, line) for line in lines])
    reference, _ = stream_totals(model, ids, 1, 512, tokenizer.eol_id, unk_id=tokenizer.unk_id)  # as before
    counts = TextCounts()
    counts.add_text(text)
    cut = text.index("\n", len(text) // 2) + 1
    for chunks in ([text], [text[:cut], text[cut:]], [text.rstrip("\n")]):
        result = perplexity(model, tokenizer, chunks)
        assert math.isclose(result.nll, reference.nll, rel_tol=1e-6)
        assert (result.tokens, result.oov) == (reference.tokens, reference.oov) == (len(ids), int((ids == 1).sum()))
        assert (result.words, result.chars, result.lines) == (counts.words, counts.chars, counts.lines)


def test_stream_perplexity_of_one_long_line_is_its_score(tokenizers) -> None:
    tokenizer = tokenizers["char"]
    model = random_model(tokenizer)
    line = long_line(SLICE_CHARS + 99, seed=7)
    stream = perplexity(model, tokenizer, [line + "\n"])
    score = score_lines(model, tokenizer, [line])[0]
    assert stream.tokens == score.tokens and math.isclose(-stream.nll, score.logprob, rel_tol=1e-6)


def test_dynamic_evaluation_reads_the_same_segments_however_the_text_is_chunked(tokenizers) -> None:
    tokenizer = tokenizers["char"]
    text = make_corpus(20, seed=8)
    cut = text.index("\n", len(text) // 3) + 1
    settings = DynamicEvaluation(segment=37)
    whole = perplexity(copy.deepcopy(random_model(tokenizer)), tokenizer, [text], dynamic=settings)
    chunked = perplexity(copy.deepcopy(random_model(tokenizer)), tokenizer, [text[:cut], text[cut:]], dynamic=settings)
    assert whole.tokens == chunked.tokens == len(tokenizer.encode(text))
    assert whole.nll == chunked.nll


# ---------------------------------------------------------------------------------------
# Backward models (train --reverse) read long lines in slices too


def backward(model: RNNLanguageModel) -> RNNLanguageModel:
    """The same weights, reading each line last token first."""
    reverse = RNNLanguageModel(dataclasses.replace(model.config, reverse=True)).eval()
    reverse.load_state_dict(model.state_dict())
    return reverse


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_a_backward_model_reads_a_long_line_as_a_forward_model_reads_its_tokens_reversed(tokenizers, kind: str) -> None:
    tokenizer = tokenizers[kind]
    forward = random_model(tokenizer)
    model = backward(forward)
    lines = ["the cat sat", long_line(2 * SLICE_CHARS + 300, seed=15), "", "x  y"]
    reversed_ids = [np.append(tokenizer.encode(line)[::-1], tokenizer.eol_id) for line in lines]
    assert [encode_line(tokenizer, line, reverse=True).tolist() for line in lines] == [i.tolist() for i in reversed_ids]
    scores = score_lines(model, tokenizer, lines, detail=True)
    with torch.inference_mode():
        reference = [_score_batch(forward, [ids], tokenizer.eol_id)[0] for ids in reversed_ids]
    for score, ids, expected in zip(scores, reversed_ids, reference):
        assert score.token_ids == ids.tolist()
        np.testing.assert_allclose(score.token_logprobs, expected, rtol=1e-6, atol=1e-9)
    stream, _ = stream_totals(forward, np.concatenate(reversed_ids), 1, 512, tokenizer.eol_id, unk_id=tokenizer.unk_id)
    text = "".join(line + "\n" for line in lines)
    cut = text.index("\n", len(text) // 2) + 1
    for chunks in ([text], [text[:cut], text[cut:]], [text.rstrip("\n")]):
        result = perplexity(model, tokenizer, chunks)
        assert (result.tokens, result.oov) == (stream.tokens, stream.oov)
        assert math.isclose(result.nll, stream.nll, rel_tol=1e-6)


def test_a_backward_model_primes_on_a_long_seed_read_last_token_first(tokenizers) -> None:
    tokenizer = tokenizers["char"]
    forward = random_model(tokenizer)
    seed = long_line(SLICE_CHARS + 77, seed=16)
    with torch.inference_mode():
        logits, state, last = prime(backward(forward), tokenizer, seed)
        ids = torch.from_numpy(np.concatenate([[tokenizer.eol_id], tokenizer.encode(seed)[::-1]]).astype(np.int64))[None]
        whole = forward(ids)
        whole_logits, whole_state = whole.logits, whole.state
    assert last == int(ids[0, -1])
    torch.testing.assert_close(logits, whole_logits[:, -1])
    torch.testing.assert_close(state, whole_state)


# ---------------------------------------------------------------------------------------
# Memory: what is held at once does not grow with the line


class CountingTokenizer:
    """A tokenizer that remembers the longest text it was asked to encode."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.longest = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, text: str) -> np.ndarray:
        self.longest = max(self.longest, len(text))
        return self.inner.encode(text)


def widest_call(model: RNNLanguageModel) -> list[int]:
    """A list whose last element is, after the model has run, the most tokens it got in one call."""
    widest = [0]
    model.register_forward_pre_hook(lambda module, inputs: widest.append(max(widest[-1], inputs[0].numel())))
    return widest


def reader(case: str, model: RNNLanguageModel, tokenizer: Tokenizer, line: str) -> Callable[[], object]:
    """The command's library call on a text holding `line`, built before it is called."""
    if case == "score":
        lines = ["a short line", line, "another"]
        return lambda: score_lines(model, tokenizer, lines)
    if case == "seed":
        return lambda: prime(model, tokenizer, line)
    text = "first line\n" + line + "\nlast line\n"
    return lambda: perplexity(model, tokenizer, [text], independent_lines=case == "independent")


@pytest.mark.parametrize("case", ["score", "stream", "independent", "seed"])
def test_a_long_line_is_read_a_slice_and_a_window_at_a_time(tokenizers, case: str) -> None:
    tokenizer = CountingTokenizer(tokenizers["char"])
    model = random_model(tokenizer, hidden=4)  # type: ignore[arg-type]
    widest = widest_call(model)
    line = long_line(6 * SLICE_CHARS, seed=9, ascii=True)
    call = reader(case, model, tokenizer, line)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        with torch.inference_mode():
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokenizer.longest <= SLICE_CHARS + len("first line\n")
    assert widest[-1] <= time_window(1, tokenizer.vocab_size)
    # a slice's text and tokens, a window, and two copies of the line's text (one byte a character);
    # read whole, the line's tokens alone would take 8 bytes each, and there were three arrays of them
    assert peak < 32 * SLICE_CHARS + 2 * len(line) < 8 * len(line)


def test_a_long_seed_primes_the_state_that_one_pass_over_it_gives(tokenizers) -> None:
    tokenizer = tokenizers["char"]
    model = random_model(tokenizer)
    seed = long_line(3000, seed=10)
    with torch.inference_mode():
        logits, state, last = prime(model, tokenizer, seed)
        ids = torch.from_numpy(np.concatenate([[tokenizer.eol_id], tokenizer.encode(seed)]))[None]
        whole = model(ids)
        whole_logits, whole_state = whole.logits, whole.state
    assert last == int(ids[0, -1])
    torch.testing.assert_close(logits, whole_logits[:, -1])
    torch.testing.assert_close(state, whole_state)
    with torch.inference_mode():
        empty_logits, _, empty_last = prime(model, tokenizer, "")
        torch.testing.assert_close(empty_logits, model(torch.tensor([[tokenizer.eol_id]])).logits[:, -1])
    assert empty_last == tokenizer.eol_id


@pytest.mark.parametrize("kind", ["char", "word"])
def test_unseen_text_of_a_long_seed_names_each_unseen_unit_once_in_order(tokenizers, kind: str) -> None:
    tokenizer = tokenizers[kind]
    text = long_line(SLICE_CHARS, seed=11) + " ☃ zebra\n" + long_line(SLICE_CHARS, seed=12) + " ✓ ☃"
    units = text.split() if kind == "word" else text.replace("\n", "")
    expected = [unit for unit in dict.fromkeys(units) if tokenizer.unk_id in tokenizer.encode(unit)]
    assert "☃" in expected and "✓" in expected
    assert unseen_text(tokenizer, text) == (" " if kind == "word" else "").join(expected)


# ---------------------------------------------------------------------------------------
# The command line


def test_cli_score_and_perplexity_of_a_file_with_a_long_line(trained, tmp_path) -> None:
    lines = ["the cat sat on a mat.", long_line(SLICE_CHARS + 2000, seed=13), "", "it is not so big?"]
    path = tmp_path / "long.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    scored = run_cli("score", path, "-m", trained.directory, "--format", "value")
    measured = run_cli("perplexity", path, "-m", trained.directory, "--independent-lines", "--json")
    assert scored.returncode == measured.returncode == 0, (scored, measured)
    values = [float(value) for value in scored.stdout.split()]
    library = score_lines(trained.model, trained.tokenizer, lines)
    assert len(values) == len(lines)
    assert all(math.isclose(v, s.logprob, rel_tol=1e-6, abs_tol=1e-5) for v, s in zip(values, library))
    assert math.isclose(json.loads(measured.stdout)["nll"], -sum(values), rel_tol=1e-6)
    sampled = run_cli("sample", "-m", trained.directory, "--seed", long_line(SLICE_CHARS + 2000, seed=14),
                      "--strategy", "greedy", "--length", "5")
    assert sampled.returncode == 0, sampled
