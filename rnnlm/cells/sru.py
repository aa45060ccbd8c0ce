"""The Simple Recurrent Unit (Lei et al., 2018, "Simple Recurrent Units for Highly Parallelizable Recurrence").

The SRU moves all its matrix work out of the recurrence: one matrix product projects the
whole window (bf16 under autocast), and what remains per time step is elementwise, with
vector (not matrix) recurrent weights, run in fp32 by the fused kernel of sru_recurrence.
The highway connection carries the layer's input straight through where the reset gate is
closed; where the input and hidden sizes differ, a fourth block of the projection gives the
highway its input at the hidden size. Weight dropout drops entries of the recurrent vectors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm.cells.layer import SavedActivations, State, ZeroState
from rnnlm.cells.sru_recurrence import recurrence


class SRULayer(ZeroState, SavedActivations, nn.Module):
    state_arity = 1  # c

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.blocks = 3 if input_size == hidden_size else 4  # x̃, f̃, r̃ (and the projected highway input)
        self.weight = nn.Parameter(torch.empty(self.blocks * hidden_size, input_size))
        self.recurrence = nn.Parameter(torch.empty(2, hidden_size))  # v_f, v_r
        self.bias = nn.Parameter(torch.zeros(2, hidden_size))  # b_f, b_r
        nn.init.uniform_(self.weight, -math.sqrt(3 / input_size), math.sqrt(3 / input_size))  # unit-variance outputs
        nn.init.uniform_(self.recurrence, -math.sqrt(3 / hidden_size), math.sqrt(3 / hidden_size))

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = self.recur(F.linear(x, self.weight), x, state[0])
        return h, (c,)

    def recur(self, projected: Tensor, x: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs and the final c (shaped as `c0`) from the window's projections
        (batch, time, blocks × hidden) and the layer's input x, for the highway."""
        batch, steps, _ = x.shape
        projected = projected.float().view(batch, steps, self.blocks, self.hidden_size)
        highway = projected[:, :, 3] if self.blocks == 4 else x.float()
        params = torch.cat([self.recurrence, self.bias]).float()
        h, c = recurrence(projected[:, :, :3], highway, params, c0[0].float())
        return h, c[None].to(c0.dtype)
