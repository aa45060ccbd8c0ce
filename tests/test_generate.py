"""Generation: greedy decoding, sampling and beam search against the model's own distribution.

Every sample's log-probability is checked against one plain forward pass over seed and
continuation, so a state that lands in the wrong batch row (samples leaving the batch at a
stop string, beam hypotheses being reordered) shows up as a wrong number.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_corpus

from rnnlm.cli import app
from rnnlm.config import SamplingConfig
from rnnlm.generate import Continuations, Hypothesis, Sample, generate, length_normalised, next_token_distribution, unseen_text
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.tokenizers import Tokenizer, TokenizerSettings, train_tokenizer

SEEDS = ["", "the ", "a cat sat", "日本 🙂 "]


def run(trained, seed_text: str = "the ", **settings) -> list[Sample]:
    return generate(trained.model, trained.tokenizer, seed_text, SamplingConfig(**settings))


def context_ids(trained, seed_text: str) -> list[int]:
    return [trained.tokenizer.eol_id, *trained.tokenizer.encode(seed_text).tolist()]


def step_logits(trained, seed_text: str, tokens: list[int]) -> torch.Tensor:
    """The logits each generated token was drawn from, by one forward pass over the whole text."""
    context = context_ids(trained, seed_text)
    with torch.no_grad():
        logits = trained.model(torch.tensor([context + tokens[:-1]])).logits
    return logits[0, len(context) - 1:]


def reference_logprob(trained, seed_text: str, tokens: list[int]) -> float:
    """log P(tokens | end-of-line, seed) in float64, without carrying any state by hand."""
    if not tokens:
        return 0.0
    logprobs = torch.log_softmax(step_logits(trained, seed_text, tokens).double(), dim=-1)
    return float(logprobs.gather(1, torch.tensor(tokens)[:, None]).sum())


def check_sample(trained, seed_text: str, sample: Sample, config: SamplingConfig) -> None:
    """The sample's numbers and text agree with its tokens, the model and the stop settings."""
    assert math.isclose(sample.logprob, reference_logprob(trained, seed_text, sample.tokens), rel_tol=1e-5, abs_tol=1e-4)
    assert sample.score == length_normalised(sample.logprob, len(sample.tokens), config.length_penalty)
    assert sample.text == trained.tokenizer.decode(sample.tokens)  # one character per token
    stops = config.stop_strings
    if sample.stopped:
        assert any(sample.text.endswith(s) for s in stops)
        assert not any(s in sample.text[:-1] for s in stops)  # the first stop string ends it
    else:
        assert len(sample.tokens) == config.length
        assert not any(s in sample.text for s in stops)


# ---------------------------------------------------------------------------------------
# greedy decoding and its limits


def test_greedy_is_deterministic_and_matches_argmax_of_a_full_forward_pass(trained) -> None:
    seed = "the cat "
    first = run(trained, seed, strategy="greedy", length=30)[0]
    assert run(trained, seed, strategy="greedy", length=30) == [first] and len(first.tokens) == 30
    # re-feeding the whole text each step gives the same tokens as carrying the state
    ids = context_ids(trained, seed)
    expected = []
    with torch.no_grad():
        for _ in range(30):
            logits = trained.model(torch.tensor([ids])).logits
            expected.append(int(logits[0, -1].argmax()))
            ids.append(expected[-1])
    assert first.tokens == expected
    check_sample(trained, seed, first, SamplingConfig(length=30))


def test_temperature_towards_zero_and_top_k_one_equal_greedy(trained) -> None:
    for seed in SEEDS:
        greedy = run(trained, seed, strategy="greedy", length=40)[0].tokens
        for settings in ({"temperature": 0.0}, {"temperature": 1e-3}, {"top_k": 1}, {"top_p": 1e-6}):
            assert run(trained, seed, length=40, random_seed=5, **settings)[0].tokens == greedy, (seed, settings)


# ---------------------------------------------------------------------------------------
# beam search


