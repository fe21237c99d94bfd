"""The one entry point to the recurrent cells: create(cell, impl, ...) and convert(module, impl)."""

from __future__ import annotations

import torch

from ..names import IMPLS, lookup
from .cudnn import FusedCell, load_scratch_layout, scratch_layout
from .families import FAMILIES, Family, family
from .init import init_params
from .modern import MODERN, ModernCell
from .modern import init_params as modern_params
from .scratch import ScratchCell, State

Cell = ScratchCell | FusedCell | ModernCell

__all__ = ["Cell", "Family", "State", "family", "create", "convert", "check", "parameters_in_scratch_layout", "hidden_of", "state_parts", "detach",
           "output_gate_of", "output_of", "exact_retention", "FAMILIES"]


MAX_INIT_SCALE = 100.0  # a recurrent spectral norm past this saturates every gated cell at step one and overflows the linear one


def check_init_scale(init_scale: float | None) -> None:
    """init_scale: a spectral norm in (0, 100], or None (the init's own)."""
    if init_scale is not None and not 0 < init_scale <= MAX_INIT_SCALE:
        raise ValueError(f"init_scale must be in (0, {MAX_INIT_SCALE:g}] (a spectral norm), or none; got {init_scale}.")


MAX_SEED = 2**32 - 1  # numpy's and every generator's range here; torch's is wider, numpy's is the bound


