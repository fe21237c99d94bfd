"""The gradient-decay report: the factor per step per cell and init_scale first, then the curves, once."""

from __future__ import annotations

import numbers
from functools import partial

import pandas as pd

from . import figures
from .page import Section
from .views import Tables, fixed_settings, group_by_others, label_models, model_order

NAMES = {("hidden", "h"): "||dL/dh_t||", ("hidden", "c"): "||dL/dc_t|| (cell state, total)", ("input", "x"): "||dL/dx_t||",
         ("jacobian", "state"): "||ds_T-1/ds_t||_2", ("independent", "state"): "fresh random gradient, carried step by step"}


def one_state(df: pd.DataFrame) -> pd.DataFrame:
    """The full-state probes' wrt names each cell's state (h, or h,c): one quantity, 'state', for drawing."""
    return df.assign(wrt=df["wrt"].where(~df["probe"].isin(["jacobian", "independent"]), "state"))
DRAWN = {"cell", "impl", "init_scale", "forget_bias", "seed", "probe", "point", "variant"}
AGREE = 1e-6  # the measure's threshold for 'one curve' (derived.gradient_decay.AGREE)


def quantity(probe: str, wrt: str) -> str:
    return NAMES.get((probe, wrt), f"||ds_T-1/ds_t||_2, s = ({wrt})" if probe == "jacobian" else f"{probe} {wrt}")


def twins(res: pd.DataFrame) -> str:
    """The fast twins in a run, for sentences: 'cudnn', 'scan', or 'cudnn / scan'."""
    return " / ".join(sorted(set(res["impl"]) - {"scratch"})) or "cudnn"


def _disagreement(agree: pd.DataFrame, manifest: dict, twin: str = "cudnn") -> str:
    """Which curves scratch and cudnn draw apart, and where: only at the dtype's underflow floor (float arithmetic
    running out), or at ordinary magnitudes (then named, with the median gap); and whether cuDNN ran float32 in TF32.
    A table derived before the gap was split by magnitude says the largest gap per dtype."""
    if "median_rel_ordinary" not in agree:
        per_dtype = "; ".join(f"{d}: up to {g['max_rel_diff'].max():.1e}" for d, g in agree.groupby("dtype"))
        return (f"scratch and {twin} differ (relative, where both norms are above 0) {per_dtype}: both are shown. In float32 on a GPU, "
                "cuDNN's RNNs use TF32 by default (the manifest records it).")
    curve = [c for c in agree.columns if c not in ("probe", "wrt", "dtype", "pairs", "max_abs_diff", "max_rel_diff", "median_rel_ordinary",
                                                   "max_rel_ordinary", "zeros_apart")]
    apart = agree[agree["median_rel_ordinary"].fillna(0) > 1e-3]
    floor_only = agree[(agree["max_rel_diff"] >= AGREE) & (agree["median_rel_ordinary"].fillna(0) <= 1e-3)]
    said = []
    if len(floor_only):
        said.append(f"{len(floor_only)} curve(s) differ only where the norms sit at the dtype's underflow floor (up to "
                    f"{floor_only['max_rel_diff'].max():.1e} relative there; at ordinary magnitudes the median gap is under 0.1%)")
    if len(apart):
        named = []
        for keys, g in apart.groupby(curve or ["dtype"], sort=False, dropna=False):
            keys = keys if isinstance(keys, tuple) else (keys,)
            what = ", ".join(f"{c} {v}" for c, v in zip(curve or ["dtype"], keys))
            gaps = "; ".join(f"{r['wrt']} {100 * r['median_rel_ordinary']:.0f}%" for _, r in g.iterrows())
            named.append(f"{what} (median gap {gaps})")
        said.append("at ordinary magnitudes: " + "; ".join(named))
    env = manifest.get("environment", {})
    tf32 = env.get("cudnn_allow_tf32") and str(env.get("cudnn_rnn_fp32_precision", "tf32")) != "ieee" and (agree["dtype"] == "float32").any()
    return (f"scratch and {twin} differ, so both are drawn: " + "; ".join(said) + "."
            + (" cuDNN ran float32 recurrent layers in TF32 here (cudnn_allow_tf32 in the manifest; the setting tf32 = false turns it off): "
               "a 10-bit mantissa in its matmuls, which a curve that grows for hundreds of steps carries into its norms." if tf32 else ""))


