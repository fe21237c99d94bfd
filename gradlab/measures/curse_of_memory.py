"""The curse of memory (Zucchet and Orvieto 2024): as a recurrence remembers longer, its state grows more sensitive to
the parameters that set the recurrence, E||ds_t/dtheta||^2, even where dL/dh_t does not explode. Measured exactly
(forward-mode differentiation through the cell's steps, gradlab.probes.parameter_sensitivity) on white-noise input
as memory grows (the eigenvalue radius of the lru and of the diagonal recurrence, init_scale for the classic cells,
forget_bias for the LSTM and the min cells), beside the closed forms of the diagonal linear recurrence and the lru
(gradlab.theory.curse_closed_form; docs/curse_of_memory.md), with and without the lru's normalisation gamma."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import theory
from ..cells import check, check_device, check_fits, create, family
from ..cells.families import Family
from ..names import CELLS, DTYPES, INITS, LRU_VARIANTS, lookup
from ..probes import parameter_sensitivity, state_grad_norms
from . import COMMON_COLUMNS

DIAGONAL = "diagonal"  # the closed form's own recurrence: not a gradlab cell
ALL = "all recurrent"  # wrt: every recurrent parameter of the cell together

COLUMNS = COMMON_COLUMNS | {
    "cell": "a gradlab cell (linear, rnn, gru, lstm, lru, mingru, minlstm), or diagonal: the closed form's own recurrence "
            "h_t = lambda h_{t-1} + gamma x_t, one real lambda per unit (all equal to memory), each unit reading its own input",
    "variant": "diagonal and lru: normalised (gamma = sqrt(1 - |lambda|^2)) or plain (gamma = 1); gru: reset_after, reset_before",
    "memory": "what sets the cell's memory at initialisation (its family's): the eigenvalue radius |lambda| (diagonal, lru), the recurrent "
              "spectral norm init_scale (linear, rnn, gru), or forget_bias (lstm, mingru, minlstm)",
    "memory_setting": "which setting memory is: radius, init_scale or forget_bias",
    "input_size": "input width I (diagonal: equal to hidden_size, each unit its own input)", "input_std": "standard deviation of the white-noise inputs",
    "record_steps": "steps recorded, log-spaced from the first to the last",
    "wrt": "the parameter theta: |lambda| (the eigenvalue's modulus), nu_log and theta_log (the lru's exponential parametrisation, "
           "|lambda| = exp(-exp(nu)), phase = exp(theta)), or a cell's recurrent parameters (W_h* of the classic cells; the retention "
           "gate's W_x*, b_* of the min cells), or all recurrent: all of them together (nu_log and theta_log for the lru)",
    "t": "step index, 0 .. T-1", "units": "the state's units: hidden_size, or the lru's H/2 complex modes (each with two real numbers)",
    "sensitivity": "E ||ds_t/dtheta||^2 / units: squared derivatives of the state handed on (h; h and c for the LSTM; Re and Im of the lru's modes) "
                   "with respect to every entry of theta, summed, mean over the sequences, per unit",
    "sensitivity_se": "standard error of sensitivity over the sequences",
    "sensitivity_closed_form": "the same in closed form, its expectation over white noise at step t (diagonal; lru from its realised B and phases); "
                               "empty where none exists",
    "sensitivity_stationary": "the closed form at stationarity (t -> infinity)",
    "state_power": "E ||s_t||^2 / units", "state_power_closed_form": "its closed form (diagonal, lru): gamma^2 sum_k |lambda|^(2k) E|x B|^2",
    "memory_steps": "the memory measured: the distance at which ||dL/ds_t|| (a loss on the whole last state, a random direction per sequence: "
                    "the state Jacobian's RMS singular value) has fallen by e, log-interpolated; empty where it has not fallen that far within the sequence",
    "closed_over_measured": "sensitivity_closed_form / sensitivity at the last step", "z": "(sensitivity - closed form) / its standard error",
}


@dataclass
class Config:
    cell: str = DIAGONAL
    variant: str | None = "normalised"
    memory: float = 0.9
    init: str = "paper"
    seq_len: int = 1000
    hidden_size: int = 32
    input_size: int = 32
    batch_size: int = 32
    input_std: float = 1.0
    record_steps: int = 60
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"

    def memory_setting(self) -> str:
        return "radius" if self.cell in (DIAGONAL, "lru") else family(self.cell).memory

    def validate(self) -> None:
        lookup({DIAGONAL: DIAGONAL, **CELLS}, self.cell, "cell")
        lookup(DTYPES, self.dtype, "dtype")
        lookup(INITS, self.init, "init")
        check_device(self.device)
        for name in ("seq_len", "hidden_size", "input_size", "batch_size", "record_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not (math.isfinite(self.memory) and math.isfinite(self.input_std) and self.input_std > 0):
            raise ValueError(f"memory must be a finite number and input_std > 0, got {self.memory} and {self.input_std}.")
        if self.memory_setting() == "radius" and not 0 < self.memory < 1:
            raise ValueError(f"memory is the eigenvalue radius |lambda| of cell {self.cell!r}: it must be in (0, 1), got {self.memory}.")
        if self.cell == DIAGONAL:
            lookup(LRU_VARIANTS, self.variant, "variant of the diagonal recurrence")
            if self.input_size != self.hidden_size:
                raise ValueError(f"the diagonal recurrence gives each unit its own input: input_size must equal hidden_size "
                                 f"({self.hidden_size}), got {self.input_size}.")
            return
        kw = {"init_scale": self.memory} if self.memory_setting() != "forget_bias" else {"forget_bias": self.memory}
        check(self.cell, "scratch", self.variant, kw.get("forget_bias", 0.0), init=self.init, init_scale=kw.get("init_scale"),
              hidden_size=self.hidden_size)
        if self.init == "critical":
            raise ValueError("init 'critical' chooses the recurrent scale itself, which is this measure's memory axis: use orthogonal.")
        check_fits(self.cell, self.hidden_size, self.input_size, self.seq_len, self.batch_size, self.dtype, self.device)


class Diagonal(nn.Module):
    """h_t = lambda h_{t-1} + gamma x_t per unit, lambda = exp(-exp(nu_log)) real, gamma = sqrt(1 - lambda^2) (normalised)
    or 1 (plain): the recurrence the closed forms describe, with the step protocol of gradlab's cells."""

    family = Family(gates=("h",), impls=("scratch",), diagonal=True, recurrent=("nu_log",))

    def __init__(self, units: int, radius: float, variant: str):
        super().__init__()
        self.variant, self.hidden_size = variant, units
        self.nu_log = nn.Parameter(torch.full((units,), math.log(-math.log(radius)), dtype=torch.float64))

    def prepare(self, x):
        return x.unbind(0), None

    def init_state(self, batch_size: int) -> torch.Tensor:
        return self.nu_log.new_zeros(batch_size, self.hidden_size)

    def step(self, inp, state, ctx=None):
        lam = torch.exp(-torch.exp(self.nu_log))
        gamma = torch.sqrt(-torch.expm1(-2 * torch.exp(self.nu_log))) if self.variant == "normalised" else 1.0
        return lam * state + gamma * inp


