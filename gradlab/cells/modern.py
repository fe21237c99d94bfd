"""The recurrences of the 2020s: the LRU (Orvieto et al. 2023), minGRU and minLSTM (Feng et al. 2024). Each is
h_t = a_t * h_{t-1} + b_t with a_t free of h (element-wise: each unit its own recurrence), in two implementations that
compute the same function: `scratch`, the equations written out as a loop over time, and `scan`, every step at once
by a parallel scan (gradlab.cells.scan). The step protocol is the classic cells' (project, per_step, recurrent, step,
init_state), so the probes drive both alike; `emit(state, inp)` is the output a step shows (the state itself but
for the lru, whose output is a readout of it).

The lru's state of hidden_size H real numbers is N = H / 2 complex modes, real parts first: [Re h, Im h].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .families import family
from .init import SEED_STD, _orthogonal
from .scan import g, log_g, log_space_scan, power_scan, softplus

LRU_RING = (0.9, 0.999)  # Orvieto et al. 2023's ring for long-range tasks: |lambda| uniform on its area between r_min and r_max
LRU_MAX_PHASE = math.pi / 10  # ... and phases uniform in [0, pi/10] (their long-range setting; their code's default is 2 pi)


def check_options(cell: str, hidden_size: int, init: str, init_scale: float | None) -> None:
    """What a modern cell refuses, said before any draw."""
    fam = family(cell)
    if init == "critical":
        raise ValueError(f"init 'critical' scales a recurrent matrix to the mean-field edge of chaos; cell {cell!r} has none "
                         f"(its memory is set by {'init_scale, its eigenvalue radius' if cell == 'lru' else fam.memory}). Use init paper, "
                         "uniform, normal, xavier or orthogonal.")
    if cell == "lru":  # a state of complex modes, an eigenvalue radius
        if hidden_size % 2:
            raise ValueError(f"the lru's hidden_size is its state's real numbers, H / 2 complex modes (real and imaginary "
                             f"parts): it must be even, got {hidden_size}.")
        if init_scale is not None and not 0 < init_scale < 1:
            raise ValueError(f"init_scale is the lru's eigenvalue radius |lambda| (every mode's): it must be in (0, 1), since "
                             f"|lambda| = exp(-exp(nu)) < 1 by construction; got {init_scale}. none: the ring {LRU_RING}.")
    elif init_scale is not None:
        raise ValueError(f"cell {cell!r} has no recurrent matrix for init_scale to scale (its gates read the input only): leave "
                         f"init_scale unset (none); forget_bias sets its memory.")


def _draw(rows: int, cols: int, init: str, gen: torch.Generator) -> torch.Tensor:
    """One (rows, cols) input or output matrix: the seed's N(0, 0.01), xavier, orthogonal, or nn.Linear's
    U(-1/sqrt(rows), 1/sqrt(rows)) (uniform, and the min cells' paper)."""
    if init == "normal":
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) * SEED_STD
    if init == "xavier":
        return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) * math.sqrt(6.0 / (rows + cols))
    if init == "orthogonal":
        return _orthogonal(rows, cols, gen)
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(rows)


