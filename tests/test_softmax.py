"""The clustered softmax (exact, normalised, tied, and chosen only where it saves work), and the
other defaults chosen from the corpus and the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.train import clustered_softmax_head


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("hidden", [12, 16])
def test_clustered_softmax_is_normalised_and_its_loss_is_exact(tie: bool, hidden: int) -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(60, embedding_size=12, hidden_size=hidden, tie=tie, softmax_head=9)).eval()
    tokens = torch.randint(0, 60, (3, 11))
    targets = torch.randint(0, 60, (3, 11))
    targets[0, :4] = torch.tensor([0, 8, 9, 59])  # both sides of the cut and both ends
    log_probs, _ = model(tokens)
    assert torch.allclose(log_probs.double().exp().sum(-1), torch.ones(3, 11, dtype=torch.double), atol=1e-5)
    assert torch.allclose(torch.log_softmax(log_probs, -1), log_probs, atol=1e-5)  # logits that are already log-probs
    target_log_probs, _ = model(tokens, targets=targets)  # what training and scoring ask for
    assert torch.allclose(target_log_probs, log_probs.gather(2, targets[..., None])[..., 0], atol=1e-5)


def test_clustered_softmax_keeps_the_weights_tied() -> None:
    model = RNNLanguageModel(ModelConfig(60, embedding_size=12, hidden_size=12, tie=True, softmax_head=9))
    assert model.decoder.weight is model.embedding.weight
    log_probs, _ = model(torch.randint(0, 60, (2, 5)), targets=torch.full((2, 5), 40))  # rare targets only
    (-log_probs.mean()).backward()
    assert model.embedding.weight.grad is not None
    assert model.embedding.weight.grad[40].abs().sum() > 0  # the rare token's own row learns


def test_head_is_chosen_from_the_token_counts() -> None:
    rng = np.random.default_rng(0)
    zipf = np.minimum(rng.zipf(1.2, 200_000), 10_000) - 1  # frequent ids first, as the word tokenizer numbers them
    head = clustered_softmax_head(zipf, 10_000, 256)
    assert 0 < head < 5_000
    coverage = np.mean(zipf < head)
    assert coverage > 0.5
    uniform = rng.integers(0, 10_000, 200_000)  # no frequent core: one softmax is as cheap
    assert clustered_softmax_head(uniform, 10_000, 256) == 0
    assert clustered_softmax_head(zipf % 500, 500, 256) == 0  # a small vocabulary keeps one softmax


def test_defaults_scale_with_the_corpus_and_the_budget() -> None:
    from rnnlm.train import LONG_BUDGET, default_size

    assert default_size(100_000, None, word_sized=False) == (256, 0.3)  # a tiny corpus: small, regularised
    assert default_size(1_000_000, 300.0, word_sized=False) == (256, 0.1)  # a short budget: the smaller model
    assert default_size(1_000_000, LONG_BUDGET, word_sized=False)[0] == 512  # time to learn: the larger one
    assert default_size(1_000_000, None, word_sized=True)[1] > default_size(1_000_000, None, word_sized=False)[1]
