"""How BPTT gradients decay or explode with distance in time, per cell, impl, init and init_scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..cells import check, create, family
from ..names import DTYPES, INITS, PROBES, lookup
from ..probes import hidden_grad_norms, input_grad_norms, jacobian_norms
from . import COMMON_COLUMNS

COLUMNS = COMMON_COLUMNS | {
    "probe": "hidden (||dL/dh_t||, ||dL/dc_t||), input (||dL/dx_t||) or jacobian (||ds_{T-1}/ds_t||_2)",
    "input_size": "input width I",
    "input_std": "standard deviation of the Gaussian inputs",
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
    "fit": "one rate (r2 >= 0.95) or not one rate (the curve bends: read the figure, not the number)",
}
FLOOR_RATIO = 1e-6  # "vanished": the norm falls below this fraction of its value at distance 0


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
    device: str = "cpu"

    def validate(self) -> None:
        check(self.cell, self.impl, self.variant, self.forget_bias)
        lookup(PROBES, self.probe, "probe")
        lookup(DTYPES, self.dtype, "dtype")
        lookup(INITS, self.init, "init")
        if self.init_scale is not None and not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0 (a spectral norm), or none; got {self.init_scale}.")
        if self.input_std < 0:
            raise ValueError(f"input_std must be >= 0, got {self.input_std}.")
        for name in ("seq_len", "hidden_size", "input_size", "batch_size", "jacobian_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    """One backward pass (hidden, input) or D batched ones (jacobian) on a fresh cell; rows per (t, wrt)."""
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    cell = create(
        cfg.cell, cfg.impl, cfg.input_size, cfg.hidden_size, variant=cfg.variant, init=cfg.init,
        init_scale=cfg.init_scale, forget_bias=cfg.forget_bias, seed=cfg.seed, dtype=dtype, device=device,
    )
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # data drawn apart from the weights
    x = (torch.randn(cfg.seq_len, cfg.batch_size, cfg.input_size, generator=gen, dtype=torch.float64) * cfg.input_std).to(device, dtype)  # (T, B, I)
    direction = torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen, dtype=torch.float64)
    direction = (direction / direction.norm(dim=1, keepdim=True)).to(device, dtype)  # (B, H), unit rows: ||dL/dh_{T-1}|| = 1
    if cfg.probe == "hidden":
        norms = hidden_grad_norms(cell, x, direction)
    elif cfg.probe == "input":
        norms = {"x": input_grad_norms(cell, x, direction)}
    else:
        norms = {family(cfg.cell).state_label: jacobian_norms(cell, x[:, : cfg.jacobian_batch])}
    backend = getattr(cell, "last_backend", "")
    rows = []
    T = cfg.seq_len
    for wrt, values in norms.items():
        for t, value in enumerate(values.cpu().tolist()):
            rows.append({"wrt": wrt, "t": t, "distance": T - 1 - t, "grad_norm": value, "backend": backend})
    return {"results": rows}


def decay_rates(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: slope of log10 grad_norm against distance (as a factor per step), the fit's r^2,
    and the first distance where the median norm (over seeds) is below 1e-6 of its value nearest the loss."""
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=True):
        curve = g.groupby("distance")["grad_norm"].median().sort_index()  # (distance,) median over seeds
        ok = curve[(curve > 0) & np.isfinite(curve)]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        if len(ok) >= 2:
            d, y = ok.index.to_numpy(float), np.log10(ok.to_numpy(float))
            slope, intercept = np.polyfit(d, y, 1)
            resid = y - (slope * d + intercept)
            ss = ((y - y.mean()) ** 2).sum()
            row |= {"log10_rate_per_step": slope, "factor_per_step": 10**slope, "r2": 1 - (resid**2).sum() / ss if ss > 0 else 1.0}
        else:
            row |= {"log10_rate_per_step": np.nan, "factor_per_step": np.nan, "r2": np.nan}
        ref = ok.iloc[0] if len(ok) else np.nan  # the nearest positive norm (dL/dc at distance 0 is exactly 0)
        below = curve[(curve.index > ok.index[0]) & (curve < FLOOR_RATIO * ref)] if len(ok) else curve.iloc[:0]
        row |= {"fit_points": len(ok), "vanish_distance": float(below.index[0]) if len(below) else np.nan, "max_distance": float(curve.index.max())}
        rows.append(row)
    return pd.DataFrame(rows)


def impl_agreement(results: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per probe, wrt and dtype: how far scratch and cudnn are apart on the same norms (same settings, t).
    The relative difference is taken where both norms are above 0; a norm that underflowed to 0 in one impl
    only is counted apart (zeros_apart)."""
    out_columns = ["probe", "wrt", "dtype", "pairs", "max_abs_diff", "max_rel_diff", "zeros_apart"]
    if results["impl"].nunique() < 2:
        return pd.DataFrame(columns=out_columns)
    keys = [c for c in columns if c not in ("impl", "point") and c in results] + ["wrt", "t"]
    key = pd.Series(["|".join(parts) for parts in zip(*(results[c].map(repr) for c in keys))], index=results.index)  # None, NaN match as text
    rows = []
    for (probe, wrt, dtype), idx in results.groupby(["probe", "wrt", "dtype"], sort=False).groups.items():
        g = results.loc[idx]
        a = g[g["impl"] == "scratch"].set_index(key[idx][g["impl"] == "scratch"])["grad_norm"]
        b = g[g["impl"] == "cudnn"].set_index(key[idx][g["impl"] == "cudnn"])["grad_norm"]
        a, b = a.align(b, join="inner")
        if not len(a):
            continue
        both = (a > 0) & (b > 0)
        rel = ((a - b).abs() / np.maximum(a.abs(), b.abs()))[both]
        rows.append({"probe": probe, "wrt": wrt, "dtype": dtype, "pairs": len(a), "max_abs_diff": float((a - b).abs().max()),
                     "max_rel_diff": float(rel.max()) if len(rel) else 0.0, "zeros_apart": int(((a > 0) != (b > 0)).sum())})
    return pd.DataFrame(rows, columns=out_columns)


AGREE = 1e-6  # relative: scratch and cudnn closer than this are one curve on any figure
GOOD_FIT = 0.95  # r2 below this: the decay is not one rate per step


def summary(rates: pd.DataFrame, agreement: pd.DataFrame) -> pd.DataFrame:
    """The numbers the study exists for: the hidden probe's factor per step (else the first probe's), its
    r2 and vanishing distance, one row per setting; impls merged where they agree."""
    main = ("hidden", "h") if ((rates["probe"] == "hidden") & (rates["wrt"] == "h")).any() else tuple(rates[["probe", "wrt"]].iloc[0])
    out = rates[(rates["probe"] == main[0]) & (rates["wrt"] == main[1])].copy()
    agree = agreement[(agreement["probe"] == main[0]) & (agreement["wrt"] == main[1])]
    if len(agree) and agree["max_rel_diff"].max() < AGREE:
        twinned = set(out.loc[out["impl"] == "cudnn", "cell"])
        out = out[out["impl"] == "scratch"]
        out["impl"] = [("scratch = cudnn" if c in twinned else "scratch") for c in out["cell"]]
    out["fit"] = np.where(out["r2"] >= GOOD_FIT, "one rate", "not one rate")
    return out.reset_index(drop=True)


def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    results = tables["results"]
    by = [c for c in columns if c != "seed" and c in results.columns] + ["wrt"]  # seeds pooled by the median
    rates = decay_rates(results, by)
    agreement = impl_agreement(results, columns)
    return {"decay_rates": rates, "impl_agreement": agreement, "summary": summary(rates, agreement)}
