"""Recurrent cells written out from the equations: one Python loop over time, per-gate parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .bptt import GRUSequence, LSTMSequence, RNNSequence
from .families import family

State = Any  # h (B, H), or (h, c) for the LSTM


class ScratchCell(nn.Module):
    """linear, rnn (tanh), gru (reset_after | reset_before) and lstm, in the seed's notation.

    Row-vector convention as in the seed: h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h).
    """

    impl = "scratch"

    def __init__(self, cell: str, params: dict[str, torch.Tensor], variant: str | None = None):
        super().__init__()
        self.cell = cell
        self.variant = variant
        self.family = family(cell)
        self.gates = self.family.gates
        self.input_size, self.hidden_size = params[f"W_x{self.gates[0]}"].shape
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value.clone()))
        self.last_backend = "python-loop"
        self.weight_drop = 0.0  # DropConnect on the recurrent weights in training mode (Merity et al. 2018's weight drop); 0: off

    # --- the step protocol shared with the fused cell (probes drive it one step at a time) ---

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input projections x W_x + b for all steps in one matmul (a row lookup for token ids): (T, B, G*H)."""
        w_x = torch.cat([getattr(self, f"W_x{g}") for g in self.gates], dim=1)  # (I, G*H)
        b = torch.cat([getattr(self, f"b_{g}") for g in self.gates])  # (G*H,)
        if x.dtype == torch.long:  # (T, B) token ids: one_hot(x) @ w_x is row x of w_x
            # embedding, not w_x[x]: indexing's backward accumulates rows in a thread-dependent order
            # (two runs at 2 threads part at 1e-6); embedding's is deterministic at any thread count
            unknown = x == self.input_size  # one past the vocabulary: the all-zero one-hot input
            if bool(unknown.any()):
                return nn.functional.embedding(x.masked_fill(unknown, 0), w_x).masked_fill(unknown[..., None], 0) + b
            return nn.functional.embedding(x, w_x) + b
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), w_x).view(*x.shape[:-1], -1)  # (T, B, I)

    def recurrent(self) -> tuple[torch.Tensor, ...]:
        """The recurrent weights as the step multiplies them (in training mode with weight_drop, one DropConnect mask
        for the whole sequence)."""
        if self.cell == "gru" and self.variant == "reset_before":  # W_hh multiplies r * h: its own product
            return torch.cat([self.W_hz, self.W_hr], dim=1), self.W_hh  # (H, 2H), (H, H)
        w_h = torch.cat([getattr(self, f"W_h{g}") for g in self.gates], dim=1)  # (H, G*H)
        if self.weight_drop and self.training:
            w_h = nn.functional.dropout(w_h, self.weight_drop)
        if self.cell == "gru":  # reset_after: b_hh sits inside r * (h W_hh + b_hh)
            return w_h, torch.cat([torch.zeros_like(self.b_hh).repeat(2), self.b_hh])  # (H, 3H), (3H,)
        return (w_h,)

    def prepare(self, x: torch.Tensor) -> tuple[tuple, tuple[torch.Tensor, ...]]:
        """Per-step inputs and the recurrent weights, for driving the cell one step at a time.

        unbind, not indexing: its backward stacks the T step gradients once, where indexing step by
        step would allocate a (T, B, G*H) gradient per step.
        """
        return self.per_step(self.project(x)), self.recurrent()

    def per_step(self, projected: torch.Tensor) -> tuple:
        """Projected inputs (T, B, G*H) as the step takes them: T tensors, or T pairs (x_zr, x_h) for the GRU,
        whose candidate's input part stays apart (r acts between the two)."""
        if self.cell == "gru":
            x_zr, x_h = projected.split([2 * self.hidden_size, self.hidden_size], dim=2)
            return tuple(zip(x_zr.unbind(0), x_h.unbind(0)))
        return projected.unbind(0)

    def step(self, inp, state: State, weights: tuple[torch.Tensor, ...]) -> State:
        """One time step from this step's projected input (B, G*H) (a pair (x_zr, x_h) for the GRU)."""
        if self.cell == "lstm":
            h, c = state
            gates = inp + h @ weights[0]  # (B, 4H): i, f, o, c
            ifo = torch.sigmoid(gates[:, : 3 * self.hidden_size])
            i, f, o = ifo.chunk(3, dim=1)
            c = torch.addcmul(f * c, i, torch.tanh(gates[:, 3 * self.hidden_size :]))  # f * c + i * tanh(g)
            return o * torch.tanh(c), c
        h = state
        if self.cell == "linear":
            return inp + h @ weights[0]
        if self.cell == "rnn":
            return torch.tanh(inp + h @ weights[0])
        x_zr, x_h = inp
        if self.variant == "reset_before":  # Cho et al. 2014: the reset gate acts on h before W_hh
            w_zr, w_hh = weights
            z, r = torch.sigmoid(x_zr + h @ w_zr).chunk(2, dim=1)  # (B, H) each
            cand = torch.tanh(x_h + (r * h) @ w_hh)
        else:  # torch.nn.GRU / cuDNN: the reset gate acts on (h W_hh + b_hh)
            w_h, bias = weights
            h_zr, h_h = torch.addmm(bias, h, w_h).split([2 * self.hidden_size, self.hidden_size], dim=1)
            z, r = torch.sigmoid(x_zr + h_zr).chunk(2, dim=1)  # (B, H) each
            cand = torch.tanh(torch.addcmul(x_h, r, h_h))  # x_h + r * h_h
        return torch.lerp(cand, h, z)  # z * h + (1 - z) * cand, in one op

    def init_state(self, batch_size: int) -> State:
        ref = getattr(self, f"W_h{self.gates[-1]}")
        parts = tuple(ref.new_zeros(batch_size, self.hidden_size) for _ in self.family.state)
        return parts if len(parts) > 1 else parts[0]

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """x (T, B, I) floats or (T, B) token ids -> outputs (T, B, H), final state."""
        if state is None:
            state = self.init_state(x.shape[1])
        if self.cell == "gru" and self.variant == "reset_after":  # BPTT written out (bptt.py)
            outputs = GRUSequence.apply(self.project(x), state, *self.recurrent())
            return outputs, outputs[-1]
        if self.cell == "rnn":
            outputs = RNNSequence.apply(self.project(x), state, *self.recurrent())
            return outputs, outputs[-1]
        if self.cell == "lstm":
            outputs, c = LSTMSequence.apply(self.project(x), *state, *self.recurrent())
            return outputs, (outputs[-1], c)
        inputs, weights = self.prepare(x)
        outputs = []
        for inp in inputs:
            state = self.step(inp, state, weights)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs), state
