"""Batches for training: the token stream cut into rows read a window at a time (truncated
back-propagation through time), and the window lengths, fixed or varied as AWD-LSTM does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from rnnlm.errors import UserError


def stream_batches(tokens: np.ndarray, batch_size: int, bptt: int, start_column: int = 0,
                   window_length: Callable[[int], int] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stateful TBPTT batches: the stream cut into `batch_size` rows, read `bptt` columns at a time,
    or `window_length(column)` columns from each column on where that is given.

    Yields (column, inputs, targets); row r of one batch continues row r of the previous one,
    so the recurrent state can be carried across batches.
    """
    row_length = (len(tokens) - 1) // batch_size
    if row_length < 1:
        raise UserError(f"the training split ({len(tokens)} tokens) is too small for batch size {batch_size}")
    inputs = np.lib.stride_tricks.as_strided(tokens, (batch_size, row_length + 1), (row_length * tokens.itemsize, tokens.itemsize))
    column = start_column
    while column < row_length:
        width = min(window_length(column) if window_length else bptt, row_length - column)
        window = np.asarray(inputs[:, column : column + width + 1], dtype=np.int64)
        yield column, window[:, :-1], window[:, 1:]
        column += width



SHORT_WINDOW_SHARE = 0.05  # variable windows centred on half of bptt



def mean_window_length(bptt: int, variable: bool) -> float:
    """The average window, for planning a run's steps: with variable windows, a little under bptt."""
    return bptt * (1 - SHORT_WINDOW_SHARE / 2) if variable else float(bptt)



def variable_window_length(bptt: int, seed: int, epoch: int) -> Callable[[int], int]:
    """AWD-LSTM's window lengths (Merity et al. 2017): about `bptt`, or about half of it one time
    in twenty, with a standard deviation of 5 tokens, from 5 (or `bptt`, if smaller) to `bptt` + 40,
    so that windows start at every offset over the epochs.

    Each length is a function of the seed, the epoch and the column, so a resumed run reads the
    windows that an uninterrupted one would.
    """
    def length(column: int) -> int:
        rng = np.random.default_rng((seed % 2**64, epoch, column))
        centre = bptt / 2 if rng.random() < SHORT_WINDOW_SHARE else bptt
        return int(np.clip(int(rng.normal(centre, 5)), min(5, bptt), bptt + 40))
    return length
