"""Regularisation (AWD-LSTM's and Zaremba's), NT-ASGD, the step schedule and the presets.

Every regularisation option must be active in training mode and absent in evaluation mode:
an evaluated model gives exactly the outputs of the same weights without the option.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_corpus, run_cli
from rnnlm.checkpoint import load_checkpoint, load_model, read_metrics
from rnnlm.config import TrainConfig
from rnnlm.defaults import MODEL_SETTINGS, PRESETS
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.prepared_corpus import PreparedCorpus
from rnnlm.sizing import parameter_count
from rnnlm.model import ModelConfig, RNNLanguageModel, dropout_mask
from rnnlm import training
from rnnlm.training import (
    SilentReporter,
    WeightAverage,
    averaging_triggered,
    learning_rate,
    train,
    train_step,
)

PLAIN = ModelConfig(vocab_size=40, cell="lstm", layers=2, embedding_size=12, hidden_size=16, dropout=0.0, tie=True)

OPTIONS = {
    "output dropout": dict(dropout=0.5, input_dropout=0.0, layer_dropout=0.0),
    "input dropout": dict(input_dropout=0.5),
    "layer dropout": dict(layer_dropout=0.5),
    "locked output dropout": dict(dropout=0.5, input_dropout=0.0, layer_dropout=0.0, locked_dropout=True),
    "locked input dropout": dict(input_dropout=0.5, locked_dropout=True),
    "locked layer dropout": dict(layer_dropout=0.5, locked_dropout=True),
    "embedding dropout": dict(embedding_dropout=0.5),
    "weight dropout": dict(weight_dropout=0.5),
}


def twin_models(**option: object) -> tuple[RNNLanguageModel, RNNLanguageModel]:
    """A model with the option, and one without it holding the same weights."""
    torch.manual_seed(0)
    plain = RNNLanguageModel(PLAIN)
    regularised = RNNLanguageModel(replace(PLAIN, **option))
    regularised.load_state_dict(plain.state_dict())
    return regularised, plain


TOKENS = torch.randint(0, 40, (4, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", OPTIONS)
def test_option_is_active_in_training_only(name: str) -> None:
    regularised, plain = twin_models(**OPTIONS[name])
    plain.eval()
    expected = plain(TOKENS).logits

    regularised.eval()
    first, second = regularised(TOKENS).logits, regularised(TOKENS).logits
    assert torch.equal(first, expected)
    assert torch.equal(second, expected)

    regularised.train()
    torch.manual_seed(5)
    noisy = regularised(TOKENS).logits
    assert not torch.allclose(noisy, expected)
    torch.manual_seed(6)
    assert not torch.allclose(regularised(TOKENS).logits, noisy)  # a fresh mask each call


def test_locked_dropout_keeps_one_mask_across_time() -> None:
    ones = torch.ones(3, 50, 8)
    mask = dropout_mask(ones, 0.5, locked=True)
    assert mask.shape == (3, 1, 8)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    plain = dropout_mask(ones, 0.25, locked=False)
    assert plain.shape == ones.shape
    assert abs(plain.mean().item() - 1.0) < 0.05  # scaled to keep the expected value
    assert abs((plain == 0).float().mean().item() - 0.25) < 0.03

    model = RNNLanguageModel(replace(PLAIN, input_dropout=0.5, locked_dropout=True)).train()
    dropped = model._dropout(ones, 0.5)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # every time step dropped alike
    assert not torch.equal(dropped[0], dropped[1])  # but each sequence on its own


def test_embedding_dropout_drops_whole_word_types() -> None:
    model = RNNLanguageModel(replace(PLAIN, embedding_dropout=0.5)).train()
    tokens = torch.tensor([[3, 3, 7, 3, 7, 7, 3]])
    torch.manual_seed(2)
    embedded = model._embed(tokens)[0]
    for token in (3, 7):
        rows = embedded[tokens[0] == token]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # one decision per word type
        row, weight = rows[0], model.embedding.weight[token]
        assert torch.equal(row, torch.zeros_like(row)) or torch.allclose(row, weight * 2)


def test_weight_dropout_leaves_the_weights_alone_and_trains_them() -> None:
    model = RNNLanguageModel(replace(PLAIN, weight_dropout=0.5)).train()
    before = model.rnns[0].weight_hh_l0.detach().clone()
    logits = model(TOKENS).logits
    assert torch.equal(model.rnns[0].weight_hh_l0, before)
    logits.sum().backward()
    gradient = model.rnns[0].weight_hh_l0.grad
    assert gradient is not None and gradient.abs().sum() > 0


def test_activation_penalties_follow_their_formulas_in_training_only() -> None:
    model = RNNLanguageModel(replace(PLAIN, activation_penalty=2.0, temporal_penalty=1.0)).train()
    raw: list[torch.Tensor] = []
    model.rnns[-1].register_forward_hook(lambda module, inputs, output: raw.append(output[0]))
    penalty = model(TOKENS).penalty
    top = raw[-1]
    expected = 2.0 * top.pow(2).mean() + 1.0 * (top[:, 1:] - top[:, :-1]).pow(2).mean()  # no output dropout here
    assert penalty is not None
    assert torch.allclose(penalty, expected)
    model.eval()
    assert model(TOKENS).penalty is None
    plain = RNNLanguageModel(PLAIN).train()
    assert plain(TOKENS).penalty is None


def test_weights_of_the_stacked_rnn_load_into_the_layers() -> None:
    """Model directories written before the layers were separate modules still load."""
    model = RNNLanguageModel(PLAIN).eval()
    old_names = {}
    for key, value in model.state_dict().items():
        if key.startswith("rnns."):
            _, layer, name = key.split(".")
            key = f"rnn.{name.removesuffix('_l0')}_l{layer}"
        old_names[key] = value
    assert "rnn.weight_hh_l1" in old_names
    reloaded = RNNLanguageModel(PLAIN).eval()
    reloaded.load_state_dict(old_names)
    assert torch.equal(reloaded(TOKENS).logits, model(TOKENS).logits)


def test_weight_average_is_the_mean_of_the_weights_it_saw() -> None:
    model = RNNLanguageModel(PLAIN)
    average = WeightAverage(model)
    seen = []
    for step in range(4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(step + 1.0)
        average.update(model)
        seen.append(model.embedding.weight.detach().clone())
    current = model.embedding.weight.detach().clone()
    with average.swapped_in(model):
        assert torch.allclose(model.embedding.weight, torch.stack(seen).mean(0), atol=1e-6)
    assert torch.equal(model.embedding.weight, current)


def test_averaging_triggers_when_validation_stops_improving() -> None:
    assert not averaging_triggered([5.0, 4.0, 3.0, 2.5, 2.4, 2.3], nonmono=5)
    assert not averaging_triggered([5.0, 4.0, 3.0], nonmono=5)  # too early to tell
    assert averaging_triggered([5.0, 4.0, 3.0, 2.9, 2.95, 3.1, 3.2], nonmono=2)
    assert not averaging_triggered([5.0, 4.0, 3.0, 2.9, 2.95, 2.85], nonmono=2)


def test_step_schedule_holds_then_decays_by_epoch() -> None:
    config = TrainConfig(lr=1.0, schedule="step", lr_decay=0.5, decay_start=4, warmup_steps=0)
    rates = [learning_rate(config, step=100, epoch=epoch, progress=0.5, scale=1.0) for epoch in range(1, 8)]
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> PreparedCorpus:
    directory = tmp_path_factory.mktemp("regularisation")
    (directory / "corpus.txt").write_text(make_corpus(300, seed=8), encoding="utf-8")
    return prepare([str(directory / "corpus.txt")], directory / "prepared", PrepareOptions(valid_fraction=0.1))


class Events(SilentReporter):
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, message: str) -> None:
        self.events.append(message)


def test_ntasgd_averages_after_the_trigger_and_saves_the_average(corpus: PreparedCorpus, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    awd = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, layers=2, embedding_size=16, hidden_size=24, dropout=0.3,
                      input_dropout=0.3, layer_dropout=0.2, embedding_dropout=0.1, weight_dropout=0.3,
                      locked_dropout=True, activation_penalty=2.0, temporal_penalty=1.0, tie=True)
    # a learning rate so high that validation soon stops improving, and a trigger that fires at once
    config = TrainConfig(optimizer="ntasgd", lr=30.0, clip=0.25, schedule="constant", warmup_steps=0, nonmono=1,
                         epochs=3, batch_size=8, bptt=16, eval_every=5, checkpoint_every=7, patience=None,
                         precision="fp32", device="cpu")
    weights: list[dict[str, torch.Tensor]] = []  # after each applied step: weights[k] after step k + 1

    def recording_step(model: torch.nn.Module, *args: Any) -> tuple[float, bool, Any]:
        loss, finite, carried = train_step(model, *args)
        if finite:
            weights.append({name: p.detach().double().clone() for name, p in model.named_parameters()})
        return loss, finite, carried

    monkeypatch.setattr(training, "train_step", recording_step)
    reporter = Events()
    result = train(corpus, tmp_path / "model", awd, config, reporter)
    assert result.steps == len(weights)
    metrics = read_metrics(tmp_path / "model")
    # averaging begins at the first evaluation where NT-ASGD's trigger fires, and not before
    losses = [record["val_loss"] for record in metrics]
    first = next(i for i in range(len(losses)) if averaging_triggered(losses[:i + 1], config.nonmono))
    trigger = metrics[first]["step"]
    assert [record["averaging"] for record in metrics] == [i > first for i in range(len(metrics))]
    assert [event for event in reporter.events if "averaging" in event] == [
        f"step {trigger}: validation loss stopped improving; averaging the weights from here (NT-ASGD)"]

    def mean_since_trigger(step: int) -> dict[str, torch.Tensor]:
        """The mean of the weights after each step from the trigger's next to `step`."""
        return {name: torch.stack([w[name] for w in weights[trigger:step]]).mean(0) for name in weights[0]}

    def assert_close_to(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
        assert saved.keys() == expected.keys()
        for name, mean in expected.items():
            torch.testing.assert_close(saved[name].double(), mean, rtol=1e-5, atol=1e-6)

    saved = load_checkpoint(tmp_path / "model", "cpu")  # the last checkpoint, at the end of the run
    assert saved.state["step"] == result.steps and saved.state["averaged_steps"] == result.steps - trigger
    assert_close_to({k.removeprefix("average."): t for k, t in saved.tensors.items() if k.startswith("average.")},
                    mean_since_trigger(result.steps))
    best = [record for record in metrics if record["best"]][-1]
    assert best["averaging"] and best["step"] > trigger + 1  # the best weights are an average of several steps
    model = load_model(tmp_path / "model").model
    assert_close_to(dict(model.named_parameters()), mean_since_trigger(best["step"]))


def test_every_preset_builds_its_model_and_training_settings() -> None:
    for preset in PRESETS.values():
        assert preset.source and preset.published
        model_settings = {MODEL_SETTINGS.get(name, name): value for name, value in preset.model.items()}
        ModelConfig(vocab_size=100, **model_settings)  # type: ignore[arg-type]
        TrainConfig(**preset.training).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("name, vocab_size, published", [("sru-ptb", 10_000, 24e6), ("srupp-enwik8", 205, 108e6)])
def test_sru_presets_have_the_published_parameter_counts(name: str, vocab_size: int, published: float) -> None:
    """The papers' sizes (PTB's 10,000 words; enwik8's 205 byte values) within 1%: a preset whose cell or
    shape drifted from the paper's would train a different model under the paper's name."""
    model_settings = {MODEL_SETTINGS.get(key, key): value for key, value in PRESETS[name].model.items()}
    config = ModelConfig(vocab_size=vocab_size, **model_settings)  # type: ignore[arg-type]
    assert parameter_count(config) == pytest.approx(published, rel=0.01)


def test_preset_from_the_command_line_with_overrides(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(200, seed=2), encoding="utf-8")
    result = run_cli("train", corpus, "--preset", "awd-lstm", "--hidden-size", "24", "--embedding-size", "16",
                     "--layers", "2", "--epochs", "1", "--batch-size", "4", "--precision", "fp32", "-o", tmp_path / "m")
    assert result.returncode == 0, result
    assert any("Merity" in line for line in result.stderr_lines)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["hidden_size"] == 24  # the command line wins
    assert config["model"]["weight_dropout"] == 0.5 and config["model"]["locked_dropout"] is True  # the preset's
    assert config["model"]["activation_penalty"] == 2.0
    assert config["training"]["optimizer"] == "ntasgd" and config["training"]["epochs"] == 1

    listing = run_cli("presets")
    assert listing.returncode == 0
    for name in PRESETS:
        assert name in listing.stdout
    assert "--no-tie" in listing.stdout and "--locked-dropout" in listing.stdout

    one = run_cli("presets", "zaremba-medium", "--json")
    record = json.loads(one.stdout)
    assert record["name"] == "zaremba-medium" and record["model"]["hidden_size"] == 650
    assert len(one.stdout.splitlines()) == 1

    unknown = run_cli("train", corpus, "--preset", "nope")
    assert unknown.returncode == 1 and "awd-lstm" in unknown.stderr
