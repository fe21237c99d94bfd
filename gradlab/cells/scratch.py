"""Recurrent cells written out from the equations: one Python loop over time, per-gate parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .init import GATES

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
        self.gates = GATES[cell]
        self.input_size, self.hidden_size = params[f"W_x{self.gates[0]}"].shape
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value.clone()))
        self.last_backend = "python-loop"

    # --- the step protocol shared with the fused cell (probes drive it one step at a time) ---

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input projections for all steps in one matmul (a row lookup for token ids)."""
        w_x = torch.cat([getattr(self, f"W_x{g}") for g in self.gates], dim=1)  # (I, G*H)
        b = torch.cat([getattr(self, f"b_{g}") for g in self.gates])  # (G*H,)
        if x.dtype == torch.long:  # (T, B) token ids: one_hot(x) @ w_x is row x of w_x
            inputs = w_x[x] + b
        else:  # (T, B, I)
            inputs = torch.addmm(b, x.reshape(-1, x.shape[-1]), w_x).view(*x.shape[:-1], -1)
        recurrent = [getattr(self, f"W_h{g}") for g in self.gates]
        if self.cell == "gru" and self.variant == "reset_before":
            w_h = torch.cat(recurrent[:2], dim=1)  # (H, 2H): z, r; W_hh multiplies r * h
        else:
            w_h = torch.cat(recurrent, dim=1)  # (H, G*H)
        return inputs, w_h  # (T, B, G*H), (H, *)

    def step(self, inp: torch.Tensor, state: State, w_h: torch.Tensor) -> State:
        """One time step from the projected input inp (B, G*H)."""
        if self.cell == "lstm":
            h, c = state
            i, f, o, g = (inp + h @ w_h).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        h = state
        if self.cell == "linear":
            return inp + h @ w_h
        if self.cell == "rnn":
            return torch.tanh(inp + h @ w_h)
        x_z, x_r, x_h = inp.chunk(3, dim=1)
        hp = h @ w_h  # (B, 3H) reset_after, (B, 2H) reset_before
        z = torch.sigmoid(x_z + hp[:, : self.hidden_size])
        r = torch.sigmoid(x_r + hp[:, self.hidden_size : 2 * self.hidden_size])
        if self.variant == "reset_before":  # Cho et al. 2014: the reset gate acts on h before W_hh
            cand = torch.tanh(x_h + (r * h) @ self.W_hh)
        else:  # torch.nn.GRU / cuDNN: the reset gate acts on (h W_hh + b_hh)
            cand = torch.tanh(x_h + r * (hp[:, 2 * self.hidden_size :] + self.b_hh))
        return z * h + (1 - z) * cand

    def init_state(self, batch_size: int) -> State:
        ref = self.W_hh if hasattr(self, "W_hh") else self.W_hc
        h = ref.new_zeros(batch_size, self.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """x (T, B, I) floats or (T, B) token ids -> outputs (T, B, H), final state."""
        inputs, w_h = self.prepare(x)
        if state is None:
            state = self.init_state(x.shape[1])
        outputs = []
        for inp in inputs:
            state = self.step(inp, state, w_h)
            outputs.append(state[0] if self.cell == "lstm" else state)
        return torch.stack(outputs), state
