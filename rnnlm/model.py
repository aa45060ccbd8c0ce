"""The recurrent language model: embedding, a stack of recurrent layers of one cell (rnnlm.cells), and a decoder.

Regularisation follows AWD-LSTM (Merity et al., 2017), each part off or on by its setting:
embedding dropout drops whole word types; dropout on the inputs, between layers and on the
outputs is either ordinary or locked (one mask per sequence, shared across time steps, as in
variational dropout); weight dropout (DropConnect) drops hidden-to-hidden weights, one mask
per batch; activation regularisation (AR) and temporal activation regularisation (TAR)
penalise large and fast-changing top-layer outputs. All of them act only in training mode.

For large vocabularies the decoder can be a two-level ("clustered") softmax (rnnlm/softmax.py):
the `softmax_head` most frequent tokens and one cluster token share a softmax, and the rarer
tokens get theirs only when needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm.cells import cell_named
from rnnlm.cells.layer import State
from rnnlm.softmax import ClusteredSoftmax


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    embedding_size: int = 256
    hidden_size: int = 256
    dropout: float = 0.2  # on the top layer's outputs, and the default for the input and between-layer dropouts
    tie: bool = True
    input_dropout: Optional[float] = None  # on the embeddings (None: as dropout)
    layer_dropout: Optional[float] = None  # between recurrent layers (None: as dropout)
    embedding_dropout: float = 0.0  # whole word types, per batch
    weight_dropout: float = 0.0  # DropConnect on the hidden-to-hidden weights
    locked_dropout: bool = False  # one dropout mask per sequence instead of per time step
    activation_penalty: float = 0.0  # AR: alpha * mean(dropped top output ** 2)
    temporal_penalty: float = 0.0  # TAR: beta * mean((h_t - h_{t-1}) ** 2) on the raw top output
    init_range: Optional[float] = None  # every weight uniform in ±init_range (None: torch's defaults)
    softmax_head: Optional[int] = None  # tokens 0..head-1 in the first level of a clustered softmax (None: one softmax)
    reverse: bool = False  # a backward model: reads each line's tokens last to first, end-of-line still last (rnnlm.direction)
    mogrifier_rounds: int = 5  # the mogrifier cell: rounds of mutual gating before each LSTM step
    attention_memory: int = 64  # the sru++ cell: positions each token attends to (itself and those before it)

    def __post_init__(self) -> None:
        cell_named(self.cell)  # a ValueError naming the cells this version has
        if self.mogrifier_rounds < 0:
            raise ValueError(f"mogrifier_rounds must be 0 or more, got {self.mogrifier_rounds}")
        if self.attention_memory < 1:
            raise ValueError(f"attention_memory must be at least 1, got {self.attention_memory}")
        for name in ("dropout", "input_dropout", "layer_dropout", "embedding_dropout", "weight_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.softmax_head is not None and not 0 < self.softmax_head < self.vocab_size:
            raise ValueError(f"the softmax head ({self.softmax_head} tokens) must be smaller than the vocabulary "
                             f"({self.vocab_size} tokens)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelOutput:
    """What every call of the model returns, so that callers read named fields rather than
    guess a return mode, and training gets the AR/TAR penalty from the call that computed it.

    - `logits`, present when the call had no targets: shape (batch, time, vocab), scores whose
      softmax is the next-token distribution, that is natural-log probabilities up to a constant
      per position (with a clustered softmax, normalised ones already);
    - `target_log_probs`, present exactly when the call had targets: shape (batch, time), fp32,
      the normalised natural-log probability of each target;
    - `state`: the recurrent state after the last position, to carry into the next call;
    - `penalty`: the AR + TAR term to add to the loss (a scalar, like the mean loss per token in
      nats), present only in training mode with either penalty set.
    """

    logits: Tensor | None
    target_log_probs: Tensor | None
    state: State
    penalty: Tensor | None


def dropout_mask(x: Tensor, p: float, locked: bool) -> Tensor:
    """A keep-mask scaled by 1/(1-p), for x of shape (batch, time, features); locked, of shape
    (batch, 1, features): the same units dropped at every time step.

    Thresholding uniform numbers is about twice as fast on a CPU as torch's Bernoulli sampler.
    """
    shape = (x.shape[0], 1, x.shape[2]) if locked else x.shape
    return (torch.rand(shape, device=x.device) >= p).to(x.dtype) * (1 / (1 - p))


class RNNLanguageModel(nn.Module):
    """Predicts the next token from the tokens so far, carrying a recurrent state.

    With weight tying and a hidden size different from the embedding size, a linear
    projection maps the top hidden state to the embedding size before the tied decoder.
    `forward` returns a ModelOutput.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnns = nn.ModuleList(self._make_layer(config, layer) for layer in range(config.layers))
        needs_projection = config.tie and config.hidden_size != config.embedding_size
        self.projection = nn.Linear(config.hidden_size, config.embedding_size) if needs_projection else None
        decoder_inputs = config.embedding_size if config.tie else config.hidden_size
        self.decoder = nn.Linear(decoder_inputs, config.vocab_size)
        if config.tie:
            self.decoder.weight = self.embedding.weight
        self.cluster = nn.Linear(decoder_inputs, 1) if config.softmax_head else None  # the rare tokens' logit in the head
        self.tail_projection = nn.Linear(decoder_inputs, decoder_inputs) if config.softmax_head else None
        self.clustered = (ClusteredSoftmax(config.softmax_head, self.decoder, self.cluster, self.tail_projection)
                          if self.cluster is not None and self.tail_projection is not None else None)
        self._register_load_state_dict_pre_hook(_rename_stacked_rnn_weights)
        self._initialise()

    @staticmethod
    def _make_layer(config: ModelConfig, layer: int) -> nn.Module:
        inputs = config.embedding_size if layer == 0 else config.hidden_size
        return cell_named(config.cell).layer_class()(inputs, config.hidden_size, config)

    def _initialise(self) -> None:
        if self.config.init_range is not None:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -self.config.init_range, self.config.init_range)
        else:
            if self.config.tie:  # one matrix for both ends: small, as an output layer needs
                nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            # untied, the embedding keeps torch's N(0, 1): inputs of unit size train the first layer fastest
            if self.tail_projection is not None:  # rare tokens start out scored like the frequent ones
                nn.init.eye_(self.tail_projection.weight)
                nn.init.zeros_(self.tail_projection.bias)
        nn.init.zeros_(self.decoder.bias)

    def initial_state(self, batch_size: int) -> State:
        """The zero state a fresh sequence starts from: each layer's, stacked along the first axis."""
        weight = self.embedding.weight
        return _stack_states([rnn.initial_state(batch_size, weight.dtype, weight.device) for rnn in self.rnns])

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        if not self.training or p == 0:
            return x
        return x * dropout_mask(x, p, self.config.locked_dropout)

    def _embed(self, tokens: Tensor) -> Tensor:
        weight = self.embedding.weight
        p = self.config.embedding_dropout
        if self.training and p > 0:
            weight = weight * weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        return F.embedding(tokens, weight)

    def _run_layer(self, rnn: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
        p = self.config.weight_dropout
        if not self.training or p == 0:
            return rnn(x, state)
        dropped = {name: F.dropout(getattr(rnn, name), p) for name in cell_named(self.config.cell).weight_dropped}
        return torch.func.functional_call(rnn, dropped, (x, state))

    def forward(self, tokens: Tensor, state: State | None = None, targets: Tensor | None = None) -> ModelOutput:
        """The next-token logits for token ids of shape (batch, time); with `targets` of the same
        shape as `tokens`, only the log-probability of each target, which the clustered softmax
        computes without the whole distribution (ModelOutput says which field holds what).

        The clustered softmax gives normalised log-probabilities as its logits, which every use of
        logits (softmax, sampling with a temperature, top-k) treats alike."""
        config = self.config
        if state is None:
            state = self.initial_state(tokens.shape[0])
        between = config.dropout if config.layer_dropout is None else config.layer_dropout
        x = self._dropout(self._embed(tokens), config.dropout if config.input_dropout is None else config.input_dropout)
        final_states = []
        for layer, rnn in enumerate(self.rnns):
            layer_state = tuple(s[layer:layer + 1] for s in state)
            x, layer_state = self._run_layer(rnn, x, layer_state)
            final_states.append(layer_state)
            if layer < config.layers - 1:
                x = self._dropout(x, between)
        dropped = self._dropout(x, config.dropout)
        penalty = self._activation_regularisation(x, dropped) if self.training else None
        # as rows of one matrix: a batch-first RNN output is a strided view, which the decoder's
        # matrix product would otherwise handle as a batch of products, copying its weight for each
        features = dropped.reshape(-1, dropped.shape[-1])
        if self.projection is not None:
            features = self.projection(features)
        state = _stack_states(final_states)
        if targets is not None:
            target_log_probs = self._target_log_probs(features, targets.reshape(-1)).view(targets.shape)
            return ModelOutput(None, target_log_probs, state, penalty)
        logits = self.clustered.log_probs(features) if self.clustered is not None else self.decoder(features)
        return ModelOutput(logits.view(*tokens.shape, -1), None, state, penalty)

    def _target_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        if self.clustered is not None:
            return self.clustered.target_log_probs(features, targets)
        return -F.cross_entropy(self.decoder(features).float(), targets, reduction="none")

    def _activation_regularisation(self, raw: Tensor, dropped: Tensor) -> Tensor | None:
        config = self.config
        if not (config.activation_penalty or config.temporal_penalty):
            return None
        penalty = config.activation_penalty * dropped.float().pow(2).mean()
        if raw.shape[1] > 1:
            penalty = penalty + config.temporal_penalty * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        return penalty


def _stack_states(states: list[State]) -> State:
    return tuple(torch.cat(parts) for parts in zip(*states))


def _rename_stacked_rnn_weights(state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Weights saved by the earlier single multi-layer RNN (rnn.weight_ih_l1) load into the layer stack."""
    for key in [k for k in state_dict if k.startswith(prefix + "rnn.")]:
        name, layer = key[len(prefix) + 4:].rsplit("_l", 1)
        state_dict[f"{prefix}rnns.{layer}.{name}_l0"] = state_dict.pop(key)


def detach_state(state: State) -> State:
    """The same state, cut from the graph, for truncated back-propagation."""
    return tuple(s.detach() for s in state)


def select_state(state: State, rows: Tensor) -> State:
    """The states of the given batch rows (for reordering or repeating sequences)."""
    return tuple(s.index_select(1, rows) for s in state)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
