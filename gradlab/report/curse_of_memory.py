"""The curse-of-memory report: the state's sensitivity to the recurrent parameters against the memory each setting gives,
measured beside the closed forms; then the finite-t curves of the diagonal recurrence against its closed form."""

from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from . import figures
from .page import Section
from .views import Tables, fixed_settings, label_models, model_order

PANELS = (("|lambda|", "the eigenvalue's modulus |lambda|"), ("nu_log", "nu_log (|lambda| = exp(-exp(nu)))"),
          ("theta_log", "theta_log (the phase exp(theta))"), ("all recurrent", "all the recurrent parameters"))
CLOSED = ("diagonal",)  # models whose closed form is drawn as a line (the lru's: a mark at each of its points, from its realised B)


def log_x(ax: plt.Axes) -> None:
    """A log x axis labelled in plain numbers that never run into each other: 1, 2, 5 x 10^k over up to two decades,
    powers of ten alone over more; no minor labels. Call it once the limits are set."""
    lo, hi = sorted(ax.get_xlim())
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def colours_of(models: list[str]) -> dict:
    """The classic cells' own colours (figures.model_colour: the same in every study), distinct others for the rest."""
    spare = iter(figures.palette([m for m in models if figures.model_colour(m) is None]).values())
    return {m: figures.model_colour(m) or next(spare) for m in models}


def _models(df: pd.DataFrame) -> pd.DataFrame:
    return label_models(df.drop(columns=[c for c in ("forget_bias",) if c in df]))


def sensitivity_against_memory(summary: pd.DataFrame, curves: pd.DataFrame | None, title: str, order: list[str]) -> plt.Figure:
    """One panel per parameter: the sensitivity at the last step (measured: markers joined by a thin line) against the memory
    measured (steps), log-log, one colour per model; the diagonal recurrence's closed form as a line of its colour (solid: at
    the run's last step; dotted: at stationarity); the lru's closed form as a black + at each of its points. A memory longer
    than the sequence is drawn at the sequence's length as a >."""
    panels = [(w, name) for w, name in PANELS if (summary["wrt"] == w).any()]
    fig, axes = figures.panel_grid(len(panels), col_wrap=2, width=4.4, height=3.1)
    colours = colours_of(order)
    handles: dict = {}
    for ax, (wrt, name) in zip(axes.flat, panels):
        g = summary[summary["wrt"] == wrt]
        for model in [m for m in order if m in set(g["model"])]:
            m = g[g["model"] == model].sort_values("memory")
            known = m[m["memory_steps"].notna()]
            colour = colours[model]
            ax.plot(known["memory_steps"], known["sensitivity"], "o-", color=colour, ms=4, lw=0.8, label=model)
            handles.setdefault(model, plt.Line2D([], [], color=colour, marker="o", ms=4, lw=0.8))
            beyond = m[m["memory_steps"].isna()]
            if len(beyond):
                ax.plot(beyond["seq_len"], beyond["sensitivity"], ">", color=colour, ms=6, mec="black", mew=0.5)
                handles.setdefault("memory beyond the sequence (drawn at its length)", plt.Line2D([], [], marker=">", ls="", color="0.5", mec="black", mew=0.5))
            if curves is not None and len(curves) and model.split(" ")[0] in CLOSED:
                c = curves[(curves["wrt"] == wrt) & (curves["variant"] == m["variant"].iloc[0])].sort_values("memory_steps")
                if len(c):
                    ax.plot(c["memory_steps"], c["sensitivity_closed_form"], "-", color=colour, lw=1.8, alpha=0.55)
                    ax.plot(c["memory_steps"], c["sensitivity_stationary"], ":", color=colour, lw=1.2)
                    handles.setdefault("closed form at the last step (line)", plt.Line2D([], [], color="0.4", lw=1.8, alpha=0.55))
                    handles.setdefault("closed form at stationarity (dots)", plt.Line2D([], [], color="0.4", ls=":", lw=1.2))
            elif m["sensitivity_closed_form"].notna().any():
                ax.plot(known["memory_steps"], known["sensitivity_closed_form"], "+", color="black", ms=7, mew=1.2)
                handles.setdefault("closed form of the lru, from its realised B (+)", plt.Line2D([], [], marker="+", ls="", color="black", ms=7, mew=1.2))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("memory (steps for ||ds_T/ds_t|| to fall by e)")
        figures.powers_of_ten_only(ax)
        log_x(ax)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("E||ds_t/dtheta||^2 per unit")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    figures.legend_below(fig, handles)
    return fig