def test_beam_size_one_equals_greedy(trained) -> None:
    for seed in SEEDS:
        greedy = run(trained, seed, strategy="greedy", length=50)
        assert run(trained, seed, strategy="beam", beam_size=1, length=50) == greedy, seed


@pytest.mark.parametrize("seed", SEEDS)
def test_beam_of_five_is_at_least_as_likely_as_greedy(trained, seed: str) -> None:
    for length in (10, 60):
        greedy = run(trained, seed, strategy="greedy", length=length)[0]
        config = SamplingConfig(strategy="beam", beam_size=5, num_samples=5, length=length)
        beams = generate(trained.model, trained.tokenizer, seed, config)
        assert beams[0].logprob >= greedy.logprob - 1e-9
        assert len(beams) == 5 and len({tuple(b.tokens) for b in beams}) == 5
        assert [b.logprob for b in beams] == sorted((b.logprob for b in beams), reverse=True)
        for beam in beams:
            check_sample(trained, seed, beam, config)


def test_beam_holding_every_hypothesis_finds_the_most_likely_sequence(trained) -> None:
    vocab = trained.tokenizer.vocab_size
    pairs = torch.cartesian_prod(torch.arange(vocab), torch.arange(vocab))
    context = torch.tensor(context_ids(trained, "the c")).expand(len(pairs), -1)
    with torch.no_grad():
        logits = trained.model(torch.cat([context, pairs[:, :1]], dim=1)).logits
    logprobs = torch.log_softmax(logits[:, -2:].double(), dim=-1)
    totals = logprobs[:, 0].gather(1, pairs[:, :1]) + logprobs[:, 1].gather(1, pairs[:, 1:])
    order = torch.argsort(totals.squeeze(1), descending=True)[:3]
    beams = run(trained, "the c", strategy="beam", beam_size=vocab, num_samples=3, length=2)
    assert [b.tokens for b in beams] == pairs[order].tolist()


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0, 2.0])
def test_beam_results_come_best_first_and_stop_at_the_end_of_a_line(trained, length_penalty: float) -> None:
    config = SamplingConfig(strategy="beam", beam_size=6, num_samples=6, length=60, until_eol=True,
                            stop=("!",), length_penalty=length_penalty)
    beams = generate(trained.model, trained.tokenizer, "the ", config)
    assert len(beams) == 6
    scores = [b.score for b in beams]
    assert scores == sorted(scores, reverse=True)
    if length_penalty == 0:  # total log-probability favours short lines
        assert beams[0].stopped
    assert len({tuple(b.tokens) for b in beams}) == 6
    for beam in beams:
        check_sample(trained, "the ", beam, config)


# ---------------------------------------------------------------------------------------
# sampling


def test_random_seed_makes_every_strategy_reproducible(trained) -> None:
    for settings in ({}, {"num_samples": 4}, {"num_samples": 6, "until_eol": True, "top_p": 0.9},
                     {"strategy": "beam", "num_samples": 3}, {"strategy": "greedy"}):
        first = run(trained, length=40, random_seed=9, **settings)
        assert run(trained, length=40, random_seed=9, **settings) == first, settings
    assert run(trained, length=40, random_seed=10) != run(trained, length=40, random_seed=9)
    batch = run(trained, length=40, num_samples=4, random_seed=9)
    assert len({tuple(s.tokens) for s in batch}) == 4  # the samples of a batch are independent


def test_samples_stop_independently_and_carry_their_own_state(trained) -> None:
    config = SamplingConfig(num_samples=12, length=80, stop=("!", "ca"), until_eol=True, temperature=1.2,
                            random_seed=3)
    samples = generate(trained.model, trained.tokenizer, "the ", config)
    assert len(samples) == 12
    assert len({len(s.tokens) for s in samples}) > 3  # they end at different lengths
    assert any(s.stopped for s in samples) and any(s.text.endswith("\n") for s in samples)
    for sample in samples:
        check_sample(trained, "the ", sample, config)


