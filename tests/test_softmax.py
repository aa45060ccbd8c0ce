"""The clustered softmax (exact, normalised, tied, and chosen only where it saves work), and the
other defaults chosen from the corpus and the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.defaults import clustered_softmax_head


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("hidden", [12, 16])
def test_clustered_softmax_is_normalised_and_its_loss_is_exact(tie: bool, hidden: int) -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(60, embedding_size=12, hidden_size=hidden, tie=tie, softmax_head=9)).eval()
    tokens = torch.randint(0, 60, (3, 11))
    targets = torch.randint(0, 60, (3, 11))
    targets[0, :4] = torch.tensor([0, 8, 9, 59])  # both sides of the cut and both ends
    log_probs = model(tokens).logits
    assert torch.allclose(log_probs.double().exp().sum(-1), torch.ones(3, 11, dtype=torch.double), atol=1e-5)
    assert torch.allclose(torch.log_softmax(log_probs, -1), log_probs, atol=1e-5)  # logits that are already log-probs
    target_log_probs = model(tokens, targets=targets).target_log_probs  # what training and scoring ask for
    assert torch.allclose(target_log_probs, log_probs.gather(2, targets[..., None])[..., 0], atol=1e-5)


def test_clustered_softmax_keeps_the_weights_tied() -> None:
    model = RNNLanguageModel(ModelConfig(60, embedding_size=12, hidden_size=12, tie=True, softmax_head=9))
    assert model.decoder.weight is model.embedding.weight
    log_probs = model(torch.randint(0, 60, (2, 5)), targets=torch.full((2, 5), 40)).target_log_probs  # rare targets only
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
    from rnnlm.defaults import LONG_BUDGET, default_size

    assert default_size(100_000, None, word_sized=False) == (256, 0.3)  # a tiny corpus: small, regularised
    assert default_size(1_000_000, 300.0, word_sized=False) == (256, 0.1)  # a short budget: the smaller model
    assert default_size(1_000_000, LONG_BUDGET, word_sized=False)[0] == 512  # time to learn: the larger one
    assert default_size(1_000_000, None, word_sized=True)[1] > default_size(1_000_000, None, word_sized=False)[1]


def test_rare_rows_are_padded_to_four_sizes_per_doubling() -> None:
    from rnnlm.softmax import bucket_rows

    sizes = [bucket_rows(rows) for rows in range(1, 5000)]
    assert all(size >= rows for rows, size in enumerate(sizes, start=1))
    assert all(size <= 1.25 * rows for rows, size in enumerate(sizes, start=1) if rows >= 128)  # a quarter more at most
    for power in range(7, 12):  # rows in (2^k, 2^(k+1)]: four shapes, so the allocator reuses their blocks
        assert len({bucket_rows(rows) for rows in range(2 ** power + 1, 2 ** (power + 1) + 1)}) == 4
    assert len(set(sizes[:16])) == 1


def reference_target_log_probs(model: RNNLanguageModel, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The two-level softmax written out in float64 over every row, nothing padded or selected."""
    head = model.config.softmax_head
    assert head is not None and model.cluster is not None and model.tail_projection is not None
    weight, bias = model.decoder.weight.double(), model.decoder.bias.double()
    f = features.double()
    head_logits = torch.cat([f @ weight[:head].T + bias[:head], f @ model.cluster.weight.double().T + model.cluster.bias.double()], 1)
    head_lp = torch.log_softmax(head_logits, -1)
    projected = f @ model.tail_projection.weight.double().T + model.tail_projection.bias.double()
    tail_lp = torch.log_softmax(projected @ weight[head:].T + bias[head:], -1)
    full = torch.cat([head_lp[:, :-1], head_lp[:, -1:] + tail_lp], 1)
    return full.gather(1, targets[:, None])[:, 0]


@pytest.mark.parametrize("rare_count", [1, 5, 17, 40])
def test_padding_the_rare_rows_changes_no_number(rare_count: int) -> None:
    """Log-probabilities and gradients equal the unpadded float64 computation: the padding rows
    (copies of row 0) add nothing, to row 0 or to any weight."""
    torch.manual_seed(1)
    model = RNNLanguageModel(ModelConfig(300, embedding_size=8, hidden_size=8, tie=True, softmax_head=30, dropout=0.0))
    features = torch.randn(48, 8)
    targets = torch.randint(0, 30, (48,))
    targets[torch.randperm(47)[:rare_count] + 1] = torch.randint(30, 300, (rare_count,))  # row 0 stays frequent
    assert model.clustered is not None
    got = model.clustered.target_log_probs(features, targets)
    got.sum().backward()
    new_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = reference_target_log_probs(model, features, targets)
    expected.sum().backward()
    assert torch.allclose(got.double(), expected, atol=1e-5)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.allclose(new_grads[name].double(), parameter.grad.double(), atol=1e-5), name


class Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Notes the shape of every dtype conversion and matrix product that torch runs."""

    def __init__(self) -> None:
        super().__init__()
        self.casts: list[tuple[int, ...]] = []
        self.products: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and result.dtype == torch.bfloat16:
            self.casts.append(tuple(result.shape))
        if func in (torch.ops.aten.addmm.default, torch.ops.aten.mm.default):
            self.products.append(tuple(result.shape))
        return result


def test_bf16_training_casts_the_decoder_once_and_repeats_its_shapes() -> None:
    from rnnlm.softmax import bucket_rows

    torch.manual_seed(2)
    vocab, head, size = 600, 100, 16
    model = RNNLanguageModel(ModelConfig(vocab, embedding_size=size, hidden_size=size, softmax_head=head, dropout=0.0))
    recorder = Recorder()
    for rare_count in (3, 9, 21, 33):
        targets = torch.randint(0, head, (2, 20))
        targets.view(-1)[:rare_count] = torch.randint(head, vocab, (rare_count,))
        recorder.casts.clear()
        with recorder, torch.autocast("cpu", dtype=torch.bfloat16):
            log_probs = model(torch.randint(0, vocab, (2, 20)), targets=targets).target_log_probs
        assert [shape for shape in recorder.casts if math.prod(shape) >= head * size] == [(vocab, size)]
    tail_rows = {shape[0] for shape in recorder.products if shape[-1] == vocab - head}
    assert tail_rows == {bucket_rows(n) for n in (3, 9, 21, 33)} == {16, 32, 48}
