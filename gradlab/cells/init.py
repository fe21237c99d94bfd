"""Initial weights in the scratch layout: the seed's N(0, 0.01), xavier, orthogonal, torch.nn's uniform;
spectral scaling of the recurrent matrices; the LSTM's forget bias."""

from __future__ import annotations

import math

import torch

from ..names import INITS, lookup
from .families import family

SEED_STD = 0.01  # the seed's np.random.normal(0, 0.01)


def _orthogonal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows or columns (QR of a Gaussian, sign-fixed)."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # makes the draw uniform (Haar)
    return q if rows >= cols else q.T


def _matrix(rows: int, cols: int, init: str, gen: torch.Generator, hidden_size: int) -> torch.Tensor:
    if init == "normal":
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) * SEED_STD
    if init == "xavier":
        bound = math.sqrt(6.0 / (rows + cols))
        return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    if init in ("orthogonal", "critical"):
        return _orthogonal(rows, cols, gen)
    bound = 1.0 / math.sqrt(hidden_size)  # "uniform": torch.nn.RNN/GRU/LSTM's reset_parameters
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) * bound


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
    input_std: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Float64 parameters named as in the seed (W_x*, W_h*, b_*), drawn in a fixed order from `seed`.

    'critical': orthogonal matrices, the recurrent ones scaled so that the mean-field factor per step is 1
    (the edge of chaos, gradlab.theory) for inputs of standard deviation `input_std`, this cell and
    forget bias; an error where no scale reaches it.

    `init_scale` rescales each recurrent matrix W_h* to that spectral norm.
    """
    lookup(INITS, init, "init")
    fam = family(cell)
    if init == "paper":  # the classic cells' source is torch.nn: its default
        init = "uniform"
    if init == "critical":
        if init_scale is not None:
            raise ValueError("init 'critical' chooses the recurrent scale itself: leave init_scale unset (none).")
        if cell == "gru" and not reset_after:
            raise ValueError("init 'critical' is derived for the GRU's reset_after variant, not reset_before.")
        init_scale = critical_scale(cell, input_size, hidden_size, forget_bias, input_std)
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    gru_candidate = cell == "gru" and reset_after
    for gate in fam.gates:
        params[f"W_x{gate}"] = _matrix(input_size, hidden_size, init, gen, hidden_size)  # (I, H)
        w_h = _matrix(hidden_size, hidden_size, init, gen, hidden_size)  # (H, H)
        if init_scale is not None:
            w_h = w_h * (init_scale / spectral_norm(w_h))
        params[f"W_h{gate}"] = w_h
        params[f"b_{gate}"] = torch.zeros(hidden_size, dtype=torch.float64)
        if init == "uniform":  # torch.nn draws b_ih and b_hh, each U(-k, k): the one bias here is their sum
            params[f"b_{gate}"] = _bias(hidden_size, gen) + (0 if gru_candidate and gate == "h" else _bias(hidden_size, gen))
    if fam.forget_gate is not None:
        params[f"b_{fam.forget_gate}"] += forget_bias  # on top of the init's own bias (0 but for 'uniform')
    if gru_candidate:  # the recurrent bias inside r * (h W_hh + b_hh): its own parameter, as in torch.nn.GRU
        params["b_hh"] = _bias(hidden_size, gen) if init == "uniform" else torch.zeros(hidden_size, dtype=torch.float64)
    return params


def critical_scale(cell: str, input_size: int, hidden_size: int, forget_bias: float, input_std: float) -> float:
    """The orthogonal recurrent scale whose mean-field factor per step is 1 (gradlab.theory)."""
    from .. import theory

    scale = theory.edge_init_scale(cell, "orthogonal", forget_bias, input_size, hidden_size, input_std)
    if scale != scale:  # NaN: the factor never reaches 1
        raise ValueError(f"init 'critical': no recurrent scale in (0, 20] puts cell {cell!r} at the edge of chaos for "
                         f"inputs of std {input_std} (forget_bias {forget_bias}).")
    return scale


def _bias(hidden_size: int, gen: torch.Generator) -> torch.Tensor:
    """U(-1/sqrt(H), 1/sqrt(H)): one of torch.nn's biases."""
    return (torch.rand(hidden_size, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(hidden_size)
