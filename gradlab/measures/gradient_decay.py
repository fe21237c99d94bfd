"""How BPTT gradients decay or explode with distance in time, per cell, impl, init and init_scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cells import check, check_device, check_fits, check_init_scale, create, family
from ..cells.cudnn import cudnn_precision
from ..names import DTYPES, INITS, PROBES, lookup
from ..probes import closed_form_hidden_norms, hidden_grad_norms, independent_step_norms, input_grad_norms, jacobian_spectra
from . import COMMON_COLUMNS

COLUMNS = COMMON_COLUMNS | {
    "probe": "hidden (||dL/dh_t||, and the LSTM's total ||dL/dc_t||), input (||dL/dx_t||) or jacobian (every singular value of ds_{T-1}/ds_t, s the state handed on)",
    "input_size": "input width I",
    "input_std": "standard deviation of the Gaussian inputs",
    "tf32": "cuDNN's float32 recurrent layers in TF32 (torch's default on a GPU) or in full float32",
    "median_rel_ordinary": "median |scratch - cudnn| / norm where both norms are above the dtype's underflow floor",
    "max_rel_ordinary": "the largest such difference", "zeros_apart": "norms 0 in one impl only (underflow)",
    "jacobian_batch": "sequences whose full Jacobians the jacobian probe forms",
    "wrt": "what the gradient is taken with respect to: h, c (LSTM cell state), x, or the full state h,c",
    "t": "step index, 0 .. T-1",
    "distance": "steps from the loss, T-1-t",
    "grad_norm": "RMS over the batch of the per-sequence L2 norm (unitless; 1 at distance 0 for the hidden probe)",
    "log10_rate_per_step": "slope of log10 grad_norm against distance (median over seeds), by least squares",
    "factor_per_step": "10^slope: the norm's factor per step (1 keeps, < 1 decays, > 1 explodes)",
    "r2": "the fit's coefficient of determination on the log axis (low: not one rate)",
    "fit_points": "distances in the fit (norms > 0 and finite; float32 underflow left out)",
    "vanish_distance": "first distance (steps) where the norm is below 1e-6 of its value nearest the loss",
    "max_distance": "largest distance measured (steps)",
    "pairs": "norms measured by both impls at the same settings and step",
    "max_abs_diff": "largest |scratch - cudnn| over those pairs", "max_rel_diff": "largest |scratch - cudnn| / max(|scratch|, |cudnn|)",
    "zeros_apart": "pairs where one impl's norm underflowed to 0 and the other's did not",
    "sequence": "spectrum: which of the jacobian_batch sequences", "rank": "spectrum: the singular value's rank, 0 the largest",
    "singular_value": "spectrum: a singular value of ds_{T-1}/ds_t",
    "q05": "5% quantile of the singular values", "q25": "25% quantile", "q50": "median singular value", "q75": "75% quantile",
    "q95": "95% quantile", "rms": "root mean square singular value (what mean-field theory predicts: factor^distance)",
    "largest": "the largest singular value (the spectral norm)",
    "predicted_factor": "mean-field prediction of the factor per step (gradlab.theory; docs/mean_field.md); for lru, mingru, minlstm "
                        "sqrt(E[a^2]) of their h_t = a_t h_{t-1} + b_t (the lru: its radius; none for a ring of radii)",
    "closed_form": "hidden probe, h: ||dL/dh_t|| as the recurrence gives it exactly, without a backward pass, where the cell allows it "
                   "(lru: |lambda|^k per mode; mingru: prod (1 - z_s); minlstm: prod f'_s; linear with a scaled orthogonal W_hh: rho^k); empty elsewhere",
    "closed_form_factor": "the factor per step fitted to the closed form's curve (as factor_per_step to the measured one)",
    "closed_form_max_rel": "largest |measured - closed form| / closed form over the steps where both are above the dtype's underflow floor",
    "factor_over_predicted": "measured factor_per_step / predicted_factor",
    "edge_init_scale": "the init_scale where the predicted factor is 1 (the edge of chaos); empty: none in (0, 40]",
    "resid_rms": "RMS distance of the curve from the fitted line, in log10 units",
    "one_rate": "the fit is good (r2 >= 0.95, or resid_rms < 0.05: a flat curve has no slope for r2 to explain)",
    "fit": "one rate (r2 >= 0.95, or resid_rms < 0.05 for a flat curve) or not one rate (the curve bends: read the figure, not the number)",
}


@dataclass
class Config:
    cell: str = "rnn"
    impl: str = "scratch"
    variant: str | None = None
    seq_len: int = 100
    init: str = "orthogonal"
    init_scale: float | None = 1.0  # spectral norm of each recurrent matrix
    forget_bias: float = 0.0
    seed: int = 0
    probe: str = "hidden"
    dtype: str = "float64"  # float32 underflows near 1e-38: about 126 steps at a factor of 0.5
    hidden_size: int = 64
    input_size: int = 16
    batch_size: int = 16
    input_std: float = 1.0
    jacobian_batch: int = 2  # a Jacobian costs D backward passes and T*B*D*D memory: a few sequences do
    tf32: bool = False  # cuDNN's float32 RNNs in TF32 (torch's default on a GPU): off, the fused curves are float32's own
    device: str = "cpu"

    def validate(self) -> None:
        check(self.cell, self.impl, self.variant, self.forget_bias, init=self.init, init_scale=self.init_scale, hidden_size=self.hidden_size)
        lookup(PROBES, self.probe, "probe")
        lookup(DTYPES, self.dtype, "dtype")
        lookup(INITS, self.init, "init")
        check_init_scale(self.init_scale)
        if self.init == "critical" and self.init_scale is not None:
            raise ValueError("init 'critical' chooses the recurrent scale itself: set init_scale=none with it.")
        if self.input_std < 0:
            raise ValueError(f"input_std must be >= 0, got {self.input_std}.")
        for name in ("seq_len", "hidden_size", "input_size", "batch_size", "jacobian_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        check_device(self.device)
        limit = math.sqrt(torch.finfo(getattr(torch, self.dtype)).max / self.input_size)
        if self.input_std > limit:
            raise ValueError(f"input_std {self.input_std:g} makes inputs whose summed variance is no {self.dtype} number: at most {limit:.3g} "
                             f"at input_size {self.input_size} (any std past about 10 saturates a tanh cell already).")
        check_fits(self.cell, self.hidden_size, self.input_size, self.seq_len, self.batch_size, self.dtype, self.device)
        if self.probe == "jacobian" and self.jacobian_batch > self.batch_size:
            raise ValueError(f"jacobian_batch ({self.jacobian_batch}) must be at most batch_size ({self.batch_size}): it takes that many of the batch's sequences.")


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    """One backward pass (hidden, input) or D batched ones (jacobian) on a fresh cell; rows per (t, wrt); cuDNN in TF32
    only when cfg.tf32 says so."""
    with cudnn_precision(cfg.tf32):
        return _run(cfg)


def _run(cfg: Config) -> dict[str, list[dict]]:
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    cell = create(
        cfg.cell, cfg.impl, cfg.input_size, cfg.hidden_size, variant=cfg.variant, init=cfg.init,
        init_scale=cfg.init_scale, forget_bias=cfg.forget_bias, seed=cfg.seed, dtype=dtype, device=device, input_std=cfg.input_std,
    )
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # data drawn apart from the weights
    x = (torch.randn(cfg.seq_len, cfg.batch_size, cfg.input_size, generator=gen, dtype=torch.float64) * cfg.input_std).to(device, dtype)  # (T, B, I)
    direction = torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen, dtype=torch.float64)
    direction = (direction / direction.norm(dim=1, keepdim=True)).to(device, dtype)  # (B, H), unit rows: ||dL/dh_{T-1}|| = 1
    closed = None
    if cfg.probe == "hidden":
        norms = hidden_grad_norms(cell, x, direction)
        closed = closed_form_hidden_norms(cell, x, direction)
    elif cfg.probe == "input":
        norms = {"x": input_grad_norms(cell, x, direction)}
    elif cfg.probe == "jacobian":  # the spectral norm as the curve; every singular value in a table of its own
        spectra = jacobian_spectra(cell, x[:, : cfg.jacobian_batch]).cpu()  # (T, B, D)
        norms = {family(cfg.cell).state_label: spectra[..., 0].pow(2).mean(-1).sqrt()}
    else:
        norms = {family(cfg.cell).state_label: independent_step_norms(cell, x, gen)}
    backend = getattr(cell, "last_backend", "")
    rows = []
    T = cfg.seq_len
    for wrt, values in norms.items():
        exact = closed.cpu().tolist() if closed is not None and wrt == "h" else None  # a column only where a closed form exists
        for t, value in enumerate(values.cpu().tolist()):
            rows.append({"wrt": wrt, "t": t, "distance": T - 1 - t, "grad_norm": value, "backend": backend}
                        | ({"closed_form": exact[t]} if exact is not None else {}))
    tables = {"results": rows}
    if cfg.probe == "jacobian":
        tables["spectrum"] = [{"t": t, "distance": T - 1 - t, "sequence": b, "rank": k, "singular_value": v}
                              for t, per_seq in enumerate(spectra.tolist()) for b, values in enumerate(per_seq) for k, v in enumerate(values)]
    return tables


from ..derived.gradient_decay import derive  # noqa: E402,F401  (tables made from the rows; outside the source digest)