def recorded(seq_len: int, count: int) -> list[int]:
    """Log-spaced steps from 0 to T-1 (every step when there are fewer than `count`), the last always among them."""
    if seq_len <= count:
        return list(range(seq_len))
    steps = np.unique(np.round(np.geomspace(1, seq_len, count)).astype(int) - 1)
    return sorted(set(steps.tolist()) | {seq_len - 1})


def e_folding(norms: np.ndarray) -> float:
    """The distance (steps) at which a norm curve (indexed by distance from the loss, distance 0 first) has fallen by e:
    log-linear interpolation between the two distances around it; NaN where it never falls that far."""
    logs = np.log(np.maximum(norms, 1e-300) / norms[0])
    below = np.nonzero(logs <= -1.0)[0]
    if not len(below):
        return float("nan")
    k = below[0]
    return float(k - 1 + (-1.0 - logs[k - 1]) / (logs[k] - logs[k - 1]))


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    setting = cfg.memory_setting()
    if cfg.cell == DIAGONAL:
        cell = Diagonal(cfg.hidden_size, cfg.memory, cfg.variant).to(device=device, dtype=dtype)
    else:
        kw = {"forget_bias": cfg.memory} if setting == "forget_bias" else {"init_scale": cfg.memory}
        cell = create(cfg.cell, "scratch", cfg.input_size, cfg.hidden_size, variant=cfg.variant, init=cfg.init, seed=cfg.seed,
                      dtype=dtype, device=device, **kw)
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # data drawn apart from the weights
    x = (torch.randn(cfg.seq_len, cfg.batch_size, cfg.input_size, generator=gen, dtype=torch.float64) * cfg.input_std).to(device, dtype)
    record = recorded(cfg.seq_len, cfg.record_steps)
    modes = getattr(cell, "mode_table", None)
    units = len(modes()["radius"]) if modes else cfg.hidden_size
    names = ("nu_log",) if cfg.cell == DIAGONAL else family(cfg.cell).recurrent_parameters
    sens = parameter_sensitivity(cell, x, names, record)
    sens[ALL] = sum(sens[n] for n in names)  # every recurrent parameter at once, per sequence (its standard error is a sum's)

    # the eigenvalue's modulus: d/d|lambda| = (d/dnu) / (d|lambda|/dnu), one parameter per unit or mode, so exactly
    table = {k: v.cpu().double() for k, v in modes().items()} if modes else None
    if cfg.cell == DIAGONAL:
        table = {"radius": torch.full((units,), cfg.memory, dtype=torch.float64), "phase": torch.zeros(units, dtype=torch.float64),
                 "input_power": torch.full((units,), cfg.input_std**2, dtype=torch.float64)}
    else:
        table = None if table is None else table | {"input_power": table["input_power"] * cfg.input_std**2}
    if table is not None and bool((table["radius"] == table["radius"][0]).all()):  # one radius: |lambda| is one parameter's worth
        r = float(table["radius"][0])
        sens["|lambda|"] = sens["nu_log"] / (r * math.log(r)) ** 2

    with torch.no_grad():  # the state's power, by the same steps
        inputs, ctx = cell.prepare(x)
        state, power = cell.init_state(x.shape[1]), {}
        for t, inp in enumerate(inputs):
            state = cell.step(inp, state, ctx)
            if t in record:
                parts = state if isinstance(state, tuple) else (state,)
                power[t] = float(sum(p.double().pow(2).sum() for p in parts)) / (units * x.shape[1])
    norms = state_grad_norms(cell, x, gen).cpu().numpy()[::-1]  # distance 0 first
    memory_steps = e_folding(norms)

    rows = []
    for wrt, per in sens.items():
        closed = stationary = None
        if table is not None and (wrt in theory.CURSE_WRT):
            variant = cfg.variant or "normalised"
            closed = theory.curse_closed_form(wrt, variant, table["radius"].numpy(), cfg.seq_len, table["phase"].numpy(), table["input_power"].numpy())
            stationary = theory.curse_stationary(wrt, variant, table["radius"].numpy(), table["phase"].numpy(), table["input_power"].numpy())
        state_closed = None if table is None else theory.curse_closed_form("state", cfg.variant or "normalised", table["radius"].numpy(), cfg.seq_len,
                                                                           table["phase"].numpy(), table["input_power"].numpy())
        per_unit = (per / units).cpu().numpy()  # (R, B)
        for i, t in enumerate(record):
            rows.append({"wrt": wrt, "t": t, "units": units, "memory_setting": setting, "sensitivity": float(per_unit[i].mean()),
                         "sensitivity_se": float(per_unit[i].std(ddof=1) / math.sqrt(per_unit.shape[1])) if per_unit.shape[1] > 1 else float("nan"),
                         "sensitivity_closed_form": float(closed[t]) if closed is not None else float("nan"),
                         "sensitivity_stationary": stationary if stationary is not None else float("nan"),
                         "state_power": power[t], "state_power_closed_form": float(state_closed[t]) if state_closed is not None else float("nan"),
                         "memory_steps": memory_steps, "backend": "python-loop (forward-mode)"})
    return {"results": rows}


from ..derived.curse_of_memory import derive  # noqa: E402,F401  (tables made from the rows; outside the source digest)
