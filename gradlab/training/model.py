"""One model for every task: a recurrent cell from gradlab.cells (any cell, any impl) and an output layer.

The input layer is the cell's own input projection: x W_x + b for vectors, and for token ids row x of
W_x, which is what a one-hot input would compute (the book feeds one-hot vectors). No extra matrix."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..cells import Cell, State, create
from ..tasks import Spec

OUTPUT_STD = 0.01  # the seed draws W_hq from N(0, 0.01) too


class SeqModel(nn.Module):
    """x (T, B) ids or (T, B, I) -> outputs (T, B, O), or (S, B, O) at the S steps where `steps` is True.

    The output layer follows the cell's init: under 'uniform' (torch.nn's defaults) it is nn.Linear's,
    U(-1/sqrt(H), 1/sqrt(H)) for weights and bias; otherwise the seed's, N(0, 0.01) and a zero bias."""

    def __init__(self, cell: Cell, output_size: int, seed: int = 0, init: str = "normal", dropout: float = 0.0):
        super().__init__()
        self.cell = cell
        self.dropout = dropout  # on the cell's outputs, in training mode only: the non-recurrent connection (Zaremba et al. 2014)
        gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the cell's draws stay the same
        ref = next(cell.parameters())
        H = cell.hidden_size
        if init == "uniform":
            w = (torch.rand(H, output_size, generator=gen, dtype=torch.float64) * 2 - 1) / H**0.5
            b = (torch.rand(output_size, generator=gen, dtype=torch.float64) * 2 - 1) / H**0.5
        else:
            w = torch.randn(H, output_size, generator=gen, dtype=torch.float64) * OUTPUT_STD
            b = torch.zeros(output_size, dtype=torch.float64)
        self.W_hq = nn.Parameter(w.to(ref))  # (H, O)
        self.b_q = nn.Parameter(b.to(ref))  # (O,)

    def forward(self, x: torch.Tensor, state: State = None, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        if x.is_floating_point() and x.dtype != self.W_hq.dtype:  # a task's float32 vectors into a float64 model
            x = x.to(self.W_hq.dtype)
        out, state = self.cell(x, state)  # (T, B, H)
        if steps is not None:
            out = out[steps]  # (S, B, H): only the scored steps reach the output layer
        if self.dropout and self.training:
            out = F.dropout(out, self.dropout)
        return self.readout(out), state

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: (S, B, H) -> (S, B, O)."""
        logits = readout(self.b_q[None], hidden.reshape(1, -1, hidden.shape[-1]), self.W_hq[None])  # (1, S*B, O)
        return logits.view(*hidden.shape[:-1], -1)


def readout(b_q: torch.Tensor, hidden: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Output layers of E models in one batched matmul: b_q (E, O), hidden (E, N, H), w_q (E, H, O) -> (E, N, O).
    A solo model is E = 1, so that solo and ensemble runs sum alike, bitwise on CPU. A one-column layer (the
    adding task's) is padded to two: bmm of one model takes one column as a matrix-vector product, which
    sums in another order than bmm of many."""
    if w_q.shape[-1] == 1:
        w_q, b_q = F.pad(w_q, (0, 1)), F.pad(b_q, (0, 1))
        return torch.baddbmm(b_q[:, None, :], hidden, w_q)[..., :1]
    return torch.baddbmm(b_q[:, None, :], hidden, w_q)


def build_model(spec: Spec, cell: str, impl: str, hidden_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", dropout: float = 0.0, **cell_options) -> SeqModel:
    """The cell sized for the task (input_size = vocabulary or vector width) and an output layer of its size."""
    rnn = create(cell, impl, spec.input_size, hidden_size, seed=seed, dtype=dtype, device=device, **cell_options)
    return SeqModel(rnn, spec.output_size, seed, cell_options.get("init", "normal"), dropout)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