def finite_t(rows: pd.DataFrame, title: str) -> plt.Figure:
    """The diagonal recurrence's sensitivity to |lambda| against the step t (log-log), one panel per variant, one colour per
    radius: measured (markers) and its closed form at every step (line)."""
    variants = list(dict.fromkeys(rows["variant"]))
    fig, axes = figures.panel_grid(len(variants), col_wrap=2, width=4.4, height=3.0)
    radii = sorted(rows["memory"].unique())
    colours = figures.palette(radii, ordered_values=True)
    for ax, variant in zip(axes.flat, variants):
        for r in radii:
            g = rows[(rows["variant"] == variant) & (rows["memory"] == r) & (rows["t"] > 0)].sort_values("t")
            ax.plot(g["t"], g["sensitivity_closed_form"], "-", color=colours[r], lw=1.2)
            ax.plot(g["t"], g["sensitivity"], "o", color=colours[r], ms=3, label=f"|lambda| {r:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"diagonal ({variant})", fontsize=9)
        ax.set_xlabel("step t")
        figures.powers_of_ten_only(ax)
        log_x(ax)
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("E(dh_t/d|lambda|)^2 per unit")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    handles = {f"|lambda| {r:g}": plt.Line2D([], [], color=colours[r], marker="o", ms=3, lw=1.2) for r in radii}
    handles["measured (o), closed form (line)"] = plt.Line2D([], [], color="0.4", marker="o", ms=3, lw=1.2)
    figures.legend_below(fig, handles)
    return fig


def _slope(g: pd.DataFrame, y: str = "sensitivity") -> float:
    """The log-log slope of y against the memory measured, over the points whose memory is known (NaN with fewer than 2)."""
    g = g[g["memory_steps"].notna() & (g[y] > 0)]
    if len(g) < 2:
        return float("nan")
    return float(np.polyfit(np.log(g["memory_steps"]), np.log(g[y]), 1)[0])


def view(t: Tables, manifest: dict) -> Section:
    res, summ, curves = t["results"], t.get("sensitivity"), t.get("closed_form")
    settings = manifest.get("columns", [])
    sec = Section()
    sec.notes.append("sensitivity: E||ds_t/dtheta||^2 per unit of the state at the last step, the squared derivatives of every number the "
                     "state hands on (h; h and c for the LSTM; the real and imaginary parts of each lru mode) with respect to every entry of "
                     "theta, summed, exactly (forward-mode through the steps), mean over the sequences of white noise. memory: the distance at "
                     "which a random direction's gradient through the whole state, ||dL/ds_t||, has fallen by e (-1 / ln |lambda| for a radius).")
    if summ is None or not len(summ):
        return sec
    s = _models(summ)
    order = model_order(s["model"])
    diag = s[s["cell"] == "diagonal"]
    said = []
    for variant in ("plain", "normalised"):
        for wrt in ("|lambda|", "nu_log"):
            g = diag[(diag["variant"] == variant) & (diag["wrt"] == wrt)].sort_values("memory")
            if len(g) >= 2:
                said.append(f"{variant} to {wrt}: {g['sensitivity'].iloc[0]:.3g} at memory {g['memory_steps'].iloc[0]:.3g} to "
                            f"{g['sensitivity'].iloc[-1]:.3g} at {g['memory_steps'].iloc[-1]:.3g} steps (slope {_slope(g):.2f} on log-log)")
    if said:
        sec.key_points.append("The curse of memory, measured on the diagonal linear recurrence h_t = lambda h_{t-1} + gamma x_t: " + "; ".join(said)
                              + ". Plain, the sensitivity to |lambda| grows as memory^3 ((1 + q) / (1 - q)^3, q = |lambda|^2); the "
                              "normalisation gamma = sqrt(1 - |lambda|^2) takes it to memory^2 (1 / (1 - q)^2), and the exponential "
                              "parametrisation |lambda| = exp(-exp(nu)) with it to a constant, 1/4 (docs/curse_of_memory.md).")
    closed = s[s["sensitivity_closed_form"].notna()]
    if len(closed):
        worst = closed.loc[closed["z"].abs().idxmax()]
        sec.key_points.append(f"Closed form against measurement (the diagonal recurrence and the lru, {len(closed)} settings): closed / measured "
                              f"{closed['closed_over_measured'].min():.3f} to {closed['closed_over_measured'].max():.3f}, at most "
                              f"{abs(worst['z']):.1f} standard errors apart ({worst['model']}, {worst['wrt']}, |lambda| {worst['memory']:g}); "
                              "the measurement is a mean over the sequences, the closed form its expectation.")
    lru = s[(s["cell"] == "lru") & s["wrt"].isin(["nu_log", "theta_log"])]
    if len(lru):
        words = []
        for (variant, wrt), g in lru.groupby(["variant", "wrt"], sort=True):
            g = g.sort_values("memory")
            words.append(f"{variant} to {wrt} {g['sensitivity'].iloc[0]:.3g} to {g['sensitivity'].iloc[-1]:.3g} (slope {_slope(g):.2f})")
        sec.key_points.append("The lru, over the same radii: " + "; ".join(words) + ". Its normalisation tames nu_log but not theta_log: the phase's "
                              "sensitivity is gamma^2 phase^2 q (1 + q) / (1 - q)^3, memory^2 however the input is scaled.")
    gated = s[~s["cell"].isin(["diagonal", "lru"]) & (s["wrt"] == "all recurrent")]
    if len(gated):
        words = []
        for model in [m for m in order if m in set(gated["model"])]:
            g = gated[gated["model"] == model].sort_values("memory")
            longest = g.iloc[-1]
            span = (f"memory {g['memory_steps'].min():.3g} to {g['memory_steps'].max():.3g} steps" if g["memory_steps"].notna().any()
                    else "memory beyond the sequence")
            if g["memory_steps"].isna().any() and g["memory_steps"].notna().any():
                span += f" and beyond the sequence at {g['memory_setting'].iloc[0]} {g.loc[g['memory_steps'].isna(), 'memory'].min():g}"
            words.append(f"{model} ({g['memory_setting'].iloc[0]} {g['memory'].min():g} to {g['memory'].max():g}: {span}): "
                         f"{g['sensitivity'].iloc[0]:.3g} to {longest['sensitivity']:.3g}")
        sec.key_points.append("Where the other cells sit (all their recurrent parameters together: the classic cells' W_h*, the min cells' "
                              "retention gate W_x*, b_*): " + "; ".join(words) + ".")
    shown = s[s["wrt"].isin([w for w, _ in PANELS])]
    keep = ["model", "wrt", "memory_setting", "memory", "memory_steps", "sensitivity", "sensitivity_se", "sensitivity_closed_form",
            "closed_over_measured", "sensitivity_stationary", "state_power", "state_power_closed_form"]
    table = shown.assign(order=shown["model"].map(order.index)).sort_values(["order", "wrt", "memory"], kind="stable")[[c for c in keep if c in shown]]
    sec.summaries.append(("The state's sensitivity at the last step, per unit (closed form beside the measurement where one exists)", table))
    fixed = fixed_settings(res, settings, {"cell", "variant", "memory", "seed", "point", "hidden_size", "input_size", "init"})
    sec.figures.append(("sensitivity", "The state's sensitivity to the recurrent parameters at the last step against the memory each setting "
                        "gives (log-log), one panel per parameter, one colour per model: measured (markers), the diagonal recurrence's closed "
                        "form (its colour's line at the last step, dots at stationarity), the lru's from its realised B (+). Plain, the "
                        "sensitivity to |lambda| explodes with memory; normalised, less; through nu_log, normalised, it stays flat.",
                        partial(sensitivity_against_memory, s, curves, figures.fixed_title("the curse of memory", fixed), order)))
    steps = res[(res["cell"] == "diagonal") & (res["wrt"] == "|lambda|")] if "cell" in res else res.iloc[:0]
    if len(steps):
        radii = sorted(steps["memory"].unique())
        pick = radii[:: max(1, len(radii) // 4)][:4] + ([radii[-1]] if radii[-1] not in radii[:: max(1, len(radii) // 4)][:4] else [])
        sec.figures.append(("finite-t", "The diagonal recurrence's sensitivity to |lambda| at every recorded step t, measured (o) and its closed "
                            "form at that step (line): it grows until t passes the memory, then settles at its stationary value.",
                            partial(finite_t, steps[steps["memory"].isin(pick)], figures.fixed_title("finite t", fixed))))
    every = s.assign(order=s["model"].map(order.index)).sort_values(["order", "wrt", "memory"], kind="stable")
    sec.folded.append(("Every parameter of every setting", every[[c for c in keep + ["z", "t", "seeds"] if c in every]]))
    return sec
