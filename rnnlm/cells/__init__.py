"""The recurrent cells, one registry entry each: the one place that names a cell and says what it needs.

Kept free of torch so that the command line can list the cells and their help without importing
it; `layer_class` imports a cell's module only when a model is built.

Every cell's layer follows one interface (see rnnlm/cells/layer.py): `forward(x, state) -> (y,
state)` with `x` of shape (batch, time, input) and `state` a tuple of `state_arity` tensors, each
with a leading layer axis of length 1 and the batch on axis 1. The model stacks the layers' states
along that first axis, so selecting batch rows, detaching and saving work alike for every cell.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    name: str
    help: str
    module: str  # under rnnlm.cells
    layer: str  # the layer class in that module
    state_arity: int  # tensors in one layer's recurrent state
    weight_dropped: tuple[str, ...]  # the recurrent weights --weight-dropout drops (DropConnect)
    options: tuple[str, ...] = ()  # ModelConfig settings that only this cell reads

    def layer_class(self) -> Any:
        return getattr(importlib.import_module(f"rnnlm.cells.{self.module}"), self.layer)


CELLS: dict[str, Cell] = {cell.name: cell for cell in (
    Cell("lstm", "LSTM (torch's fused nn.LSTM)", "torch_rnn", "LSTMLayer", 2, ("weight_hh_l0",)),
    Cell("gru", "GRU (torch's nn.GRU)", "torch_rnn", "GRULayer", 1, ("weight_hh_l0",)),
    Cell("rnn_tanh", "Elman RNN with tanh (torch's nn.RNN)", "torch_rnn", "RNNLayer", 1, ("weight_hh_l0",)),
    Cell("rnn_relu", "Elman RNN with ReLU (torch's nn.RNN)", "torch_rnn", "RNNLayer", 1, ("weight_hh_l0",)),
    Cell("sru", "Simple Recurrent Unit (Lei et al., 2018): one matrix product per window, an elementwise "
         "recurrence in a fused kernel", "sru", "SRULayer", 1, ("recurrence",)),
    Cell("mogrifier", "Mogrifier LSTM (Melis et al., 2020): input and hidden state gate each other for "
         "--mogrifier-rounds rounds before each LSTM step", "mogrifier", "MogrifierLayer", 2, ("weight_hh_l0",),
         ("mogrifier_rounds",)),
    Cell("sru++", "SRU++ (Lei, 2021): an SRU whose input projection attends over the window and the "
         "--attention-memory positions before it", "sru_pp", "SRUPlusPlusLayer", 3, ("recurrence",),
         ("attention_memory",)),
)}

CELL_NAMES = tuple(CELLS)
CELL_OPTIONS = tuple(name for cell in CELLS.values() for name in cell.options)  # ModelConfig settings of some cell only


def cell_named(name: str) -> Cell:
    """The registered cell of this name; a model saved with a cell this version lacks is refused here."""
    try:
        return CELLS[name]
    except KeyError:
        from rnnlm import __version__
        raise ValueError(f"unknown cell {name!r} (rnnlm {__version__} has {', '.join(CELL_NAMES)})") from None


def cells_help() -> str:
    """The --cell help: every cell with what it is."""
    return "Recurrent cell: " + "; ".join(f"{cell.name}: {cell.help}" for cell in CELLS.values()) + "."


def check_cell_options(cell: str, settings: dict[str, object]) -> None:
    """Refuse a cell's own setting (given, not None) for a cell that does not read it."""
    from rnnlm.errors import InvalidOption

    for name in CELL_OPTIONS:
        if settings.get(name) is not None and name not in cell_named(cell).options:
            owners = " and ".join(other.name for other in CELLS.values() if name in other.options)
            raise InvalidOption(name, f"applies to the {owners} cell only, not to {cell}")
