"""Derived tables of gradient decay: fitted rates per setting, scratch against cudnn, the summary, spectrum
quantiles and mean-field theory beside them; recomputed from the stored rows at every assemble."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import theory

FLOOR_RATIO = 1e-6  # "vanished": the norm falls below this fraction of its value at distance 0

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
        if "closed_form" in g and g["closed_form"].notna().any():  # the exact curve beside the measured one
            row |= closed_form_fit(g, ok)
        ref = ok.iloc[0] if len(ok) else np.nan  # the nearest positive norm (an exact zero, say a gradient with no path, is no reference)
        below = curve[(curve.index > ok.index[0]) & (curve < FLOOR_RATIO * ref)] if len(ok) else curve.iloc[:0]
        row |= {"fit_points": len(ok), "vanish_distance": float(below.index[0]) if len(below) else np.nan, "max_distance": float(curve.index.max())}
        rows.append(row)
    out = pd.DataFrame(rows)
    out["one_rate"] = (out["r2"] >= GOOD_FIT) | (out["resid_rms"] < FLAT_FIT)
    return out


def closed_form_fit(g: pd.DataFrame, measured: pd.Series) -> dict:
    """The closed form's own factor per step (fitted as the measured curve's) and its largest relative gap to the
    measured norms, where both are above the dtype's underflow floor."""
    exact = g.groupby("distance")["closed_form"].median().sort_index()
    ok = exact[(exact > 0) & np.isfinite(exact)]
    factor = 10 ** np.polyfit(ok.index.to_numpy(float), np.log10(ok.to_numpy(float)), 1)[0] if len(ok) >= 2 else np.nan
    floor = UNDERFLOW.get(str(g["dtype"].iloc[0]), 0.0) if "dtype" in g else 0.0
    pairs = g[(g["closed_form"] > floor) & (g["grad_norm"] > floor)]
    gap = ((pairs["grad_norm"] - pairs["closed_form"]).abs() / pairs["closed_form"]).max() if len(pairs) else np.nan
    return {"closed_form_factor": factor, "closed_form_max_rel": float(gap)}


UNDERFLOW = {"float32": 1e-30, "float64": 1e-290, "bfloat16": 1e-30, "float16": 1e-4}  # norms below: at the dtype's underflow floor


def impl_agreement(results: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per curve (every setting but the impl, the seed and t) and probe, wrt and dtype: how far scratch and its twin (cudnn; scan for the modern cells)
    are apart on the same norms. The relative difference is taken where both norms are above 0 (max_rel_diff),
    and apart where both are of ordinary size, above the dtype's underflow floor (median_rel_ordinary,
    max_rel_ordinary: a gap only at the floor is float arithmetic running out, not two functions); a norm that
    underflowed to 0 in one impl only is counted apart (zeros_apart)."""
    curve = [c for c in columns if c not in ("impl", "point", "seed", "dtype", "probe", "wrt", "t") and c in results and results[c].map(repr).nunique() > 1]
    out_columns = ["probe", "wrt", "dtype", *curve, "pairs", "max_abs_diff", "max_rel_diff", "median_rel_ordinary", "max_rel_ordinary", "zeros_apart"]
    if results["impl"].nunique() < 2:
        return pd.DataFrame(columns=out_columns)
    keys = [c for c in columns if c not in ("impl", "point") and c in results] + ["wrt", "t"]
    key = pd.Series(["|".join(parts) for parts in zip(*(results[c].map(repr) for c in keys))], index=results.index)  # None, NaN match as text
    rows = []
    for group, idx in results.groupby(["probe", "wrt", "dtype", *curve], sort=False, dropna=False).groups.items():
        g = results.loc[idx]
        twin = g["impl"] != "scratch"  # cudnn, or scan: each cell has one twin, and the key names the cell
        a = g[g["impl"] == "scratch"].set_index(key[idx][g["impl"] == "scratch"])["grad_norm"]
        b = g[twin].set_index(key[idx][twin])["grad_norm"]
        a, b = a.align(b, join="inner")
        if not len(a):
            continue
        both = (a > 0) & (b > 0)
        rel = ((a - b).abs() / np.maximum(a.abs(), b.abs()))
        floor = UNDERFLOW.get(str(group[2]), 0.0)
        ordinary = rel[(a > floor) & (b > floor)]
        rows.append(dict(zip(["probe", "wrt", "dtype", *curve], group)) | {
            "pairs": len(a), "max_abs_diff": float((a - b).abs().max()), "max_rel_diff": float(rel[both].max()) if both.any() else 0.0,
            "median_rel_ordinary": float(ordinary.median()) if len(ordinary) else float("nan"),
            "max_rel_ordinary": float(ordinary.max()) if len(ordinary) else float("nan"), "zeros_apart": int(((a > 0) != (b > 0)).sum())})
    return pd.DataFrame(rows, columns=out_columns)


AGREE = 1e-6  # relative: scratch and its twin (cudnn, or scan) closer than this are one curve on any figure
GOOD_FIT = 0.95  # r2 below this: the decay is not one rate per step ...
FLAT_FIT = 0.05  # ... unless every point is this close to the line in log10 (12%): a flat curve has no slope to explain


def summary(rates: pd.DataFrame, agreement: pd.DataFrame) -> pd.DataFrame:
    """The numbers the study exists for: the hidden probe's factor per step (else the first probe's), its
    r2 and vanishing distance, one row per setting; impls merged where they agree."""
    main = ("hidden", "h") if ((rates["probe"] == "hidden") & (rates["wrt"] == "h")).any() else tuple(rates[["probe", "wrt"]].iloc[0])
    out = rates[(rates["probe"] == main[0]) & (rates["wrt"] == main[1])].copy()
    agree = agreement[(agreement["probe"] == main[0]) & (agreement["wrt"] == main[1])]
    if len(agree) and agree["max_rel_diff"].max() < AGREE:
        twinned = dict(out.loc[out["impl"] != "scratch", ["cell", "impl"]].drop_duplicates("cell").itertuples(index=False))
        out = out[out["impl"] == "scratch"]
        out["impl"] = [(f"scratch = {twinned[c]}" if c in twinned else "scratch") for c in out["cell"]]
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
    combos = [c for c in rates[keys].drop_duplicates().to_dict("records") if c["init"] != "critical" and c["cell"] not in theory.MODERN]
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
