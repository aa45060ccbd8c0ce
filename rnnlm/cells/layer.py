"""What every cell's layer shares: a recurrent state that is a tuple of tensors.

A layer's `forward(x, state)` takes inputs of shape (batch, time, input) and a state tuple,
and returns outputs of shape (batch, time, hidden) with the state after the last step. Each
state tensor has the shape (1, batch, ...): the leading axis is the layer, along which the
model stacks its layers' states, and the batch is axis 1, along which rows are selected,
reordered for beam search and shared out among torchrun processes.
"""

from __future__ import annotations

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