@pytest.mark.parametrize("seed", SEEDS)
def test_sample_logprob_is_the_models_not_the_reshaped_distributions(trained, seed: str) -> None:
    config = SamplingConfig(num_samples=3, length=30, temperature=0.6, top_k=5, top_p=0.8, random_seed=1)
    for sample in generate(trained.model, trained.tokenizer, seed, config):
        check_sample(trained, seed, sample, config)


def test_greedy_with_a_stop_string_is_greedy_cut_after_it(trained) -> None:
    whole = run(trained, "a ", strategy="greedy", length=80)[0]
    stop = whole.text[20:22]
    cut = run(trained, "a ", strategy="greedy", length=80, stop=(stop,))[0]
    end = whole.text.index(stop) + len(stop)
    assert cut.stopped and cut.text == whole.text[:end] and cut.tokens == whole.tokens[:end]


def test_streamed_text_is_the_sample_text(trained) -> None:
    for settings in ({}, {"stop": ("e",)}, {"strategy": "greedy", "until_eol": True}):
        pieces: list[str] = []
        config = SamplingConfig(length=50, random_seed=4, **settings)
        [sample] = generate(trained.model, trained.tokenizer, "the ", config, on_text=pieces.append)
        assert "".join(pieces) == sample.text
        assert sample == generate(trained.model, trained.tokenizer, "the ", config)[0]


def test_generation_leaves_the_onednn_setting_as_it_was(trained) -> None:
    before = torch.backends.mkldnn.enabled
    run(trained, length=3)
    run(trained, strategy="beam", length=3)
    assert torch.backends.mkldnn.enabled == before


def test_top_k_and_top_p_samples_stay_inside_their_sets(trained) -> None:
    k_samples = run(trained, "the ", length=60, num_samples=4, top_k=3, random_seed=1)
    for sample in k_samples:
        logits = step_logits(trained, "the ", sample.tokens)
        for step, token in enumerate(sample.tokens):
            assert token in torch.topk(logits[step], 3).indices.tolist()
    p = 0.7
    p_samples = run(trained, "the ", length=60, num_samples=4, top_p=p, random_seed=2)
    for sample in p_samples:
        probs = torch.softmax(step_logits(trained, "the ", sample.tokens).double(), dim=-1)
        for step, token in enumerate(sample.tokens):
            mass_of_more_likely = float(probs[step][probs[step] > probs[step, token]].sum())
            assert mass_of_more_likely < p + 1e-5  # the nucleus had not been reached without it


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 6, 1.0), (1.5, 0, 0.8)])
def test_sampled_frequencies_match_the_distribution(trained, temperature: float, top_k: int, top_p: float) -> None:
    from scipy.stats import chisquare

    draws, seed = 20_000, "the "
    samples = run(trained, seed, length=1, num_samples=draws, temperature=temperature, top_k=top_k, top_p=top_p,
                  random_seed=0)
    counts = np.bincount([s.tokens[0] for s in samples], minlength=trained.tokenizer.vocab_size)
    with torch.no_grad():
        logits = trained.model(torch.tensor([context_ids(trained, seed)])).logits[:, -1].double()
    if (temperature, top_k, top_p) == (1.0, 0, 1.0):
        probs = torch.softmax(logits, dim=-1)[0]  # the model's own distribution
    else:
        probs = next_token_distribution(logits, temperature, top_k, top_p)[0].double()
    expected = (probs / probs.sum() * draws).numpy()
    assert counts[expected == 0].sum() == 0
    assert (expected > 5).sum() >= 4  # enough categories for the test to mean something
    rare = (expected > 0) & (expected < 5)  # pooled into one category, where there are any
    observed = np.append(counts[expected >= 5], counts[rare].sum() if rare.any() else [])
    expected = np.append(expected[expected >= 5], expected[rare].sum() if rare.any() else [])
    assert chisquare(observed, expected).pvalue > 0.001


