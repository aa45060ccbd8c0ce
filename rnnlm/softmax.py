"""The two-level ("clustered") softmax of Grave et al. (2017), with shapes that repeat.

The `head` most frequent tokens and one cluster token share a softmax; the rarer tokens get
theirs only when needed. Training computes the rare part only for the positions whose target
is rare, which makes the decoder several times cheaper. The probabilities are exact and sum
to one; with tying, every token keeps its embedding row.

How many targets are rare changes from batch to batch. Computed at its exact size, the rare
part allocates temporaries of a new shape at every step (tens of megabytes each for a large
vocabulary), and glibc's heap, whose mmap threshold rises to the largest block freed, keeps
the holes they leave between them: resident memory grew to three times the model's needs
(benchmarks/results/train_memory.md). So the rare rows are padded up to a few fixed bucket
sizes, and the decoder weight is cast to the autocast dtype once per step, not once per
slice. The layers themselves stay attributes of the model, under their saved names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BUCKETS_PER_DOUBLING = 4  # padding costs at most a quarter more rows than needed
SMALLEST_BUCKET = 16


def bucket_rows(rows: int) -> int:
    """The padded row count for `rows`: a multiple of a block that is an eighth to a quarter of
    it, so that only four sizes occur between one power of two and the next."""
    block = max(SMALLEST_BUCKET, 1 << max(0, rows.bit_length() - 3))
    return -(-rows // block) * block


class ClusteredSoftmax:
    """Log-probabilities from a decoder whose first `head` rows form the first level.

    It holds no parameters of its own: `decoder` (possibly tied to the embedding), `cluster`
    (the rare tokens' logit in the head) and `tail_projection` belong to the model, so that
    their state-dict names and their order in the optimizer do not change.
    """

    def __init__(self, head: int, decoder: nn.Linear, cluster: nn.Linear, tail_projection: nn.Linear) -> None:
        self.head = head
        self.decoder = decoder
        self.cluster = cluster
        self.tail_projection = tail_projection

    def _weight(self, features: Tensor) -> Tensor:
        """The decoder weight in the features' dtype: one cast under autocast, shared by both levels."""
        return self.decoder.weight.to(features.dtype)

    def _head_log_probs(self, features: Tensor, weight: Tensor) -> Tensor:
        """log P(token) for the head tokens, then log P(rare token) in the last column."""
        head_logits = F.linear(features, weight[:self.head], self.decoder.bias[:self.head])
        logits = torch.cat([head_logits, self.cluster(features)], 1)
        return torch.log_softmax(logits.float(), -1)

    def _tail_log_probs(self, features: Tensor, weight: Tensor) -> Tensor:
        """log P(token | rare) for every rare token."""
        logits = F.linear(self.tail_projection(features), weight[self.head:], self.decoder.bias[self.head:])
        return torch.log_softmax(logits.float(), -1)

    def log_probs(self, features: Tensor) -> Tensor:
        """The whole distribution: log P(token) for every token, shape (rows, vocab)."""
        weight = self._weight(features)
        head = self._head_log_probs(features, weight)
        return torch.cat([head[:, :-1], head[:, -1:] + self._tail_log_probs(features, weight)], 1)

    def target_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        """log P(target) for each row, in fp32, computing the rare level only for rare targets
        (their rows padded to a bucket size; the padding adds zero)."""
        weight = self._weight(features)
        head = self._head_log_probs(features, weight)
        rare = targets >= self.head
        log_probs = head.gather(1, targets.clamp(max=self.head)[:, None])[:, 0]  # a rare target gets its cluster's here
        rare_rows = rare.nonzero()[:, 0]
        if len(rare_rows) == 0:
            return log_probs
        size = bucket_rows(len(rare_rows))
        rows = torch.zeros(size, dtype=rare_rows.dtype, device=rare_rows.device)
        rows[:len(rare_rows)] = rare_rows
        keep = torch.arange(size, device=rows.device) < len(rare_rows)
        tail_targets = (targets[rows] - self.head).clamp(min=0)
        tail = self._tail_log_probs(features[rows], weight).gather(1, tail_targets[:, None])[:, 0]
        return log_probs.index_add(0, rows, torch.where(keep, tail, torch.zeros_like(tail)))
