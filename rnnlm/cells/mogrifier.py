"""The Mogrifier LSTM (Melis, Kočiský and Blunsom, 2020, "Mogrifier LSTM").

Before each LSTM step, the input x and the previous hidden state h gate each other in turn
for a number of rounds: odd rounds scale x by 2σ(Q h), even rounds scale h by 2σ(R x). The
LSTM step that follows is torch's (gates i, f, g, o, the same weight names as nn.LSTM), so
with 0 rounds the layer computes exactly what an LSTM does. The gating makes each step's input
projection depend on the step before, so the layer steps through time one token at a time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm.cells.layer import SavedActivations, State, ZeroState


class MogrifierLayer(ZeroState, SavedActivations, nn.Module):
    state_arity = 2  # (h, c)
    saved_floats_per_unit = 20  # the step-by-step LSTM keeps each gate's input and output

    @classmethod
    def saved_floats(cls, config: Any, window: int) -> int:
        """An LSTM's, and two vectors per round of gating (the gate and the gated vector)."""
        return (cls.saved_floats_per_unit + 2 * config.mogrifier_rounds) * config.hidden_size

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        for parameter in self.parameters():  # as nn.LSTM initialises
            nn.init.uniform_(parameter, -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size))
        self.rounds = nn.ModuleList(  # round 1 gates x from h (Q), round 2 h from x (R), and so on
            nn.Linear(hidden_size, input_size, bias=False) if i % 2 == 0 else nn.Linear(input_size, hidden_size, bias=False)
            for i in range(config.mogrifier_rounds))

    def _mogrify(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        for i, gate in enumerate(self.rounds):
            if i % 2 == 0:
                x = 2 * torch.sigmoid(gate(h)) * x
            else:
                h = 2 * torch.sigmoid(gate(x)) * h
        return x, h

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state[0][0], state[1][0]
        outputs = []
        for t in range(x.shape[1]):
            x_t, h = self._mogrify(x[:, t], h)
            gates = F.linear(x_t, self.weight_ih_l0, self.bias_ih_l0) + F.linear(h, self.weight_hh_l0, self.bias_hh_l0)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, 1), (h[None].to(state[0].dtype), c[None].to(state[1].dtype))
