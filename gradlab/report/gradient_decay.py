"""The gradient-decay report: the factor per step per cell and init_scale first, then the curves, once."""

from __future__ import annotations

from functools import partial

import pandas as pd

from . import figures
from .page import Section
from .views import Tables, fixed_settings, group_by_others, label_models, model_order

NAMES = {("hidden", "h"): "||dL/dh_t||", ("hidden", "c"): "||dL/dc_t|| (cell state)", ("input", "x"): "||dL/dx_t||",
         ("jacobian", "state"): "||ds_T-1/ds_t||_2"}


def one_state(df: pd.DataFrame) -> pd.DataFrame:
    """The Jacobian probe's wrt names each cell's state (h, or h,c): one quantity, 'state', for drawing."""
    return df.assign(wrt=df["wrt"].where(df["probe"] != "jacobian", "state"))
DRAWN = {"cell", "impl", "init_scale", "forget_bias", "seed", "probe", "point", "variant"}
AGREE = 1e-6  # the measure's threshold for 'one curve' (measures.gradient_decay.AGREE)


def quantity(probe: str, wrt: str) -> str:
    return NAMES.get((probe, wrt), f"||ds_T-1/ds_t||_2, s = ({wrt})" if probe == "jacobian" else f"{probe} {wrt}")


def view(t: Tables, manifest: dict) -> Section:
    res, rates, summ, agree = t["results"], t.get("decay_rates"), t.get("summary"), t.get("impl_agreement")
    settings = manifest.get("columns", [])
    sec = Section()
    one_curve = agree is not None and len(agree) and agree["max_rel_diff"].max() < AGREE
    sec.key_points.append(
        "Each number is the factor by which the gradient norm shrinks (< 1) or grows (> 1) per step of distance from the "
        "loss, fitted on a log axis. The loss sits on the last step only, so every gradient is the long-range part; a norm "
        "is the RMS over the batch of the per-sequence L2 norm.")
    if agree is not None and len(agree):
        worst = agree.loc[agree["max_rel_diff"].idxmax()]
        if one_curve:
            sec.key_points.append(
                f"scratch and cudnn agree: max |scratch - cudnn| / norm = {worst['max_rel_diff']:.1e} over {int(agree['pairs'].sum()):,} "
                "norms measured by both, so each curve is drawn once (scratch) and each rate given once.")
        else:
            per_dtype = "; ".join(f"{d}: up to {g['max_rel_diff'].max():.1e}" for d, g in agree.groupby("dtype"))
            sec.key_points.append(f"scratch and cudnn differ (relative, where both norms are above 0) {per_dtype}: both are shown. "
                                  "In float32 on a GPU, cuDNN's RNNs use TF32 by default (the manifest records it).")
    if summ is not None and len(summ):
        poor = summ[summ["fit"] != "one rate"]
        if len(poor):
            which = "; ".join(sorted(set(label_models(poor)["model"] + ", init_scale " + poor["init_scale"].map(lambda v: f"{v:g}"))))
            sec.key_points.append(f"{len(poor)} curves are not one rate (r2 < 0.95), marked ~ below: {which}. Read their curves, not the number.")
        split = [c for c in settings if c in summ and c not in DRAWN and c != "point" and summ[c].map(repr).nunique() > 1]
        sec.summaries.append(("Factor per step of " + quantity(*summ[["probe", "wrt"]].iloc[0]), summary_table(summ, split)))
    shown = one_state(res[res["impl"] == "scratch"] if one_curve else res)
    for (probe, wrt), g in shown.groupby(["probe", "wrt"], sort=False):
        g = label_models(g)
        for extra, gg in group_by_others(g, settings, DRAWN | {"model"}):
            name = quantity(probe, wrt)
            title = figures.fixed_title(f"{name} against distance from the loss{extra}", fixed_settings(gg, settings, DRAWN - {"seed"}))
            sec.figures.append((
                f"decay-{probe}-{wrt.replace(',', '')}{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                f"{name} (RMS over the batch of per-sequence norms; median over seeds) against distance from the loss, one panel per "
                "model, one colour per init_scale (the recurrent spectral norm). Exact zeros are marked x at the floor of the log axis"
                + (" (dL/dc at distance 0: the loss reads h only)" if wrt == "c" else "") + "."
                + (" s is the full state: h, or (h, c) for the LSTM; the norm is the spectral norm." if probe == "jacobian" else "")
                + (" scratch and cudnn coincide; scratch is drawn." if one_curve else " Line style: impl."),
                partial(figures.panels_of_lines, gg, "distance", "grad_norm", panel="model", hue="init_scale", title=title,
                                        xlabel="distance from the loss (steps)", ylabel=name, style=None if one_curve else "impl",
                                        panel_order=model_order(gg["model"])),
            ))
    if rates is not None and len(rates):
        r = label_models(one_state(rates[rates["impl"] == "scratch"] if one_curve else rates))
        r = r.assign(quantity=[quantity(p, w) for p, w in zip(r["probe"], r["wrt"])])
        for extra, rr in group_by_others(r, settings, DRAWN | {"model", "quantity", "wrt"}):
            sec.figures.append((
                f"rates{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                "Fitted factor per step for every probe on one colour scale (white: 1, norms kept; blue: decay; red: growth). "
                "~ marks a poor fit (r2 < 0.95).",
                partial(figures.heatmaps, rr, "model", "init_scale", "factor_per_step", panel="quantity", weak="r2", row_order=model_order(rr["model"]),
                                 title=figures.fixed_title(f"factor per step{extra}", fixed_settings(rr, settings, DRAWN - {"seed"} | {"wrt"}))),
            ))
        keep = [c for c in ["model", "impl", "init_scale", "probe", "wrt", "factor_per_step", "r2", "vanish_distance",
                            "fit_points", "max_distance"] + [c for c in settings if c not in DRAWN] if c in r]
        every = r.assign(order=r["model"].map(model_order(r["model"]).index)).sort_values(["order", "init_scale", "probe"], kind="stable")
        sec.folded.append(("Every fit" + (" (scratch; cudnn's are the same)" if one_curve else ""), every[list(dict.fromkeys(keep))]))
    return sec


def summary_table(summ: pd.DataFrame, split: list[str] = ()) -> pd.DataFrame:
    """model (and the other settings that vary) x init_scale, each entry 'factor (r2, vanishes at d)'; '~'
    before a poor fit."""
    s = label_models(summ)

    def entry(row) -> str:
        mark = "" if row["fit"] == "one rate" else "~"
        gone = "" if pd.isna(row["vanish_distance"]) else f", vanishes at {row['vanish_distance']:.0f}"
        return f"{mark}{row['factor_per_step']:.3f} (r2 {row['r2']:.3f}{gone})"

    s = s.assign(entry=s.apply(entry, axis=1), init_scale=s["init_scale"].map(lambda v: f"init_scale {v:g}"))
    wide = s.pivot_table(index=["model", "impl", *split], columns="init_scale", values="entry", aggfunc="first")
    order = model_order(wide.index.get_level_values(0))
    wide = wide.reindex(sorted(wide.index, key=lambda k: (order.index(k[0]), *map(str, k[1:]))))
    wide.columns.name = None
    return wide.reset_index()
