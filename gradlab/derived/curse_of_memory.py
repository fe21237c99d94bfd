"""Derived tables of the curse of memory: the sensitivity at the last step per setting and parameter, the closed form
beside the measurement; recomputed from the stored rows at every assemble."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import theory

CURVE_RADII = 1 - np.geomspace(0.5, 5e-4, 80)  # the closed form's line: memory from about 1.4 to 2,000 steps


def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    """sensitivity: per setting (seeds pooled) and wrt, at the last step: the measured sensitivity (mean over seeds) and
    its standard error, the closed form at that step and at stationarity, their ratio and the gap in standard errors,
    the state's power and its closed form, and the memory measured (steps)."""
    res = tables["results"]
    by = [c for c in columns if c in res and c not in ("seed", "point")] + ["wrt"]
    last = res[res["t"] == res.groupby(by, dropna=False)["t"].transform("max")]
    g = last.groupby(by, dropna=False, sort=False)
    out = g[["sensitivity", "sensitivity_closed_form", "sensitivity_stationary", "state_power", "state_power_closed_form", "memory_steps"]].mean()
    out["sensitivity_se"] = g["sensitivity_se"].apply(lambda se: float(np.sqrt((se**2).sum())) / len(se))  # of the mean over seeds
    out["seeds"] = g.size()
    out["t"] = g["t"].first()
    out["memory_setting"] = g["memory_setting"].first()
    out["closed_over_measured"] = out["sensitivity_closed_form"] / out["sensitivity"]
    out["z"] = (out["sensitivity"] - out["sensitivity_closed_form"]) / out["sensitivity_se"]
    first = ["sensitivity", "sensitivity_se", "sensitivity_closed_form", "closed_over_measured", "z", "sensitivity_stationary", "memory_steps",
             "state_power", "state_power_closed_form", "memory_setting", "t", "seeds"]
    derived = {"sensitivity": out[first].reset_index()}
    curves = closed_form_curves(res)
    if len(curves):
        derived["closed_form"] = curves
    return derived


def closed_form_curves(res: pd.DataFrame) -> pd.DataFrame:
    """The diagonal recurrence's closed forms on a fine grid of radii, for every variant, length and input scale the run
    measured: the sensitivity to |lambda| and to nu_log at the run's last step and at stationarity, against the memory
    the radius gives (-1 / ln |lambda|, the distance at which |lambda|^k has fallen by e)."""
    diag = res[res["cell"] == "diagonal"] if "cell" in res else res.iloc[:0]
    rows = []
    for variant, T, std in diag[["variant", "seq_len", "input_std"]].drop_duplicates().itertuples(index=False):
        for r in CURVE_RADII:
            for wrt in ("|lambda|", "nu_log"):
                rows.append({"cell": "diagonal", "variant": variant, "seq_len": T, "input_std": std, "wrt": wrt, "radius": r,
                             "memory_steps": -1 / np.log(r),
                             "sensitivity_closed_form": float(theory.curse_closed_form(wrt, variant, r, int(T), 0.0, std**2)[-1]),
                             "sensitivity_stationary": theory.curse_stationary(wrt, variant, r, 0.0, std**2)})
    return pd.DataFrame(rows)