def check_device(device: str) -> None:
    """device: cpu, cuda or cuda:N (what gradlab's cells and timings know how to run and synchronise)."""
    text = str(device)
    if not (text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError(f"device must be cpu, cuda or cuda:N (a GPU's index), got {text!r}.")


def device_memory(device: str) -> int | None:
    """The memory a device has in all, in bytes (None: unknown): physical memory for cpu, the GPU's own for cuda."""
    import os

    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        index = int(str(device)[5:]) if ":" in str(device) else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(cell: str, hidden_size: int, input_size: int, seq_len: int, batch_size: int, dtype: str, device: str, models: int = 1) -> None:
    """A ValueError when even a lower bound on what one run of the cell holds at once (its weight matrices and
    their gradients, and the gate values of every step that the backward pass keeps) exceeds the device's
    whole memory: such a run could only die (the kernel's out-of-memory killer takes the process, and the
    run folder with it), so it is refused before any work."""
    fam = family(cell)
    gates = len(fam.gates)
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    if fam.diagonal:  # no recurrent matrix: the input matrices (the lru's readout besides) and one value per unit and step
        weights = gates * hidden_size * input_size + (hidden_size * hidden_size if cell == "lru" else 0)
        need = size * models * (2 * weights + seq_len * batch_size * hidden_size)
    else:
        need = size * models * (2 * gates * hidden_size * (hidden_size + input_size) + seq_len * batch_size * gates * hidden_size)
    have = device_memory(device)
    if have is not None and need > have:
        raise ValueError(f"hidden_size {hidden_size}, seq_len {seq_len}, batch_size {batch_size} ({cell}, {dtype}) need at least "
                         f"{need / 2**30:,.1f} GiB (weights, their gradients and the stored gates of every step), more than the "
                         f"{have / 2**30:,.1f} GiB that {device} has in all: choose smaller sizes.")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0 .. 2**32 - 1, got {seed}.")


NO_TWIN = {  # why a cell has no implementation of a kind
    "cudnn": "torch.nn has no {what}",
    "scan": "its recurrence {why}: no parallel scan computes it",
}
WHAT = {"linear": "identity-activation RNN", "lru": "LRU", "mingru": "minGRU", "minlstm": "minLSTM"}
WHY = {"linear": "multiplies h by a full matrix", "rnn": "is nonlinear in h", "gru": "is nonlinear in h", "lstm": "is nonlinear in h"}


def check(cell: str, impl: str, variant: str | None = None, forget_bias: float = 0.0, init: str | None = None,
          init_scale: float | None = None, hidden_size: int | None = None) -> str | None:
    """Validate a (cell, impl, variant, forget_bias) combination, and where given the init, init_scale and
    hidden_size a modern cell refuses; returns the resolved variant (None for a cell without variants)."""
    fam = family(cell)
    lookup(IMPLS, impl, "impl")
    if not fam.variants:
        if variant not in (None, "reset_after"):
            with_variants = "; ".join(f"the {c}'s: {', '.join(f.variants)}" for c, f in FAMILIES.items() if f.variants)
            raise ValueError(f"variant={variant!r} is not cell {cell!r}'s: it has no variants ({with_variants}).")
        variant = None
    else:
        variant = variant or fam.variants[0]
        lookup({v: v for v in fam.variants}, variant, f"{cell.upper()} variant")
    if forget_bias and fam.forget_gate is None:
        gated = ", ".join(c for c, f in FAMILIES.items() if f.forget_gate)
        raise ValueError(f"forget_bias applies to the cells with a forget gate ({gated}; minGRU's is 1 - z), not to cell {cell!r}"
                         + (f": its memory is set by {fam.memory} (the eigenvalue radius)." if fam.diagonal else "."))
    if impl not in fam.impls:
        having = [c for c, f in FAMILIES.items() if impl in f.impls]
        reason = NO_TWIN.get(impl, "").format(what=WHAT.get(cell, cell), why=WHY.get(cell, ""))
        raise ValueError(
            f"cell {cell!r} has no {impl} implementation" + (f" ({reason})" if reason else "") + ". "
            f"{impl} exists for: {', '.join(having)}; {cell!r} exists in: {', '.join(fam.impls)}."
        )
    if impl == "cudnn" and variant == "reset_before":
        raise ValueError(
            "GRU variant 'reset_before' exists only in scratch: torch.nn.GRU and cuDNN compute "
            "'reset_after'. Use impl='scratch', or variant='reset_after'."
        )
    if fam.diagonal and (init is not None or init_scale is not None or hidden_size is not None):
        from .modern import check_options

        check_options(cell, hidden_size if hidden_size is not None else 2, init or "normal", init_scale)
    return variant


def create(
    cell: str,
    impl: str,
    input_size: int,
    hidden_size: int,
    *,
    variant: str | None = None,
    init: str = "normal",
    init_scale: float | None = None,
    forget_bias: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    input_std: float = 1.0,
) -> Cell:
    """A recurrent cell with forward(x (T, B, I) or token ids (T, B), state=None) -> (outputs (T, B, H), state).

    Token ids index the rows of the input weights, as one-hot vectors would; the id `input_size` (one
    past the last) stands for a token outside the vocabulary and gives the all-zero one-hot input.

    The same arguments give the same function in both impls: weights are drawn once in the scratch layout.
    `input_std` is used by init 'critical' alone: the standard deviation of the inputs it is critical for.
    """
    variant = check(cell, impl, variant, forget_bias)
    if family(cell).diagonal:
        params = modern_params(cell, input_size, hidden_size, init=init, init_scale=init_scale, forget_bias=forget_bias, seed=seed)
        return MODERN[cell](cell, params, variant, impl).to(device=device, dtype=dtype)
    params = init_params(
        cell, input_size, hidden_size, reset_after=variant != "reset_before",
        init=init, init_scale=init_scale, forget_bias=forget_bias, seed=seed, input_std=input_std,
    )
    if impl == "scratch":
        module: Cell = ScratchCell(cell, params, variant)
    else:
        module = FusedCell(cell, input_size, hidden_size, variant)
        module.to(torch.float64)
        load_scratch_layout(module, params)
    return module.to(device=device, dtype=dtype)


def parameters_in_scratch_layout(module: Cell, grad: bool = False) -> dict[str, torch.Tensor]:
    """Parameters (or gradients) named as in the seed, whatever the impl."""
    if isinstance(module, FusedCell):
        return scratch_layout(module, grad=grad)  # a modern cell's parameters are the same in both impls
    return {n: (p.grad if grad else p.detach()) for n, p in module.named_parameters()}


def convert(module: Cell, impl: str) -> Cell:
    """The other implementation (or a copy in the same one) computing the same function."""
    check(module.cell, impl, module.variant)
    ref = next(module.parameters())
    params = {k: v.detach().to(torch.float64) for k, v in parameters_in_scratch_layout(module).items()}
    if isinstance(module, ModernCell):
        return MODERN[module.cell](module.cell, params, module.variant, impl).to(device=ref.device, dtype=ref.dtype)
    if impl == "scratch":
        out: Cell = ScratchCell(module.cell, params, module.variant)
    else:
        out = FusedCell(module.cell, module.input_size, module.hidden_size, module.variant).to(torch.float64)
        load_scratch_layout(out, params)
    return out.to(device=ref.device, dtype=ref.dtype)


def hidden_of(state: State) -> torch.Tensor:
    """h of a state: h itself, or the first of (h, c)."""
    return state[0] if isinstance(state, tuple) else state


def output_of(cell: Cell, state: State, inp) -> torch.Tensor:
    """The output (B, H) a step shows, from the state it hands on and its per-step input (prepare's): h itself for
    every cell but the lru, whose output is a readout Re(h C) + x D."""
    emit = getattr(cell, "emit", None)
    return hidden_of(state) if emit is None else emit(state, inp)


def exact_retention(cell: Cell, x: torch.Tensor) -> torch.Tensor | None:
    """(T, B, H): the factor r_t by which each unit's gradient is scaled per step back in time where the recurrence
    makes it exact, ||dL/dh_t||^2 = sum_units (dL/dh_T)^2 prod_{s=t+1..T} r_s^2: |a_t| of the modern cells
    (h_t = a_t * h_{t-1} + b_t; the lru's |lambda| per mode), and rho for the linear cell whose W_hh is rho times an
    orthogonal matrix (dh_T/dh_t = rho^k Q^k keeps every norm up to rho^k). None where no such closed form exists."""
    if isinstance(cell, ModernCell):
        return cell.retention(x)
    if cell.cell == "linear" and isinstance(cell, ScratchCell):
        w = cell.W_hh.detach().double()
        rho_sq = (w.T @ w).diagonal().mean()
        if torch.allclose(w.T @ w, rho_sq * torch.eye(w.shape[0], dtype=w.dtype, device=w.device), rtol=0, atol=1e-12 * float(rho_sq)):
            return torch.full((*x.shape[:2], cell.hidden_size), float(rho_sq.sqrt()), dtype=torch.float64, device=w.device)
    return None


def state_parts(state: State) -> list[torch.Tensor]:
    """The state's tensors in the family's order: [h] or [h, c]."""
    return list(state) if isinstance(state, tuple) else [state]


def detach(state: State) -> State:
    """The same state cut from the graph (truncated BPTT between batches)."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def output_gate_of(cell: Cell, x: torch.Tensor):
    """The LSTM's output gate o_t = sigmoid(x_t W_xo + b_o + h_{t-1} W_ho) as a function (t, h_{t-1}) -> (B, H),
    without gradient, from the scratch twin of either impl (the same function): what h_t = o_t tanh(c_t)
    multiplies, for the probes' total dL/dc_t."""
    scratch = cell if cell.impl == "scratch" else convert(cell, "scratch")
    if scratch.family.forget_gate is None or "o" not in scratch.gates:
        raise ValueError(f"cell {scratch.cell!r} has no output gate.")
    H = scratch.hidden_size
    k = scratch.gates.index("o")
    with torch.no_grad():
        projected = scratch.project(x)[..., k * H : (k + 1) * H]  # (T, B, H): x_t W_xo + b_o
        w_ho = scratch.W_ho.detach()

    def gate(t: int, h_before: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(projected[t] + h_before.detach() @ w_ho)

    return gate