def view(t: Tables, manifest: dict) -> Section:
    res, rates, summ, agree = t["results"], t.get("decay_rates"), t.get("summary"), t.get("impl_agreement")
    settings = manifest.get("columns", [])
    sec = Section()
    one_curve = agree is not None and len(agree) and agree["max_rel_diff"].max() < AGREE
    sec.key_points.append(
        "Each number is the factor by which the gradient norm shrinks (< 1) or grows (> 1) per step of distance from the "
        "loss, fitted on a log axis. The loss sits on the last step only, so every gradient is the long-range part; a norm "
        "is the RMS over the batch of the per-sequence L2 norm.")
    if "tf32" not in res and ((res["wrt"] == "c") & (res["probe"] == "hidden")).any():
        # Runs made before gradlab measured the LSTM's total dL/dc_t: the tf32 column came with the same release, so a run
        # without it tapped c_t after h_t was computed from it.
        sec.key_points.append(
            "This run is older than gradlab's total dL/dc_t: its LSTM rows for c hold only the part of the gradient carried on "
            "through c_{t+1} (0 at the last step), not the total derivative with the path through h_t; its h and x rows are "
            "unaffected. Rerun it for the total.")
    if agree is not None and len(agree):
        worst = agree.loc[agree["max_rel_diff"].idxmax()]
        if one_curve:
            sec.key_points.append(
                f"scratch and {twins(res)} agree: max |scratch - {twins(res)}| / norm = {worst['max_rel_diff']:.1e} over {int(agree['pairs'].sum()):,} "
                "norms measured by both, so each curve is drawn once (scratch) and each rate given once.")
        else:
            sec.key_points.append(_disagreement(agree, manifest, twins(res)))
    if rates is not None and "closed_form_max_rel" in rates and rates["closed_form_max_rel"].notna().any():
        exact = label_models(rates[rates["closed_form_max_rel"].notna()])
        worst = exact.groupby("model")["closed_form_max_rel"].max()
        sec.key_points.append(
            "Closed forms: where the recurrence allows one (lru: |lambda|^k per mode; mingru: the product of 1 - z_s; minlstm: of f'_s; "
            "the linear cell with a scaled orthogonal W_hh: rho^k), ||dL/dh_t|| is also computed exactly from the realised gates "
            "without a backward pass. Largest relative gap to the measured norm: "
            + "; ".join(f"{m} {v:.0e}" for m, v in worst.reindex(model_order(worst.index)).items()) + ".")
    if summ is not None and len(summ):
        poor = summ[summ["fit"] != "one rate"]
        if len(poor):
            which = "; ".join(sorted(set(label_models(poor)["model"] + ", init_scale " + poor["init_scale"].map(lambda v: "none" if pd.isna(v) else f"{v:g}"))))
            sec.key_points.append(f"{len(poor)} curves are not one rate (r2 < 0.95 and off the line by over 12%), marked ~ below: {which}. Read their curves, not the number.")
        split = [c for c in settings if c in summ and c not in DRAWN and c != "point" and summ[c].map(repr).nunique() > 1]
        sizes_vary = "hidden_size" in summ and summ["hidden_size"].nunique() > 1 and ("init_scale" not in summ or summ["init_scale"].nunique() < 2)
        table = summary_table(summ, [c for c in split if not (sizes_vary and c == "input_size")], "hidden_size" if sizes_vary else "init_scale")
        theory = "predicted_factor" in summ and summ["predicted_factor"].notna().any()
        sec.summaries.append(("Factor per step of " + quantity(*summ[["probe", "wrt"]].iloc[0])
                              + (", measured (predicted: mean-field theory's factor, docs/mean_field.md)" if theory else ""), table))
    shown = one_state(res[res["impl"] == "scratch"] if one_curve else res)
    two_impls = res["impl"].nunique() > 1
    sizes = sorted(res["hidden_size"].unique()) if "hidden_size" in res else []
    by_size = len(sizes) > 1 and ("init_scale" not in res or res["init_scale"].nunique() < 2)  # a finite-size run
    if by_size:  # curves for the largest network; the rates and the finite-size figure show every size
        shown = shown[shown["hidden_size"] == sizes[-1]]
    for (probe, wrt), g in shown.groupby(["probe", "wrt"], sort=False):
        g = label_models(g)
        for extra, gg in group_by_others(g, settings, DRAWN | {"model"}):
            name = quantity(probe, wrt)
            title = figures.fixed_title(f"{name} against distance from the loss{extra}", fixed_settings(gg, settings, DRAWN - {"seed"}))
            exact = "closed_form" in gg and gg["closed_form"].notna().any()
            sec.figures.append((
                f"decay-{probe}-{wrt.replace(',', '')}{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                f"{name} (RMS over the batch of per-sequence norms; median over seeds) against distance from the loss, one panel per "
                "model, one colour per init_scale (the recurrent spectral norm; the lru's eigenvalue radius). Exact zeros are marked x at "
                "the floor of the log axis"
                + (" dL/dc_t is the total derivative: the path through h_t = o_t tanh(c_t) and the one through c_t+1." if wrt == "c" else "") + "."
                + (" s is the full state: h, or (h, c) for the LSTM; the norm is the spectral norm." if probe == "jacobian" else "")
                + (" Black dashes: the exact closed form, computed from the realised gates without a backward pass, where the cell "
                   "allows one (lru: |lambda|^k per mode; mingru: the product of 1 - z_s; minlstm: of f'_s; linear with a scaled "
                   "orthogonal W_hh: rho^k)." if exact else "")
                + (" scratch and its fast twin coincide; scratch is drawn." if one_curve else " Line style: impl." if two_impls else ""),
                partial(lines_with_closed_form, gg, "distance", "grad_norm", panel="model", hue="init_scale", title=title,
                        xlabel="distance from the loss (steps)", ylabel=name, style="impl" if two_impls and not one_curve else None,
                        panel_order=model_order(gg["model"])),
            ))
    if rates is not None and len(rates):
        r = label_models(one_state(rates[rates["impl"] == "scratch"] if one_curve else rates))
        r = r.assign(quantity=[quantity(p, w) for p, w in zip(r["probe"], r["wrt"])])
        across = "hidden_size" if by_size else "init_scale"
        for extra, rr in group_by_others(r, settings, DRAWN | {"model", "quantity", "wrt"} | ({"hidden_size", "input_size"} if by_size else set())):
            sec.figures.append((
                f"rates{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                "Fitted factor per step for every probe on one colour scale (white: 1, norms kept; blue: decay; red: growth). "
                "~ marks a poor fit (not one rate)." + (" Columns: hidden size." if by_size else ""),
                partial(figures.heatmaps, rr, "model", across, "factor_per_step", panel="quantity", weak="one_rate" if "one_rate" in rr else "r2", weak_below=0.5 if "one_rate" in rr else 0.95, row_order=model_order(rr["model"]),
                                 title=figures.fixed_title(f"factor per step{extra}", fixed_settings(rr, settings, DRAWN - {"seed"} | {"wrt"}))),
            ))
        theory_figures(sec, t, r, settings)
        spectra_figure(sec, t, rates, settings, one_curve)
        keep = [c for c in ["model", "impl", "init_scale", "probe", "wrt", "factor_per_step", "predicted_factor", "r2", "vanish_distance",
                            "fit_points", "max_distance"] + [c for c in settings if c not in DRAWN] if c in r]
        every = r.assign(order=r["model"].map(model_order(r["model"]).index)).sort_values(["order", "init_scale", "probe"], kind="stable")
        sec.folded.append(("Every fit" + (f" (scratch; {twins(res)}'s are the same)" if one_curve else ""), every[list(dict.fromkeys(keep))]))
    return sec


