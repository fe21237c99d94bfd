"""One model for every task: a recurrent cell from gradlab.cells (any cell, any impl) and an output layer.

The input layer is the cell's own input projection: x W_x + b for vectors, and for token ids row x of
W_x, which is what a one-hot input would compute (the book feeds one-hot vectors). No extra matrix."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..cells import Cell, State, create
from ..tasks import Spec

OUTPUT_STD = 0.01  # the seed draws W_hq from N(0, 0.01) too


@dataclass(frozen=True)
class Regularisation:
    """What a small language model needs beyond the book's (every part 0: off, the book's runs as they were), each
    only in training mode: locked (variational) dropout, one mask per sequence for all its steps (Gal and
    Ghahramani 2016), on the embedded inputs and on the cell's outputs; dropping whole characters' embeddings
    (Merity et al. 2018's embedding dropout); and DropConnect on the recurrent weights (their weight drop)."""

    embedding: float = 0.0  # locked dropout on the embedded inputs (T, B, E): a mask (1, B, E)
    chars: float = 0.0  # a character's whole embedding row dropped, for the batch
    output: float = 0.0  # locked dropout on the cell's outputs (T, B, H): a mask (1, B, H)
    weights: float = 0.0  # DropConnect on W_hh (the scratch cells), one mask per forward pass


def locked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x (T, B, D) with one dropout mask (1, B, D) shared by every step, scaled by 1 / (1 - p)."""
    mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - p) / (1 - p)
    return x * mask


class SeqModel(nn.Module):
    """x (T, B) ids or (T, B, I) -> outputs (T, B, O), or (S, B, O) at the S steps where `steps` is True.

    The output layer follows the cell's init: under 'uniform' (torch.nn's defaults) it is nn.Linear's,
    U(-1/sqrt(H), 1/sqrt(H)) for weights and bias; otherwise the seed's, N(0, 0.01) and a zero bias.
    embedding: a learned embedding of token ids (V + 1 rows, the unknown id's all zeros) before the cell, instead
    of the cell's own projection of one-hot inputs; tie: the output layer's weights are the embedding's (Press and
    Wolf 2017; Inan et al. 2017: the embedding's width is the hidden size)."""

    def __init__(self, cell: Cell, output_size: int, seed: int = 0, init: str = "normal", dropout: float = 0.0,
                 embedding: nn.Embedding | None = None, tie: bool = False, regularisation: Regularisation = Regularisation()):
        super().__init__()
        self.cell = cell
        self.dropout = dropout  # on the cell's outputs, in training mode only: the non-recurrent connection (Zaremba et al. 2014)
        self.embed, self.tie, self.reg = embedding, tie, regularisation
        gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the cell's draws stay the same
        ref = next(cell.parameters())
        H = cell.hidden_size
        if init == "uniform":
            w = (torch.rand(H, output_size, generator=gen, dtype=torch.float64) * 2 - 1) / H**0.5
            b = (torch.rand(output_size, generator=gen, dtype=torch.float64) * 2 - 1) / H**0.5
        else:
            w = torch.randn(H, output_size, generator=gen, dtype=torch.float64) * OUTPUT_STD
            b = torch.zeros(output_size, dtype=torch.float64)
        if tie:
            self.W_hq = None  # the embedding's first O rows, transposed
        else:
            self.W_hq = nn.Parameter(w.to(ref))  # (H, O)
        self.b_q = nn.Parameter(b.to(ref))  # (O,)

    @property
    def output_weight(self) -> torch.Tensor:
        """(H, O): the output layer's weights (the embedding's rows when tied)."""
        return self.embed.weight[: self.b_q.shape[0]].T if self.tie else self.W_hq

    def cell_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the cell reads for inputs x, without dropout: the embedded ids, or x itself (float vectors cast to the
        model's dtype). For instruments that drive the cell themselves (probes, the context measure)."""
        if x.is_floating_point():
            return x.to(self.b_q.dtype) if x.dtype != self.b_q.dtype else x
        return F.embedding(x, self.embed.weight, padding_idx=self.embed.padding_idx) if self.embed is not None else x

    def forward(self, x: torch.Tensor, state: State = None, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        reg, training = self.reg, self.training
        if x.is_floating_point() and x.dtype != self.b_q.dtype:  # a task's float32 vectors into a float64 model
            x = x.to(self.b_q.dtype)
        if self.embed is not None:
            weight = self.embed.weight
            if training and reg.chars:  # drop whole characters: one mask per row, for the whole batch
                weight = weight * (weight.new_empty(weight.shape[0], 1).bernoulli_(1 - reg.chars) / (1 - reg.chars))
            x = F.embedding(x, weight, padding_idx=self.embed.padding_idx)  # (T, B, E)
            if training and reg.embedding:
                x = locked_dropout(x, reg.embedding)
        out, state = self.cell(x, state)  # (T, B, H)
        if training and reg.output:
            out = locked_dropout(out, reg.output)
        if steps is not None:
            out = out[steps]  # (S, B, H): only the scored steps reach the output layer
        if self.dropout and training:
            out = F.dropout(out, self.dropout)
        return self.readout(out), state

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: (S, B, H) -> (S, B, O)."""
        logits = readout(self.b_q[None], hidden.reshape(1, -1, hidden.shape[-1]), self.output_weight[None])  # (1, S*B, O)
        return logits.view(*hidden.shape[:-1], -1)


def readout(b_q: torch.Tensor, hidden: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Output layers of E models in one batched matmul: b_q (E, O), hidden (E, N, H), w_q (E, H, O) -> (E, N, O).
    A solo model is E = 1, so that solo and ensemble runs sum alike, bitwise on CPU at one thread. A one-column layer (the
    adding task's) is padded to two: bmm of one model takes one column as a matrix-vector product, which
    sums in another order than bmm of many."""
    if w_q.shape[-1] == 1:
        w_q, b_q = F.pad(w_q, (0, 1)), F.pad(b_q, (0, 1))
        return torch.baddbmm(b_q[:, None, :], hidden, w_q)[..., :1]
    return torch.baddbmm(b_q[:, None, :], hidden, w_q)


def build_model(spec: Spec, cell: str, impl: str, hidden_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", dropout: float = 0.0, embedding: int = 0, tie: bool = False,
                regularisation: Regularisation = Regularisation(), **cell_options) -> SeqModel:
    """The cell sized for the task (input_size = vocabulary or vector width, or the embedding's width) and an
    output layer of its size; an embedding of token ids drawn from U(-0.1, 0.1) (Merity et al. 2018's), its own
    random stream."""
    embed = None
    if embedding:
        gen = torch.Generator().manual_seed(seed + 2)
        embed = nn.Embedding(spec.input_size + 1, embedding, padding_idx=spec.input_size)  # + the unknown id: all zeros
        with torch.no_grad():
            embed.weight.copy_((torch.rand(spec.input_size + 1, embedding, generator=gen, dtype=torch.float64) * 0.2 - 0.1))
            embed.weight[spec.input_size].zero_()
        embed = embed.to(dtype=dtype, device=device)
    rnn = create(cell, impl, embedding or spec.input_size, hidden_size, seed=seed, dtype=dtype, device=device, **cell_options)
    if regularisation.weights:
        rnn.weight_drop = regularisation.weights
    return SeqModel(rnn, spec.output_size, seed, cell_options.get("init", "normal"), dropout, embed, tie, regularisation)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
