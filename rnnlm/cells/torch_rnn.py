"""torch's fused recurrent layers (nn.LSTM, nn.GRU, nn.RNN) behind the cell interface.

They subclass torch's modules, so their weights keep the names torch gives them
(weight_ih_l0, weight_hh_l0, ...) and model directories saved before the cell registry load
unchanged; only the state is translated to and from the tuple every cell uses.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnlm.cells.layer import SavedActivations, State, ZeroState


class LSTMLayer(ZeroState, SavedActivations, nn.LSTM):
    state_arity = 2  # (h, c)
    saved_floats_per_unit = 20  # oneDNN keeps its gate workspace beside the states

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        nn.LSTM.__init__(self, input_size, hidden_size, batch_first=True)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # type: ignore[override]
        y, (h, c) = super().forward(x, state)
        return y, (h, c)


class GRULayer(ZeroState, SavedActivations, nn.GRU):
    state_arity = 1

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        nn.GRU.__init__(self, input_size, hidden_size, batch_first=True)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # type: ignore[override]
        y, h = super().forward(x, state[0])
        return y, (h,)


class RNNLayer(ZeroState, SavedActivations, nn.RNN):
    """The Elman RNN; the cell's name (rnn_tanh, rnn_relu) gives its nonlinearity."""

    state_arity = 1
    saved_floats_per_unit = 6  # one pre-activation and one output per step

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        nn.RNN.__init__(self, input_size, hidden_size, nonlinearity=config.cell.removeprefix("rnn_"), batch_first=True)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # type: ignore[override]
        y, h = super().forward(x, state[0])
        return y, (h,)
