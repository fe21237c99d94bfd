"""What each cell is made of: its gates, the parts of its state, its torch.nn twin. The only place that
knows; everything else asks `family(cell)`."""

from __future__ import annotations

from dataclasses import dataclass

from ..names import CELLS, GRU_VARIANTS, lookup


@dataclass(frozen=True)
class Family:
    gates: tuple[str, ...]  # scratch (seed) order; "h" / "c" names the candidate
    state: tuple[str, ...] = ("h",)  # the tensors handed from one step to the next, each (B, H)
    torch_module: str | None = None  # torch.nn's twin; None: there is none
    torch_order: tuple[str, ...] = ()  # the gates in torch.nn's chunk order
    variants: tuple[str, ...] = ()  # named variants; the first is the default
    forget_gate: str | None = None  # the gate whose bias `forget_bias` sets

    @property
    def gate_count(self) -> int:
        return len(self.gates)

    @property
    def state_label(self) -> str:
        """The full state's name in tables: 'h', or 'h,c' for the LSTM."""
        return ",".join(self.state)


FAMILIES: dict[str, Family] = {
    "linear": Family(gates=("h",)),
    "rnn": Family(gates=("h",), torch_module="RNN", torch_order=("h",)),
    "gru": Family(gates=("z", "r", "h"), torch_module="GRU", torch_order=("r", "z", "h"), variants=tuple(GRU_VARIANTS)),
    "lstm": Family(gates=("i", "f", "o", "c"), state=("h", "c"), torch_module="LSTM", torch_order=("i", "f", "c", "o"), forget_gate="f"),
}


def family(cell: str) -> Family:
    lookup(CELLS, cell, "cell")
    return FAMILIES[cell]
