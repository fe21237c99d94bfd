"""How BPTT gradients decay or explode with distance in time, per cell, impl, init and init_scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import theory
from ..cells import check, check_init_scale, check_seed, create, family
from ..names import DTYPES, INITS, PROBES, lookup
from ..probes import hidden_grad_norms, independent_step_norms, input_grad_norms, jacobian_spectra
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
    "sequence": "spectrum: which of the jacobian_batch sequences", "rank": "spectrum: the singular value's rank, 0 the largest",
    "singular_value": "spectrum: a singular value of ds_{T-1}/ds_t",
    "q05": "5% quantile of the singular values", "q25": "25% quantile", "q50": "median singular value", "q75": "75% quantile",
    "q95": "95% quantile", "rms": "root mean square singular value (what mean-field theory predicts: factor^distance)",
    "largest": "the largest singular value (the spectral norm)",
    "predicted_factor": "mean-field prediction of the factor per step (gradlab.theory; docs/mean_field.md)",
    "factor_over_predicted": "measured factor_per_step / predicted_factor",
    "edge_init_scale": "the init_scale where the predicted factor is 1 (the edge of chaos); empty: none in (0, 40]",
    "resid_rms": "RMS distance of the curve from the fitted line, in log10 units",
    "one_rate": "the fit is good (r2 >= 0.95, or resid_rms < 0.05: a flat curve has no slope for r2 to explain)",
    "fit": "one rate (r2 >= 0.95, or resid_rms < 0.05 for a flat curve) or not one rate (the curve bends: read the figure, not the number)",
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
        check_init_scale(self.init_scale)
        check_seed(self.seed)
        if self.init == "critical" and self.init_scale is not None:
            raise ValueError("init 'critical' chooses the recurrent scale itself: set init_scale=none with it.")
        if self.input_std < 0:
            raise ValueError(f"input_std must be >= 0, got {self.input_std}.")
        for name in ("seq_len", "hidden_size", "input_size", "batch_size", "jacobian_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.probe == "jacobian" and self.jacobian_batch > self.batch_size:
            raise ValueError(f"jacobian_batch ({self.jacobian_batch}) must be at most batch_size ({self.batch_size}): it takes that many of the batch's sequences.")


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    """One backward pass (hidden, input) or D batched ones (jacobian) on a fresh cell; rows per (t, wrt)."""
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    cell = create(
        cfg.cell, cfg.impl, cfg.input_size, cfg.hidden_size, variant=cfg.variant, init=cfg.init,
        init_scale=cfg.init_scale, forget_bias=cfg.forget_bias, seed=cfg.seed, dtype=dtype, device=device, input_std=cfg.input_std,
    )
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # data drawn apart from the weights
    x = (torch.randn(cfg.seq_len, cfg.batch_size, cfg.input_size, generator=gen, dtype=torch.float64) * cfg.input_std).to(device, dtype)  # (T, B, I)
    direction = torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen, dtype=torch.float64)
    direction = (direction / direction.norm(dim=1, keepdim=True)).to(device, dtype)  # (B, H), unit rows: ||dL/dh_{T-1}|| = 1
    if cfg.probe == "hidden":
        norms = hidden_grad_norms(cell, x, direction)
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
        for t, value in enumerate(values.cpu().tolist()):
            rows.append({"wrt": wrt, "t": t, "distance": T - 1 - t, "grad_norm": value, "backend": backend})
    tables = {"results": rows}
    if cfg.probe == "jacobian":
        tables["spectrum"] = [{"t": t, "distance": T - 1 - t, "sequence": b, "rank": k, "singular_value": v}
                              for t, per_seq in enumerate(spectra.tolist()) for b, values in enumerate(per_seq) for k, v in enumerate(values)]
    return tables


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
            row |= {"log10_rate_per_step": slope, "factor_per_step": 10**slope, "r2": 1 - (resid**2).sum() / ss if ss > 0 else 1.0,
                    "resid_rms": float(np.sqrt((resid**2).mean()))}
        else:
            row |= {"log10_rate_per_step": np.nan, "factor_per_step": np.nan, "r2": np.nan, "resid_rms": np.nan}
        ref = ok.iloc[0] if len(ok) else np.nan  # the nearest positive norm (dL/dc at distance 0 is exactly 0)
        below = curve[(curve.index > ok.index[0]) & (curve < FLOOR_RATIO * ref)] if len(ok) else curve.iloc[:0]
        row |= {"fit_points": len(ok), "vanish_distance": float(below.index[0]) if len(below) else np.nan, "max_distance": float(curve.index.max())}
        rows.append(row)
    out = pd.DataFrame(rows)
    out["one_rate"] = (out["r2"] >= GOOD_FIT) | (out["resid_rms"] < FLAT_FIT)
    return out


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
GOOD_FIT = 0.95  # r2 below this: the decay is not one rate per step ...
FLAT_FIT = 0.05  # ... unless every point is this close to the line in log10 (12%): a flat curve has no slope to explain


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
    out["fit"] = np.where(out["one_rate"], "one rate", "not one rate")
    return out.reset_index(drop=True)


def spectrum_quantiles(spectrum: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per setting and distance: quantiles of the Jacobian's singular values (over sequences, seeds and
    ranks), their RMS (the mean-field quantity: sqrt of the mean squared singular value) and the largest."""
    by = [c for c in columns if c in spectrum and c not in ("seed", "point")] + ["distance"]
    g = spectrum.groupby(by, dropna=False, sort=True)["singular_value"]
    out = g.quantile([0.05, 0.25, 0.5, 0.75, 0.95]).unstack()
    out.columns = ["q05", "q25", "q50", "q75", "q95"]
    out["rms"] = g.apply(lambda v: float(np.sqrt((v**2).mean())))
    out["largest"] = g.max()
    return out.reset_index()