def lines_with_closed_form(df: pd.DataFrame, *args, **kwargs):
    """figures.panels_of_lines, with each panel's closed-form curves (the `closed_form` column, median over seeds) drawn
    over it in black dashes, one per init_scale."""
    fig = figures.panels_of_lines(df, *args, **kwargs)
    if "closed_form" not in df:
        return fig
    exact = df[df["closed_form"].notna()]
    for ax in fig.axes:
        for _, line in exact[exact["model"] == ax.get_title()].groupby("init_scale", dropna=False):
            curve = line.groupby("distance")["closed_form"].median()
            curve = curve[curve > 0]
            ax.plot(curve.index, curve.to_numpy(), ls=(0, (2, 2)), color="black", lw=0.9)
    return fig


def summary_table(summ: pd.DataFrame, split: list[str] = (), across: str = "init_scale") -> pd.DataFrame:
    """model (and the other settings that vary) x `across` (init_scale, or hidden_size in a finite-size run),
    each entry 'factor (predicted p, r2, vanishes at d)': the measured factor, mean-field theory's beside it where
    the theory predicts one; '~' before a poor fit."""
    s = label_models(summ)
    split = [c for c in split if c != across]

    def entry(row) -> str:
        mark = "" if row["fit"] == "one rate" else "~"
        theory = row.get("predicted_factor")
        predicted = "" if theory is None or pd.isna(theory) else f"predicted {theory:.3f}, "
        gone = "" if pd.isna(row["vanish_distance"]) else f", vanishes at {row['vanish_distance']:.0f}"
        gap = row.get("closed_form_max_rel")
        exact = "" if gap is None or pd.isna(gap) else f"closed form {row['closed_form_factor']:.3f} exact to {gap:.0e}, "
        return f"{mark}{row['factor_per_step']:.3f} ({predicted}{exact}r2 {row['r2']:.3f}{gone})"

    def heading(v) -> str:
        return f"{across} none" if pd.isna(v) else f"{across} {v:g}"

    def sort_key(v):  # numbers by value, then names; NaN (none) last
        return (2, "") if isinstance(v, float) and pd.isna(v) else (0, v, "") if isinstance(v, numbers.Real) else (1, 0, str(v))

    values = sorted(s[across].unique(), key=sort_key)
    s = s.assign(entry=s.apply(entry, axis=1), heading=s[across].map(heading))
    wide = s.pivot_table(index=["model", "impl", *split], columns="heading", values="entry", aggfunc="first")
    wide = wide[[heading(v) for v in values if heading(v) in wide.columns]]
    order = model_order(wide.index.get_level_values(0))
    wide = wide.reindex(sorted(wide.index, key=lambda k: (order.index(k[0]), *map(sort_key, k[1:]))))
    wide.columns.name = None
    return wide.reset_index().fillna("")