logit_rows = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda seed: torch.randn(3, 17, generator=torch.Generator().manual_seed(seed)) * 3)


@given(logits=logit_rows, k=st.integers(min_value=1, max_value=17),
       temperature=st.floats(min_value=0.1, max_value=3.0))
def test_top_k_gives_zero_probability_outside_the_k_most_likely(logits, k: int, temperature: float) -> None:
    probs = next_token_distribution(logits, temperature=temperature, top_k=k)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    top = torch.topk(logits, k, dim=-1).indices
    inside = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)
    assert torch.all(probs[~inside] == 0)
    # within the top k the ratios are those of the tempered softmax
    expected = torch.softmax(logits.masked_fill(~inside, -torch.inf) / temperature, dim=-1)
    assert torch.allclose(probs, expected, atol=1e-6)


@given(logits=logit_rows, p=st.floats(min_value=0.01, max_value=0.999))
def test_top_p_keeps_the_smallest_nucleus(logits, p: float) -> None:
    probs = next_token_distribution(logits, top_p=p)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    full = torch.softmax(logits.double(), dim=-1)
    for row in range(3):
        ordered = torch.argsort(full[row], descending=True)
        cumulative = torch.cumsum(full[row][ordered], 0)
        size = int(torch.searchsorted(cumulative, torch.tensor(p, dtype=torch.float64))) + 1
        if abs(float(cumulative[size - 1]) - p) < 1e-5 or (size > 1 and abs(float(cumulative[size - 2]) - p) < 1e-5):
            continue  # too close to call in float32
        kept = set(torch.nonzero(probs[row]).flatten().tolist())
        assert kept == set(ordered[:size].tolist())  # the most likely tokens, just enough to reach p
        renormalised = full[row] / full[row][ordered[:size]].sum()
        for token in kept:
            assert math.isclose(float(probs[row, token]), float(renormalised[token]), rel_tol=1e-4)


# ---------------------------------------------------------------------------------------
# the command line


def invoke(trained, *args: str):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["sample", "-m", str(trained.directory), *args])
    assert result.exit_code == 0, result.output
    return result


def test_cli_text_is_the_seed_and_the_library_sample(trained) -> None:
    args = ["--seed", "the ", "--length", "40", "--random-seed", "7"]
    first = invoke(trained, *args)
    assert invoke(trained, *args).stdout == first.stdout
    expected = "the " + run(trained, "the ", length=40, random_seed=7)[0].text
    assert first.stdout == expected + ("" if expected.endswith("\n") else "\n")


def test_cli_prints_several_samples_separated_by_an_empty_line(trained) -> None:
    result = invoke(trained, "--seed", "a ", "--strategy", "beam", "--num-samples", "3", "--length", "30",
                    "--until-eol")
    beams = run(trained, "a ", strategy="beam", num_samples=3, length=30, until_eol=True)
    blocks = ["a " + b.text + ("" if b.text.endswith("\n") else "\n") for b in beams]
    assert result.stdout == "\n".join(blocks)


def test_cli_jsonl_carries_the_seed_text_logprob_and_settings(trained) -> None:
    result = invoke(trained, "--seed", "the ", "--length", "30", "--num-samples", "3", "--stop", "!", "--stop", "ca",
                    "--top-k", "8", "--format", "jsonl", "--random-seed", "5")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    config = SamplingConfig(length=30, num_samples=3, stop=("!", "ca"), top_k=8, random_seed=5)
    samples = generate(trained.model, trained.tokenizer, "the ", config)
    assert len(records) == 3
    for record, sample in zip(records, samples):
        assert record["seed"] == "the " and record["text"] == sample.text
        assert record["logprob"] == sample.logprob and record["score"] == sample.score
        assert record["tokens"] == len(sample.tokens) and record["stopped"] == sample.stopped
        assert record["strategy"] == "sample" and record["top_k"] == 8 and record["stop"] == ["!", "ca"]
        assert {"temperature", "top_p", "beam_size", "length_penalty", "random_seed"} <= record.keys()


