"""Initial weights in the scratch layout: the seed's N(0, 0.01), xavier, orthogonal; spectral scaling."""

from __future__ import annotations

import math

import torch

# Gate names per cell, in the scratch (seed) order; "h" / "c" is the candidate.
GATES: dict[str, tuple[str, ...]] = {
    "linear": ("h",),
    "rnn": ("h",),
    "gru": ("z", "r", "h"),
    "lstm": ("i", "f", "o", "c"),
}
INITS = ("normal", "xavier", "orthogonal")
SEED_STD = 0.01  # the seed's np.random.normal(0, 0.01)


def _orthogonal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows or columns (QR of a Gaussian, sign-fixed)."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # makes the draw uniform (Haar)
    return q if rows >= cols else q.T


def _matrix(rows: int, cols: int, init: str, gen: torch.Generator) -> torch.Tensor:
    if init == "normal":
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) * SEED_STD
    if init == "xavier":
        bound = math.sqrt(6.0 / (rows + cols))
        return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    if init == "orthogonal":
        return _orthogonal(rows, cols, gen)
    raise ValueError(f"Unknown init {init!r}. Known: {', '.join(INITS)}.")


def spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value, computed in float64."""
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=2))


def init_params(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    reset_after: bool = True,
    init: str = "normal",
    init_scale: float | None = None,
    forget_bias: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Float64 parameters named as in the seed (W_x*, W_h*, b_*), drawn in a fixed order from `seed`.

    `init_scale` rescales each recurrent matrix W_h* to that spectral norm.
    """
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}. Known: {', '.join(INITS)}.")
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    for gate in GATES[cell]:
        params[f"W_x{gate}"] = _matrix(input_size, hidden_size, init, gen)  # (I, H)
        w_h = _matrix(hidden_size, hidden_size, init, gen)  # (H, H)
        if init_scale is not None:
            w_h = w_h * (init_scale / spectral_norm(w_h))
        params[f"W_h{gate}"] = w_h
        params[f"b_{gate}"] = torch.zeros(hidden_size, dtype=torch.float64)
    if cell == "lstm":
        params["b_f"].fill_(forget_bias)
    if cell == "gru" and reset_after:
        params["b_hh"] = torch.zeros(hidden_size, dtype=torch.float64)  # recurrent bias inside r * (.)
    return params