PROBE_WORDS = {"hidden": "true gradient", "independent": "fresh gradient", "jacobian": "Jacobian spectral norm"}


def theory_figures(sec: Section, t: Tables, rates: pd.DataFrame, settings: list[str]) -> None:
    """Mean-field theory beside the measurements: factor against init_scale with the edge of chaos, and the
    error against hidden size where it varies."""
    line, edge = t.get("theory"), t.get("edge_of_chaos")
    if "predicted_factor" not in rates:
        return
    state = rates[((rates["wrt"] == "h") & (rates["probe"] == "hidden")) | rates["probe"].isin(["independent", "jacobian"])]
    lined = set(line["cell"]) if line is not None and len(line) else set()
    modern_factors(sec, state[~state["cell"].isin(lined) & state["predicted_factor"].notna() & (state["probe"] == "hidden")])
    state = state[state["cell"].isin(lined) | (state["init"] == "critical" if "init" in state else False)]
    if not lined:
        return
    line, edge = label_models(line), label_models(edge)
    critical = state[state["init"] == "critical"] if "init" in state else state.iloc[:0]
    if len(critical):
        critical = label_models(critical)
        said = "; ".join(f"{m} {'true' if p == 'hidden' else 'fresh'} {f:.3f}" for m, p, f in
                         critical[["model", "probe", "factor_per_step"]].itertuples(index=False))
        sec.key_points.append("init 'critical' sets each cell's recurrent scale where the theory predicts a factor of exactly 1 "
                              f"(the edge of chaos). Measured (true gradient / fresh random gradient): {said}.")
    for extra, g in group_by_others(state, settings, DRAWN | {"model", "quantity", "wrt", "hidden_size", "input_size"}):
        if "init" in g and (g["init"] == "critical").all():  # no line to draw: its scale is the prediction's edge
            continue
        largest = g[g["hidden_size"] == g["hidden_size"].max()]
        if largest["probe"].isin(["hidden", "independent"]).any():  # the gradient probes; else (a Jacobian-only run) that probe
            largest = largest[largest["probe"].isin(["hidden", "independent"])]
        order = model_order(largest["model"])
        ratios = largest.groupby(["model", "probe"])["factor_over_predicted"].agg(["min", "max"])
        ratios = ratios.iloc[sorted(range(len(ratios)), key=lambda i: (order.index(ratios.index[i][0]), ratios.index[i][1]))]
        said = "; ".join(f"{m} {PROBE_WORDS.get(p, p)} {lo:.3f}" + ("" if abs(hi - lo) < 5e-4 else f" to {hi:.3f}")
                         for (m, p), (lo, hi) in ratios.iterrows())
        fresh = (largest["probe"] == "independent").any()
        sec.key_points.append(f"Measured over predicted factor per step{extra} (H {int(largest['hidden_size'].iloc[0])}; 1: the theory holds): {said}."
                              + (" Where the fresh gradient agrees and the true one does not, the theory's gradient-independence "
                                 "assumption fails (docs/mean_field.md)." if fresh else " See docs/mean_field.md."))
        keys = [c for c in settings if c in line and c in g and c not in DRAWN and c not in ("hidden_size", "input_size")
                and line[c].map(repr).nunique() > 1]
        sub_line, sub_edge = line, edge
        for k in keys:
            sub_line, sub_edge = sub_line[sub_line[k].isin(g[k])], sub_edge[sub_edge[k].isin(g[k])]
        sizes = sorted(g["hidden_size"].unique())
        size = sizes[-1]  # the largest network: where the theory should hold best
        sec.figures.append((f"theory{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                            "The factor per step predicted by mean-field theory (line; gradlab.theory, docs/mean_field.md) against the "
                            "measured ones (points): " + _probes_drawn(set(g["probe"])) + ". Dashed: 1; dotted: the edge of chaos, where "
                            "the prediction crosses 1.",
                            partial(figures.theory_against_measured, sub_line[sub_line["hidden_size"] == size], g[g["hidden_size"] == size],
                                    sub_edge[sub_edge["hidden_size"] == size],
                                    figures.fixed_title(f"theory and measurement{extra}, H {size}", fixed_settings(g[g["hidden_size"] == size], settings, DRAWN - {"seed"} | {"wrt"})),
                                    model_order(g["model"]))))
        if len(sizes) > 1:
            err = g.assign(abs_error=(g["factor_per_step"] - g["predicted_factor"]).abs())
            err = err[err["init_scale"] == err["init_scale"].max()] if "init_scale" in err and err["init_scale"].nunique() > 1 else err
            sec.figures.append((f"finite-size{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                                "How far the measured factor is from the prediction as the network grows: the fresh-gradient probe (x) "
                                "converges to the theory, the true gradient of the gated cells (o) does not.",
                                partial(figures.finite_size, err, figures.fixed_title(f"finite size{extra}", fixed_settings(err, settings, DRAWN - {"seed"} | {"wrt", "hidden_size", "input_size"})))))


