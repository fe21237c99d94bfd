"""The one entry point to the recurrent cells: create(cell, impl, ...) and convert(module, impl)."""

from __future__ import annotations

import torch

from ..registry import lookup, suggest
from .cudnn import TORCH_ORDER, FusedCell, load_scratch_layout, scratch_layout
from .init import INITS, init_params
from .scratch import ScratchCell, State

CELLS: dict[str, str] = {
    "linear": "identity activation h_t = x_t W_xh + h_{t-1} W_hh + b_h (the analytic oracle)",
    "rnn": "tanh RNN",
    "gru": "GRU; variant reset_after (torch.nn.GRU, cuDNN) or reset_before (Cho et al. 2014)",
    "lstm": "LSTM without peepholes, state (h, c)",
}
IMPLS: dict[str, str] = {
    "scratch": "the equations written out, a Python loop over time",
    "cudnn": "torch.nn.RNN/GRU/LSTM: cuDNN on CUDA, PyTorch's fused kernels on CPU",
}
GRU_VARIANTS = ("reset_after", "reset_before")
Cell = ScratchCell | FusedCell

__all__ = ["CELLS", "IMPLS", "INITS", "GRU_VARIANTS", "Cell", "State", "create", "convert", "check", "parameters_in_scratch_layout", "hidden_of"]


def check(cell: str, impl: str, variant: str | None = None) -> str | None:
    """Validate a (cell, impl, variant) combination; returns the resolved variant (None unless GRU)."""
    lookup(CELLS, cell, "cell")
    lookup(IMPLS, impl, "impl")
    if cell != "gru":
        if variant not in (None, "reset_after"):
            raise ValueError(f"variant={variant!r} applies to the GRU only; cell {cell!r} has no variants.")
        variant = None
    else:
        variant = variant or "reset_after"
        if variant not in GRU_VARIANTS:
            raise ValueError(f"Unknown GRU variant {variant!r}. {suggest(variant, list(GRU_VARIANTS))}")
    if impl == "cudnn":
        if cell not in TORCH_ORDER:
            raise ValueError(
                f"cell {cell!r} has no cudnn implementation (torch.nn has no identity-activation RNN). "
                f"cudnn exists for: {', '.join(TORCH_ORDER)}; {cell!r} exists in: scratch."
            )
        if variant == "reset_before":
            raise ValueError(
                "GRU variant 'reset_before' exists only in scratch: torch.nn.GRU and cuDNN compute "
                "'reset_after'. Use impl='scratch', or variant='reset_after'."
            )
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
) -> Cell:
    """A recurrent cell with forward(x (T, B, I) or token ids (T, B), state=None) -> (outputs (T, B, H), state).

    The same arguments give the same function in both impls: weights are drawn once in the scratch layout.
    """
    variant = check(cell, impl, variant)
    if forget_bias and cell != "lstm":
        raise ValueError(f"forget_bias applies to the LSTM only, not to cell {cell!r}.")
    params = init_params(
        cell, input_size, hidden_size, reset_after=variant != "reset_before",
        init=init, init_scale=init_scale, forget_bias=forget_bias, seed=seed,
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
        return scratch_layout(module, grad=grad)
    return {n: (p.grad if grad else p.detach()) for n, p in module.named_parameters()}


def convert(module: Cell, impl: str) -> Cell:
    """The other implementation (or a copy in the same one) computing the same function."""
    check(module.cell, impl, module.variant)
    ref = next(module.parameters())
    params = {k: v.detach().to(torch.float64) for k, v in parameters_in_scratch_layout(module).items()}
    if impl == "scratch":
        out: Cell = ScratchCell(module.cell, params, module.variant)
    else:
        out = FusedCell(module.cell, module.input_size, module.hidden_size, module.variant).to(torch.float64)
        load_scratch_layout(out, params)
    return out.to(device=ref.device, dtype=ref.dtype)


def hidden_of(state: State) -> torch.Tensor:
    """h of a state: h itself, or the first of (h, c)."""
    return state[0] if isinstance(state, tuple) else state

