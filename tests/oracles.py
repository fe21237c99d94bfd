"""Independent oracles: the seed's equations written per gate, exactly as the book reads, sharing no code
with gradlab's cells."""

from __future__ import annotations

import torch


def seed_step(cell, variant, p, x, h, c=None):
    """One step written per gate, exactly as the seed's equations read (an independent oracle)."""
    sig, tanh = torch.sigmoid, torch.tanh
    if cell == "linear":
        return x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"]
    if cell == "rnn":
        return tanh(x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
    if cell == "gru":
        z = sig(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        r = sig(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        if variant == "reset_before":  # the seed's equation: (R ⊙ H) W_hh
            cand = tanh(x @ p["W_xh"] + (r * h) @ p["W_hh"] + p["b_h"])
        else:  # the seed's code: R ⊙ (H W_hh), plus torch's recurrent bias
            cand = tanh(x @ p["W_xh"] + r * (h @ p["W_hh"] + p["b_hh"]) + p["b_h"])
        return z * h + (1 - z) * cand
    i = sig(x @ p["W_xi"] + h @ p["W_hi"] + p["b_i"])
    f = sig(x @ p["W_xf"] + h @ p["W_hf"] + p["b_f"])
    o = sig(x @ p["W_xo"] + h @ p["W_ho"] + p["b_o"])
    c_tilde = tanh(x @ p["W_xc"] + h @ p["W_hc"] + p["b_c"])
    c = f * c + i * c_tilde
    return o * tanh(c), c


def run_seed(cell: str, variant: str | None, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The final h after all of x (T, B, I), from a zero state, one seed step at a time."""
    h = torch.zeros(x.shape[1], params[f"W_h{'c' if cell == 'lstm' else 'h'}"].shape[0], dtype=x.dtype)
    c = torch.zeros_like(h)
    for t in range(x.shape[0]):
        if cell == "lstm":
            h, c = seed_step(cell, variant, params, x[t], h, c)
        else:
            h = seed_step(cell, variant, params, x[t], h)
    return h


def seed_unroll(cell: str, variant: str | None, params: dict, x: torch.Tensor, c_shift: dict | None = None):
    """Every step's h_t and (LSTM) c_t from a zero state by the seed's equations, each kept for its gradient
    (retain_grad): c_t is the very tensor h_t = o_t tanh(c_t) is formed from, so its gradient is the total
    derivative dL/dc_t. c_shift {t: (B, H)} adds to c_t before h_t is formed (finite differences)."""
    sig, tanh = torch.sigmoid, torch.tanh
    p = params
    H = p[f"W_h{'c' if cell == 'lstm' else 'h'}"].shape[0]
    h = torch.zeros(x.shape[1], H, dtype=p[f"W_h{'c' if cell == 'lstm' else 'h'}"].dtype)
    c = torch.zeros_like(h)
    hs, cs = [], []
    for t in range(x.shape[0]):
        if cell == "lstm":  # written out here, not through seed_step: c_t is shifted between its two uses' source and h_t
            i = sig(x[t] @ p["W_xi"] + h @ p["W_hi"] + p["b_i"])
            f = sig(x[t] @ p["W_xf"] + h @ p["W_hf"] + p["b_f"])
            o = sig(x[t] @ p["W_xo"] + h @ p["W_ho"] + p["b_o"])
            c = f * c + i * tanh(x[t] @ p["W_xc"] + h @ p["W_hc"] + p["b_c"])
            if c_shift and t in c_shift:
                c = c + c_shift[t]
            if c.requires_grad:
                c.retain_grad()
            h = o * tanh(c)
            cs.append(c)
        else:
            h = seed_step(cell, variant, p, x[t], h)
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
    return hs, cs