def modern_factors(sec: Section, rates: pd.DataFrame) -> None:
    """A key point for the cells without a mean field to solve (h_t = a_t * h_{t-1} + b_t): their measured factor over
    sqrt(E[a^2]) (gradlab.theory.modern_factor). Gates of different steps read independent inputs, so the mean square
    falls by E[a^2] per step; units differ in their weights, so far from the loss the units that keep most lead, and the
    measured factor sits above that average."""
    if not len(rates):
        return
    r = label_models(rates)
    said = "; ".join(f"{m}{'' if pd.isna(s) else f' at init_scale {s:g}'} {f:.3f} / {p:.3f}"
                     for m, s, f, p in r[["model", "init_scale", "factor_per_step", "predicted_factor"]].itertuples(index=False))
    sec.key_points.append("The cells whose recurrence is h_t = a_t * h_{t-1} + b_t, measured factor per step / sqrt(E[a^2]) (their gates "
                          "at different steps read independent inputs; the lru's a is its radius): " + said + ". A batch's RMS norm falls "
                          "below sqrt(E[a^2]) far from the loss, towards a typical product's exp(E[log a]) (the mean square is carried by "
                          "ever rarer sequences), and units whose weights differ lift it (the units that keep most lead); the closed "
                          "form is exact either way.")


