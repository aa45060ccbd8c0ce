"""The recurrent language model: embedding, a fused torch RNN/LSTM/GRU stack, and a decoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")

State = Union[Tensor, tuple[Tensor, Tensor]]


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    embedding_size: int = 256
    hidden_size: int = 256
    dropout: float = 0.2
    tie: bool = True

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RNNLanguageModel(nn.Module):
    """Predicts the next token from the tokens so far, carrying a recurrent state.

    With weight tying and a hidden size different from the embedding size, a linear
    projection maps the top hidden state to the embedding size before the tied decoder.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = self._make_rnn(config)
        needs_projection = config.tie and config.hidden_size != config.embedding_size
        self.projection = nn.Linear(config.hidden_size, config.embedding_size) if needs_projection else None
        decoder_inputs = config.embedding_size if config.tie else config.hidden_size
        self.decoder = nn.Linear(decoder_inputs, config.vocab_size)
        if config.tie:
            self.decoder.weight = self.embedding.weight
        self._initialise()

    @staticmethod
    def _make_rnn(config: ModelConfig) -> nn.RNNBase:
        between_layers = config.dropout if config.layers > 1 else 0.0
        shape = dict(input_size=config.embedding_size, hidden_size=config.hidden_size, num_layers=config.layers,
                     dropout=between_layers, batch_first=True)
        if config.cell == "lstm":
            return nn.LSTM(**shape)
        if config.cell == "gru":
            return nn.GRU(**shape)
        return nn.RNN(nonlinearity=config.cell.removeprefix("rnn_"), **shape)

    def _initialise(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def initial_state(self, batch_size: int) -> State:
        """The zero state a fresh sequence starts from."""
        weight = self.embedding.weight
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        hidden = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        return (hidden, hidden.clone()) if self.config.cell == "lstm" else hidden

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits of shape (batch, time, vocab) for token ids of shape (batch, time)."""
        if state is None:
            state = self.initial_state(tokens.shape[0])
        hidden, state = self.rnn(self.dropout(self.embedding(tokens)), state)
        hidden = self.dropout(hidden)
        if self.projection is not None:
            hidden = self.projection(hidden)
        return self.decoder(hidden), state


def detach_state(state: State) -> State:
    """The same state, cut from the graph, for truncated back-propagation."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def select_state(state: State, rows: Tensor) -> State:
    """The states of the given batch rows (for reordering or repeating sequences)."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, rows) for s in state)  # type: ignore[return-value]
    return state.index_select(1, rows)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