THEORY_KEYS = ("cell", "variant", "init", "forget_bias", "input_size", "hidden_size", "input_std")  # what a prediction depends on
THEORY_SCALES = np.round(np.linspace(0.05, 5.0, 100), 4)  # the init_scale grid the theory line is drawn on


def _predicted(row) -> float:
    """The mean-field factor per step for a row's settings (NaN for the GRU's reset_before: not derived)."""
    if row.get("variant") == "reset_before":
        return float("nan")
    scale = None if pd.isna(row.get("init_scale")) else float(row["init_scale"])
    return theory.predict(row["cell"], row["init"], scale, float(row["forget_bias"]), int(row["input_size"]), int(row["hidden_size"]),
                          float(row["input_std"]))


def theory_tables(rates: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The predicted factor on a grid of init_scale for every combination the run measured, and the
    init_scale where it crosses 1 (the edge of chaos); not for init 'critical', which picks its own scale."""
    keys = [k for k in THEORY_KEYS if k in rates]
    combos = [c for c in rates[keys].drop_duplicates().to_dict("records") if c["init"] != "critical"]
    line = [c | {"init_scale": s, "predicted_factor": _predicted(c | {"init_scale": s})} for c in combos for s in THEORY_SCALES]
    edge = [c | {"edge_init_scale": theory.edge_init_scale(c["cell"], c["init"], float(c["forget_bias"]), int(c["input_size"]),
                                                           int(c["hidden_size"]), float(c["input_std"]))} for c in combos
            if c.get("variant") != "reset_before"]
    return {"theory": pd.DataFrame(line), "edge_of_chaos": pd.DataFrame(edge)}


def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    results = tables["results"]
    by = [c for c in columns if c != "seed" and c in results.columns] + ["wrt"]  # seeds pooled by the median
    rates = decay_rates(results, by)
    if set(THEORY_KEYS) <= set(rates.columns):
        predicted: dict[str, float] = {}  # one prediction per setting, shared by its probes and impls
        key = lambda row: repr([row.get(k) for k in (*THEORY_KEYS, "init_scale")])  # noqa: E731  (NaN == NaN as text)
        for row in rates.to_dict("records"):
            predicted.setdefault(key(row), _predicted(row))
        rates["predicted_factor"] = [predicted[key(r)] for r in rates.to_dict("records")]
        rates["factor_over_predicted"] = rates["factor_per_step"] / rates["predicted_factor"]
    agreement = impl_agreement(results, columns)
    derived = {"decay_rates": rates, "impl_agreement": agreement, "summary": summary(rates, agreement)}
    if "spectrum" in tables and len(tables["spectrum"]):
        derived["spectrum_quantiles"] = spectrum_quantiles(tables["spectrum"], columns)
    if "predicted_factor" in rates:
        derived |= theory_tables(rates)
    return derived
