"""SRU++ (Lei, 2021, "When Attention Meets Fast Recurrence"): an SRU whose input projection
goes through single-head attention.

The layer's input is projected to a small query (a quarter of the hidden size); keys and
values are linear maps of the queries; each position attends to itself and the queries of
the `attention_memory` - 1 positions before it, and the output projection of query plus
attention (scaled by a learnt α) gives the SRU its x̃, f̃, r̃ blocks. The queries of the last
`attention_memory` positions are part of the recurrent state, with a mask of which of them
exist yet, so a window sees the one before it: a text fed in pieces gets the same outputs as
in one pass, and stateful training, scoring, sampling and beam search need nothing new.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm.cells.layer import State
from rnnlm.cells.sru import SRULayer


class SRUPlusPlusLayer(SRULayer):
    state_arity = 3  # c, the remembered queries, which of them are real

    def __init__(self, input_size: int, hidden_size: int, config: Any) -> None:
        super().__init__(input_size, hidden_size, config)
        del self.weight  # the projection goes through attention instead
        self.memory = config.attention_memory
        size = max(1, hidden_size // 4)
        self.query = nn.Linear(input_size, size, bias=False)
        self.key = nn.Linear(size, size, bias=False)
        self.value = nn.Linear(size, size, bias=False)
        self.output = nn.Linear(size, self.blocks * hidden_size, bias=False)
        self.alpha = nn.Parameter(torch.ones(1))

    @classmethod
    def saved_floats(cls, config: Any, window: int) -> int:
        """An SRU's, and three floats (score, masked score, weight) per position each token attends over."""
        return super().saved_floats(config, window) + 3 * (config.attention_memory + window)

    def initial_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> State:
        c = torch.zeros(1, batch_size, self.hidden_size, dtype=dtype, device=device)
        queries = torch.zeros(1, batch_size, self.memory, self.query.out_features, dtype=dtype, device=device)
        return c, queries, torch.zeros(1, batch_size, self.memory, dtype=dtype, device=device)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        c0, remembered, present = state
        query = self.query(x)
        queries = torch.cat([remembered[0].to(query.dtype), query], 1)  # (batch, memory + time, size)
        present_all = torch.cat([present[0], present.new_ones(x.shape[0], x.shape[1])], 1)
        scores = query @ self.key(queries).transpose(1, 2) / math.sqrt(query.shape[-1])
        keys = torch.arange(queries.shape[1], device=x.device)
        positions = torch.arange(x.shape[1], device=x.device)[:, None] + self.memory
        visible = (keys <= positions) & (keys > positions - self.memory)  # itself and the memory - 1 before it
        visible = visible[None] & (present_all[:, None, :] > 0)
        weights = torch.softmax(scores.float().masked_fill(~visible, -math.inf), -1).to(scores.dtype)
        attended = weights @ self.value(queries)
        h, c = self.recur(self.output(query + self.alpha * attended), x, c0)
        return h, (c, queries[:, -self.memory:][None].to(remembered.dtype), present_all[:, -self.memory:][None])