def init_params(cell: str, input_size: int, hidden_size: int, *, init: str = "normal", init_scale: float | None = None,
                forget_bias: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float64 parameters drawn in a fixed order from `seed`.

    lru: the eigenvalues first, |lambda| uniform on the area of the ring LRU_RING (or all at radius init_scale) and
    phases uniform in [0, LRU_MAX_PHASE], stored as nu_log = log(-log |lambda|) and theta_log = log(phase); then
    B (I, N), C (N, H) complex, as real and imaginary parts, and D (I, H). Under init 'paper' as Orvieto et al.
    (B ~ N(0, 1/(2I)) and C ~ N(0, 1/N) per part; their D is a vector for I = H, here a matrix N(0, 1/I), the same
    output variance); under any other init each part drawn by it and scaled by 1/sqrt(2) (each complex entry has
    the init's variance). mingru, minlstm: W_x* (I, H) per gate, biases 0 but under uniform and paper (nn.Linear's
    U(-1/sqrt(I), 1/sqrt(I))); forget_bias added to the forget gate's bias (subtracted from minGRU's z: 1 - z keeps).
    """
    check_options(cell, hidden_size, init, init_scale)
    fam = family(cell)
    gen = torch.Generator().manual_seed(seed)
    I, H = input_size, hidden_size
    if cell == "lru":
        N = H // 2
        u1 = torch.rand(N, generator=gen, dtype=torch.float64)
        u2 = 1 - torch.rand(N, generator=gen, dtype=torch.float64)  # in (0, 1]: a phase of exactly 0 has no logarithm
        if init_scale is None:
            r_min, r_max = LRU_RING
            modulus_sq = u1 * (r_max**2 - r_min**2) + r_min**2  # uniform on the ring's area
            nu_log = torch.log(-0.5 * torch.log(modulus_sq))
        else:
            nu_log = torch.full((N,), math.log(-math.log(init_scale)), dtype=torch.float64)
        params = {"nu_log": nu_log, "theta_log": torch.log(LRU_MAX_PHASE * u2)}
        if init == "paper":
            params |= {"B_re": torch.randn(I, N, generator=gen, dtype=torch.float64) / math.sqrt(2 * I),
                       "B_im": torch.randn(I, N, generator=gen, dtype=torch.float64) / math.sqrt(2 * I),
                       "C_re": torch.randn(N, H, generator=gen, dtype=torch.float64) / math.sqrt(N),
                       "C_im": torch.randn(N, H, generator=gen, dtype=torch.float64) / math.sqrt(N),
                       "D": torch.randn(I, H, generator=gen, dtype=torch.float64) / math.sqrt(I)}
        else:
            half = 1 / math.sqrt(2)
            params |= {"B_re": _draw(I, N, init, gen) * half, "B_im": _draw(I, N, init, gen) * half,
                       "C_re": _draw(N, H, init, gen) * half, "C_im": _draw(N, H, init, gen) * half, "D": _draw(I, H, init, gen)}
        return params
    params = {}
    for gate in fam.gates:
        params[f"W_x{gate}"] = _draw(I, H, init, gen)
        params[f"b_{gate}"] = ((torch.rand(H, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(I) if init in ("uniform", "paper")
                               else torch.zeros(H, dtype=torch.float64))
    params[f"b_{fam.forget_gate}"] += fam.forget_sign * forget_bias
    return params


class ModernCell(nn.Module):
    """The interface of gradlab's cells: forward(x (T, B, I) or token ids (T, B), state=None) -> (outputs (T, B, H), state)."""

    input_names: tuple[str, ...] = ()  # the input matrices, side by side in project's output
    bias_names: tuple[str, ...] | None = None  # their biases (None: none)

    def __init__(self, cell: str, params: dict[str, torch.Tensor], variant: str | None = None, impl: str = "scratch"):
        super().__init__()
        self.cell, self.variant, self.impl = cell, variant, impl
        self.family = family(cell)
        self.gates = self.family.gates
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value.clone()))
        self.input_size = params[self.input_names[0]].shape[0]
        self.last_backend = "python-loop" if impl == "scratch" else self.scan_name

    @property
    def weight_drop(self) -> float:
        return 0.0

    @weight_drop.setter
    def weight_drop(self, p: float) -> None:
        if p:
            raise ValueError(f"weight_drop (DropConnect) masks recurrent weights; cell {self.cell!r} has none to mask.")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Every step's input projections at once (T, B, K): x W_in + b, a row lookup for token ids (id input_size:
        the all-zero one-hot input)."""
        w_in = torch.cat([getattr(self, n) for n in self.input_names], dim=1)  # (I, K)
        bias = torch.cat([getattr(self, n) for n in self.bias_names]) if self.bias_names else None
        if x.dtype == torch.long:
            unknown = x == self.input_size
            rows = nn.functional.embedding(x.masked_fill(unknown, 0), w_in)
            if bool(unknown.any()):
                rows = rows.masked_fill(unknown[..., None], 0)
            return rows if bias is None else rows + bias
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ w_in if bias is None else torch.addmm(bias, flat, w_in)
        return out.view(*x.shape[:-1], -1)

    def per_step(self, projected: torch.Tensor) -> tuple:
        return projected.unbind(0)

    def prepare(self, x: torch.Tensor) -> tuple[tuple, tuple]:
        """Per-step inputs and what every step shares, for driving the cell one step at a time (the probes)."""
        return self.per_step(self.project(x)), self.recurrent()

    def init_state(self, batch_size: int) -> torch.Tensor:
        return getattr(self, self.input_names[0]).new_zeros(batch_size, self.hidden_size)

    def step(self, inp: torch.Tensor, state: torch.Tensor, weights: tuple) -> torch.Tensor:
        """One step from this step's projected input (B, K): the loop's step (scratch), or the scan of one step (scan),
        so that an instrument driving either impl one step at a time runs that impl's own arithmetic."""
        if self.impl == "scan":
            return self.scan(inp[None], state)[0]
        return self.loop_step(inp, state, weights)

    def emit(self, state: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """The step's output (B, H) from its state and its projected input: the state itself."""
        return state

    def retention(self, x: torch.Tensor) -> torch.Tensor:
        """(T, B, H) |a_t| per unit of the state, without gradient: the factor by which h_t = a_t * h_{t-1} + b_t
        scales each unit's gradient per step back in time, so that dL/dh_t = dL/dh_T * prod_{s=t+1..T} a_s exactly
        (for the lru, |lambda| per mode on both its parts: its rotation keeps the norm of each mode's pair)."""
        with torch.no_grad():
            return self.kept(self.project(x))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, B, I) floats or (T, B) token ids -> outputs (T, B, H), final state (B, H)."""
        if state is None:
            state = self.init_state(x.shape[1])
        projected = self.project(x)
        if self.impl == "scratch":
            weights = self.recurrent()
            states = []
            for inp in self.per_step(projected):
                state = self.loop_step(inp, state, weights)
                states.append(state)
            states = torch.stack(states)  # (T, B, H)
        else:
            states = self.scan(projected, state)
        return self.outputs(states, projected), states[-1]

    def outputs(self, states: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        return states


class MinGRU(ModernCell):
    """h_t = (1 - z_t) h_{t-1} + z_t g(x_t W_xh + b_h), z_t = sigmoid(x_t W_xz + b_z)."""

    input_names, bias_names, scan_name = ("W_xz", "W_xh"), ("b_z", "b_h"), "log-space-scan"

    def __init__(self, cell, params, variant=None, impl="scratch"):
        super().__init__(cell, params, variant, impl)
        self.hidden_size = params["W_xz"].shape[1]

    def recurrent(self) -> tuple:
        return ()

    def loop_step(self, inp: torch.Tensor, state: torch.Tensor, weights: tuple = ()) -> torch.Tensor:
        a_z, a_h = inp.chunk(2, dim=-1)
        return torch.sigmoid(-a_z) * state + torch.sigmoid(a_z) * g(a_h)  # 1 - z as sigmoid(-a): the same number, no cancellation

    def kept(self, projected: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-projected[..., : self.hidden_size])  # 1 - z

    def scan(self, projected: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a_z, a_h = projected.chunk(2, dim=-1)
        return log_space_scan(-softplus(a_z), -softplus(-a_z) + log_g(a_h), h0)  # log(1 - z), log z + log g(h~)


class MinLSTM(ModernCell):
    """h_t = f'_t h_{t-1} + i'_t g(x_t W_xh + b_h), f'_t = f_t / (f_t + i_t), i'_t = i_t / (f_t + i_t), f_t, i_t sigmoids of
    x_t W_xf + b_f and x_t W_xi + b_i."""

    input_names, bias_names, scan_name = ("W_xf", "W_xi", "W_xh"), ("b_f", "b_i", "b_h"), "log-space-scan"

    def __init__(self, cell, params, variant=None, impl="scratch"):
        super().__init__(cell, params, variant, impl)
        self.hidden_size = params["W_xf"].shape[1]

    def recurrent(self) -> tuple:
        return ()

    def loop_step(self, inp: torch.Tensor, state: torch.Tensor, weights: tuple = ()) -> torch.Tensor:
        a_f, a_i, a_h = inp.chunk(3, dim=-1)
        f, i = torch.sigmoid(a_f), torch.sigmoid(a_i)
        return f / (f + i) * state + i / (f + i) * g(a_h)

    def kept(self, projected: torch.Tensor) -> torch.Tensor:
        a_f, a_i, _ = projected.chunk(3, dim=-1)
        f, i = torch.sigmoid(a_f), torch.sigmoid(a_i)
        return f / (f + i)  # f'

    def scan(self, projected: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a_f, a_i, a_h = projected.chunk(3, dim=-1)
        # f' = 1 / (1 + i / f) = sigmoid(-d) with d = log i - log f = softplus(-a_f) - softplus(-a_i); i' = sigmoid(d)
        d = softplus(-a_f) - softplus(-a_i)
        return log_space_scan(-softplus(d), -softplus(-d) + log_g(a_h), h0)


class LRU(ModernCell):
    """h_t = lambda * h_{t-1} + gamma * (x_t B) per complex mode, lambda = exp(-exp(nu) + i exp(theta)), gamma =
    sqrt(1 - |lambda|^2) (variant normalised; 1 for plain), a function of lambda; output y_t = Re(h_t C) + x_t D.
    The state handed on is [Re h, Im h] (B, H), H = 2N."""

    input_names, bias_names, scan_name = ("B_re", "B_im", "D"), None, "power-scan"

    def __init__(self, cell, params, variant=None, impl="scratch"):
        super().__init__(cell, params, variant, impl)
        self.hidden_size = params["D"].shape[1]
        self.modes = params["nu_log"].shape[0]

    def gamma(self) -> torch.Tensor:
        """(N,) sqrt(1 - |lambda|^2) = sqrt(-expm1(-2 exp(nu))), accurate for |lambda| near 1; ones for variant plain."""
        if self.variant == "plain":
            return torch.ones_like(self.nu_log)
        return torch.sqrt(-torch.expm1(-2 * torch.exp(self.nu_log)))

    def eigenvalues(self) -> torch.Tensor:
        """(N,) lambda, complex."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def recurrent(self) -> tuple:
        """Re lambda, Im lambda and gamma (N,) each: what every step multiplies by."""
        modulus, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)
        return modulus * torch.cos(phase), modulus * torch.sin(phase), self.gamma()

    def loop_step(self, inp: torch.Tensor, state: torch.Tensor, weights: tuple) -> torch.Tensor:
        lam_re, lam_im, gamma = weights
        N = self.modes
        bu_re, bu_im = inp[..., :N], inp[..., N : 2 * N]
        h_re, h_im = state[..., :N], state[..., N:]
        return torch.cat([lam_re * h_re - lam_im * h_im + gamma * bu_re, lam_re * h_im + lam_im * h_re + gamma * bu_im], dim=-1)

    def kept(self, projected: torch.Tensor) -> torch.Tensor:
        modulus = torch.exp(-torch.exp(self.nu_log))  # |lambda| (N,), on both parts of its mode
        return torch.cat([modulus, modulus]).expand(*projected.shape[:-1], self.hidden_size)

    def scan(self, projected: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        N, gamma = self.modes, self.gamma()
        b = torch.complex(gamma * projected[..., :N], gamma * projected[..., N : 2 * N])  # (T, B, N)
        log_lam = torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))
        h = power_scan(log_lam, b, torch.complex(h0[..., :N], h0[..., N:]))
        return torch.cat([h.real, h.imag], dim=-1)

    def mode_table(self) -> dict[str, torch.Tensor]:
        """Per mode (N,), without gradient: radius |lambda|, phase, and input_power sum_i |B_ij|^2 (E|x_t B_j|^2 for inputs
        of unit variance): what the curse of memory's closed forms read (gradlab.theory.curse_closed_form)."""
        with torch.no_grad():
            return {"radius": torch.exp(-torch.exp(self.nu_log)), "phase": torch.exp(self.theta_log),
                    "input_power": (self.B_re**2 + self.B_im**2).sum(0)}

    def readout(self) -> torch.Tensor:
        """(H, H): Re(h C) = [Re h, Im h] @ [[C_re], [-C_im]]."""
        return torch.cat([self.C_re, -self.C_im], dim=0)

    def emit(self, state: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return state @ self.readout() + inp[..., 2 * self.modes :]

    def outputs(self, states: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        return states @ self.readout() + projected[..., 2 * self.modes :]


MODERN: dict[str, type[ModernCell]] = {"lru": LRU, "mingru": MinGRU, "minlstm": MinLSTM}


def layer_flops(cell: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int, backward: bool) -> int:
    """Matmul FLOPs of one modern layer over a sequence, 2 per multiply-add (as timing.layer_flops for the classic
    cells): the input projections (and the lru's readout); no recurrent matmul exists. With backward: the weights'
    gradients and the input's, as for a first layer the weights' only (the input needs none)."""
    T, B, I, H = seq_len, batch_size, input_size, hidden_size
    if cell == "lru":
        forward = 2 * T * B * I * (H + H) + 2 * T * B * H * H  # [B_re | B_im] (I, H) and D (I, H); the readout (H, H)
        return forward + (forward + 2 * T * B * H * H if backward else 0)  # weights' gradients, and the state's through the readout
    forward = 2 * T * B * I * family(cell).gate_count * H
    return forward * (2 if backward else 1)
