"""What each cell is made of: its gates, the parts of its state, its implementations, its torch.nn twin. The only
place that knows; everything else asks `family(cell)`."""

from __future__ import annotations

from dataclasses import dataclass

from ..names import CELLS, GRU_VARIANTS, LRU_VARIANTS, lookup


@dataclass(frozen=True)
class Family:
    gates: tuple[str, ...]  # scratch (seed) order; "h" / "c" names the candidate
    state: tuple[str, ...] = ("h",)  # the tensors handed from one step to the next, each (B, H)
    torch_module: str | None = None  # torch.nn's twin; None: there is none
    torch_order: tuple[str, ...] = ()  # the gates in torch.nn's chunk order
    variants: tuple[str, ...] = ()  # named variants; the first is the default
    forget_gate: str | None = None  # the gate whose bias `forget_bias` sets
    forget_sign: int = 1  # +1: forget_bias is added to that gate's bias; -1: subtracted (minGRU's z, whose complement 1 - z keeps)
    impls: tuple[str, ...] = ("scratch", "cudnn")  # the implementations that compute it (the same function in each)
    diagonal: bool = False  # h_t = a_t * h_{t-1} + b_t with a_t free of h: each unit its own recurrence, a parallel scan computes it
    memory: str = "init_scale"  # the setting that sets how long the cell remembers at initialisation (the curse-of-memory axis)
    recurrent: tuple[str, ...] = ()  # the parameters that set the recurrence a_t (the curse of memory's theta); default: every W_h*

    @property
    def gate_count(self) -> int:
        return len(self.gates)

    @property
    def state_label(self) -> str:
        """The full state's name in tables: 'h', or 'h,c' for the LSTM."""
        return ",".join(self.state)

    @property
    def recurrent_parameters(self) -> tuple[str, ...]:
        """The parameters whose change changes the recurrence itself: the recurrent matrices of the classic cells, the
        eigenvalues' parameters of the lru, the retention gate's weights and bias of the min cells."""
        return self.recurrent or tuple(f"W_h{g}" for g in self.gates)


FAMILIES: dict[str, Family] = {
    "linear": Family(gates=("h",), impls=("scratch",)),
    "rnn": Family(gates=("h",), torch_module="RNN", torch_order=("h",)),
    "gru": Family(gates=("z", "r", "h"), torch_module="GRU", torch_order=("r", "z", "h"), variants=tuple(GRU_VARIANTS)),
    "lstm": Family(gates=("i", "f", "o", "c"), state=("h", "c"), torch_module="LSTM", torch_order=("i", "f", "c", "o"), forget_gate="f",
                   memory="forget_bias"),
    # The modern cells (gradlab.cells.modern): no recurrent matrix, a written-out loop and a parallel scan.
    "lru": Family(gates=("re", "im"), impls=("scratch", "scan"), variants=tuple(LRU_VARIANTS), diagonal=True, recurrent=("nu_log", "theta_log")),
    "mingru": Family(gates=("z", "h"), impls=("scratch", "scan"), forget_gate="z", forget_sign=-1, diagonal=True, memory="forget_bias",
                     recurrent=("W_xz", "b_z")),
    "minlstm": Family(gates=("f", "i", "h"), impls=("scratch", "scan"), forget_gate="f", diagonal=True, memory="forget_bias",
                      recurrent=("W_xf", "b_f", "W_xi", "b_i")),
}


def family(cell: str) -> Family:
    lookup(CELLS, cell, "cell")
    return FAMILIES[cell]