def test_cli_jsonl_records_a_fresh_random_seed_that_reproduces_the_sample(trained) -> None:
    record = json.loads(invoke(trained, "--length", "30", "--format", "jsonl").stdout)
    again = json.loads(invoke(trained, "--length", "30", "--format", "jsonl",
                              "--random-seed", str(record["random_seed"])).stdout)
    assert again == record


def test_cli_seed_of_unseen_characters_warns_once_and_samples(trained) -> None:
    result = invoke(trained, "--seed", "✓☃✓", "--length", "20", "--random-seed", "1")
    assert result.stderr.count("warning") == 1 and "✓☃" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout.startswith("✓☃✓") and len(result.stdout) >= 23


def test_word_model_continuation_joins_the_seed_with_a_space_and_warns_about_unknown_words() -> None:
    tokenizer = train_tokenizer("word", ["the cat sat on the mat\nthe dog ran\n"])
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(tokenizer.vocab_size, "lstm", 1, 8, 8, 0.0, tie=False)).eval()
    [sample] = generate(model, tokenizer, "the cat", SamplingConfig(strategy="greedy", length=5))
    seed_ids = tokenizer.encode("the cat").tolist()
    assert tokenizer.encode("the cat" + sample.text).tolist() == seed_ids + sample.tokens  # nothing glued together
    assert sample.text[0] in " \n"
    assert unseen_text(tokenizer, "the zebra and the cat") == "zebra and"


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    """One of each kind; the subword one is mostly byte pieces, which split characters."""
    text = make_corpus(60, seed=2)
    return {"char": train_tokenizer("char", [text]), "word": train_tokenizer("word", [text]),
            "bpe": train_tokenizer("bpe", [text], TokenizerSettings(vocab_size=300))}


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
@given(data=st.data())
def test_text_decoded_step_by_step_is_the_whole_decode(tokenizers, kind: str, data: st.DataObject) -> None:
    """Re-decoding only the tokens since the last character start gives what decoding every token
    would, and the part marked final never changes afterwards."""
    tokenizer = tokenizers[kind]
    token = st.integers(min_value=0, max_value=tokenizer.vocab_size - 1)
    context, tokens = data.draw(token), data.draw(st.lists(token, max_size=40))
    continuations = Continuations(tokenizer, stops=(), stream=True, context_token=context)
    hypothesis, finals = Hypothesis(), []
    for count, next_token in enumerate(tokens, start=1):
        hypothesis = continuations.extend(hypothesis, next_token, 0.0)
        whole = tokenizer.decode([context, *tokens[:count]])[len(tokenizer.decode([context])):]
        assert hypothesis.text == whole
        finals.append(continuations.final_text(hypothesis))
        assert all(whole.startswith(final) for final in finals)


def test_streamed_subword_text_is_the_sample_text_with_characters_split_over_byte_pieces(tokenizers) -> None:
    tokenizer = tokenizers["bpe"]
    torch.manual_seed(0)  # untrained: it samples byte pieces often, so characters arrive in parts
    model = RNNLanguageModel(ModelConfig(tokenizer.vocab_size, "lstm", 1, 8, 8, 0.0, tie=False)).eval()
    for settings in ({}, {"stop": ("e",)}, {"temperature": 2.0}):
        pieces: list[str] = []
        config = SamplingConfig(length=200, random_seed=1, **settings)
        [sample] = generate(model, tokenizer, "caf\u00e9 ", config, on_text=pieces.append)
        assert "".join(pieces) == sample.text
        assert sample == generate(model, tokenizer, "caf\u00e9 ", config)[0]
        assert sample.stopped or sample.text == tokenizer.decode([tokenizer.encode("caf\u00e9 ")[-1], *sample.tokens])[1:]