def spectra_figure(sec: Section, t: Tables, rates: pd.DataFrame, settings: list[str], one_curve: bool) -> None:
    """The whole spectrum of ds_T/ds_t against distance, where the Jacobian probe kept it."""
    q = t.get("spectrum_quantiles")
    if q is None or not len(q):
        return
    q = q[q["impl"] == "scratch"] if one_curve else q
    jac = rates[rates["probe"] == "jacobian"][[c for c in settings if c in rates and c not in ("seed", "point")] + ["predicted_factor"]]
    keys = [c for c in settings if c in q and c in jac and c not in ("seed", "point")]
    q = label_models(q.merge(jac.drop_duplicates(keys), on=keys, how="left") if "predicted_factor" in jac else q)
    if "init_scale" in q and q["init_scale"].nunique() > 1:  # one scale per drawing: the one nearest 1
        scales = q["init_scale"].dropna().unique()
        q = q[q["init_scale"] == min(scales, key=lambda v: abs(v - 1))]
    for extra, g in group_by_others(q, settings, DRAWN | {"model"}):
        sec.figures.append((f"spectrum{extra.replace(' ', '').replace(',', '-').replace('=', '')}",
                            "Every singular value of ds_T-1/ds_t (s the full state) against distance: dynamical isometry would keep them all "
                            "near 1. The RMS is what mean-field theory predicts (factor^distance, dashed); the spread around it is what "
                            "it does not describe.",
                            partial(figures.spectra, g, figures.fixed_title(f"Jacobian spectra{extra}", fixed_settings(g, settings, DRAWN - {"seed"})),
                                    model_order(g["model"]))))


MARKER_WORDS = {"hidden": "the true gradient ||dL/dh_t|| (filled circles)", "jacobian": "the state Jacobian's spectral norm (hollow squares)",
               "independent": "a fresh random gradient carried one step at a time, the quantity the theory computes (x)",
               "input": "||dL/dx_t|| (triangles)"}


def _probes_drawn(probes: set) -> str:
    """The caption's words for the markers the theory figure draws: those of the probes in its data, no others."""
    return "; ".join(MARKER_WORDS.get(p, p) for p in [*MARKER_WORDS, *sorted(probes - set(MARKER_WORDS))] if p in probes)

