"""What every cell's layer shares: a recurrent state that is a tuple of tensors.

A layer's `forward(x, state)` takes inputs of shape (batch, time, input) and a state tuple,
and returns outputs of shape (batch, time, hidden) with the state after the last step. Each
state tensor has the shape (1, batch, ...): the leading axis is the layer, along which the
model stacks its layers' states, and the batch is axis 1, along which rows are selected,
reordered for beam search and shared out among torchrun processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

State = tuple[Tensor, ...]


class ZeroState:
    """The initial state of a layer whose state is `state_arity` vectors of `hidden_size`, all zero."""

    hidden_size: int
    state_arity: int

    def initial_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> State:
        zeros = torch.zeros(1, batch_size, self.hidden_size, dtype=dtype, device=device)
        return (zeros,) + tuple(zeros.clone() for _ in range(self.state_arity - 1))


class SavedActivations:
    """What a layer keeps for the backward pass, per token: the part of training memory that
    grows with the batch and the window, which rnnlm.sizing adds up before a run starts.

    An upper estimate in floats, checked against the tensors autograd really saves for every cell
    (tests/test_cells.py). A cell whose layer keeps more than a few vectors per hidden unit says so.
    """

    saved_floats_per_unit = 12  # gates, cell and hidden states, dropout masks

    @classmethod
    def saved_floats(cls, config: Any, window: int) -> int:
        """Floats kept per token of the layer, for hidden units of `config.hidden_size`."""
        return cls.saved_floats_per_unit * config.hidden_size
