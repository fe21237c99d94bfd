"""Plot helpers in seaborn's style: (df, roles) -> Figure. They draw; they never compute."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # files, not windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

CELL_ORDER = ("linear", "rnn", "gru", "lstm")  # simplest first
NAMELESS = {"model", "split", "quantity", "recorded"}  # panels and legend entries named by their value alone
sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)


def ordered(values, order: tuple = CELL_ORDER) -> list:
    """Numbers sorted; known names in `order`, then the rest in their own order."""
    values = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return [v for v in order if v in values] + [v for v in values if v not in order]


def palette(values, ordered_values: bool = False) -> dict:
    """One colour per value, the same in every figure of a page (values sorted): a sequential map for
    ordered quantities (steps, scales) with many values, distinct colours otherwise."""
    values = sorted(dict.fromkeys(values), key=lambda v: (str(type(v)), v))
    many = ordered_values and len(values) > 4
    return dict(zip(values, sns.color_palette("viridis" if many else "deep", len(values))))


def named_missing(values: pd.Series) -> pd.Series:
    """A grouping column with its missing values (e.g. init_scale none under the critical init) named
    'none': NaN never equals itself, so it could not key a colour or a panel."""
    return values.astype(object).where(values.notna(), "none") if values.isna().any() else values


def fixed_title(title: str, fixed: dict, width: int = 120) -> str:
    """The figure's title and, below it, every setting fixed in the drawn data, so a PNG stands alone."""
    shown = ", ".join(f"{k} {v}" for k, v in fixed.items())
    return "\n".join([title, *textwrap.wrap(shown, width)]) if shown else title


def panels_of_lines(df: pd.DataFrame, x: str, y: str, panel: str, hue: str, title: str, xlabel: str, ylabel: str,
                    panel_order: list | None = None, zeros_at_floor: bool = True, baseline: float | None = None,
                    style: str | None = None, col_wrap: int = 4, log: bool = True, logx: bool = False,
                    cap: float | None = None) -> plt.Figure:
    """One panel per value of `panel`, lines of y against x on a log axis coloured by `hue` (one colour per
    value across panels). Exact zeros cannot sit on a log axis: they are marked at the panel's floor as
    'x', and the legend says so. `baseline` draws a dashed horizontal line (e.g. 1 for loss / baseline)."""
    if cap is not None:  # values beyond the cap are drawn at it (a diverged run should not squash the others)
        df = df.assign(**{y: df[y].clip(upper=cap)})
    df = df.assign(**{c: named_missing(df[c]) for c in {panel, hue, style} - {None}})
    order = panel_order or ordered(df[panel].unique())
    n = len(order)
    cols = min(n, col_wrap)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.6, 2.8 * rows + 0.9), sharex=True, sharey=True, squeeze=False)
    colours = palette(df[hue].unique(), ordered_values=hue in ("step", "init_scale", "seq_len"))
    styles = {v: ls for v, ls in zip(ordered(df[style].unique()), ("-", "--", ":", "-."))} if style else {None: "-"}
    positive = df[y][(df[y] > 0) & np.isfinite(df[y])]
    floor = positive.min() / 3 if len(positive) else 1e-12
    zeros_at_floor = zeros_at_floor and log
    has_zero = banded = False
    for ax, value in zip(axes.flat, order):
        g = df[df[panel] == value]
        for (h, st), line in g.groupby([hue, style] if style else [hue, panel], sort=False, dropna=False):
            line = line.sort_values(x)
            pos = line[line[y] > 0] if log else line
            label = (str(h) if hue in NAMELESS else f"{hue} {h}") + (f", {style} {st}" if style else "")
            ls = styles.get(st if style else None, "-")
            if pos[x].duplicated().any():  # several runs (seeds) at each x: their median, and a band over their middle half
                banded = True
                sns.lineplot(data=pos, x=x, y=y, estimator="median", errorbar=("pi", 50), color=colours[h], ls=ls, lw=1.4,
                             label=label, ax=ax, legend=False)
            else:
                ax.plot(pos[x], pos[y], color=colours[h], ls=ls, lw=1.4, label=label)
            zero = line[line[y] == 0]
            if zeros_at_floor and len(zero):
                has_zero = True
                ax.plot(zero[x], np.full(len(zero), floor), "x", color=colours[h], ms=5)
        if baseline is not None:
            ax.axhline(baseline, color="0.3", ls="--", lw=1)
        ax.set_yscale("log" if log else "linear")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_title(str(value) if panel in NAMELESS else f"{panel} {value}", fontsize=9)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for k, ax in enumerate(axes.flat[:n]):
        if k + cols >= n:  # nothing drawn below it: its column's x axis is labelled here
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat[1:n]:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lb, hd)
    if has_zero:
        seen["exactly 0 (marked at the floor)"] = plt.Line2D([], [], marker="x", ls="", color="0.3")
    if baseline is not None:
        seen["baseline"] = plt.Line2D([], [], ls="--", color="0.3")
    if banded:
        seen["median of the seeds; band: their middle 50%"] = plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.35)
    fig.legend(seen.values(), seen.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def heatmaps(df: pd.DataFrame, rows: str, cols: str, values: str, panel: str, title: str, center: float = 1.0,
             weak: str | None = None, weak_below: float = 0.95, fmt: str = ".3f", row_order: list | None = None) -> plt.Figure:
    """One heatmap per value of `panel`, on one shared colour scale centred at `center`. Where the column
    `weak` is under `weak_below` (a poor fit), the number is written '~x' in grey: not a crisp rate."""
    panels = list(dict.fromkeys(df[panel]))
    finite = df[values][np.isfinite(df[values])]
    span = max(abs(finite.max() - center), abs(finite.min() - center), 1e-9) if len(finite) else 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(1.8 + 1.6 + 1.25 * df[cols].nunique() * len(panels), 1.3 + 0.42 * df[rows].nunique()),
                             squeeze=False)
    for k, (ax, value) in enumerate(zip(axes.flat, panels)):
        g = df[df[panel] == value]
        wide = g.pivot_table(index=rows, columns=cols, values=values, aggfunc="first", dropna=False)
        present = set(wide.dropna(how="all").index)
        wide = wide.reindex([r for r in (row_order or ordered(wide.index)) if r in present])
        text = wide.map(lambda v: "" if pd.isna(v) else format(v, fmt))
        if weak:
            fit = g.pivot_table(index=rows, columns=cols, values=weak, aggfunc="first", dropna=False).reindex(wide.index)
            text = text.where(~(fit < weak_below), "~" + text)
        sns.heatmap(wide, annot=text, fmt="", cmap="vlag", center=center, vmin=center - span, vmax=center + span, ax=ax,
                    cbar=k == len(panels) - 1, cbar_kws={"label": values}, linewidths=0.5, annot_kws={"fontsize": 8})
        ax.set_title(str(value), fontsize=9)
        ax.set_ylabel(rows if k == 0 else "")
        ax.set_xlabel(cols)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bars(df: pd.DataFrame, x: str, y: str, hue: str | None, title: str, ylabel: str, order: list | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None, order=order or ordered(df[x].unique()))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)


def theory_against_measured(theory: pd.DataFrame, measured: pd.DataFrame, edge: pd.DataFrame, title: str, panel_order: list) -> plt.Figure:
    """One panel per model: the predicted factor per step against init_scale (line), the measured ones (points,
    one marker per probe), 1 (dashed) and the edge of chaos (dotted, where the prediction crosses 1)."""
    n = len(panel_order)
    cols = min(n, 5)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.1 * cols + 0.6, 2.9 * -(-n // cols) + 0.8), squeeze=False)
    markers = {"hidden": ("o", "measured, ||dL/dh_t||"), "independent": ("x", "measured, fresh random gradient each step"),
               "jacobian": ("s", "measured, ||ds_T/ds_t||"), "input": ("^", "measured, ||dL/dx_t||")}
    for ax, model in zip(axes.flat, panel_order):
        line = theory[theory["model"] == model].sort_values("init_scale")
        ax.plot(line["init_scale"], line["predicted_factor"], "-", color="#2c7fb8", lw=1.6, label="mean-field prediction")
        for probe, g in measured[measured["model"] == model].groupby("probe"):
            marker, label = markers.get(probe, ("d", probe))
            ax.plot(g["init_scale"], g["factor_per_step"], marker, color="#d95f02", ms=6, ls="", label=label)
        ax.axhline(1.0, color="0.4", ls="--", lw=1)
        for x in edge.loc[edge["model"] == model, "edge_init_scale"].dropna():
            ax.axvline(x, color="0.2", ls=":", lw=1.2, label=f"edge of chaos, {x:.2f}")
        ax.set_title(str(model), fontsize=9)
        ax.set_xlabel("init_scale (recurrent spectral norm)")
        ax.set_ylim(0, 2)  # the region around 1 that matters; the linear cell's line runs on past it
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("factor per step")
    handles = {}
    for ax in axes.flat[:n]:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb if not lb.startswith("edge") else "edge of chaos (prediction = 1)", h)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def finite_size(df: pd.DataFrame, title: str) -> plt.Figure:
    """|measured - predicted| factor against hidden size (log-log), one line per model and probe."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for (model, probe), g in df.groupby(["model", "probe"], sort=True):
        g = g.sort_values("hidden_size")
        ax.plot(g["hidden_size"], g["abs_error"], "o-" if probe == "hidden" else "x--", label=f"{model}, {probe}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden size H")
    ax.set_ylabel("|measured - predicted| factor")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def spectra(q: pd.DataFrame, title: str, panel_order: list) -> plt.Figure:
    """One panel per model: the singular values of ds_T/ds_t against distance (median line, 25-75% and 5-95%
    bands, largest dotted), their RMS (solid) and the mean-field RMS prediction factor^distance (dashed)."""
    n = len(panel_order)
    cols = min(n, 5)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.1 * cols + 0.6, 2.9 * -(-n // cols) + 0.8), squeeze=False, sharey=True)
    for ax, model in zip(axes.flat, panel_order):
        g = q[q["model"] == model].sort_values("distance")
        d = g["distance"]
        ax.fill_between(d, g["q05"].clip(lower=1e-300), g["q95"], color="#9ecae1", alpha=0.5, lw=0, label="5-95% of singular values")
        ax.fill_between(d, g["q25"].clip(lower=1e-300), g["q75"], color="#4292c6", alpha=0.6, lw=0, label="25-75%")
        ax.plot(d, g["q50"], color="#08306b", lw=1, label="median")
        ax.plot(d, g["largest"], ":", color="#08306b", lw=1, label="largest (spectral norm)")
        ax.plot(d, g["rms"], "-", color="#d95f02", lw=1.4, label="RMS, measured")
        if "predicted_factor" in g and g["predicted_factor"].notna().any():
            ax.plot(d, g["predicted_factor"].iloc[0] ** d, "--", color="#d95f02", lw=1.2, label="RMS, mean-field prediction")
        ax.set_yscale("log")
        ax.set_title(str(model), fontsize=9)
        ax.set_xlabel("distance from the loss (steps)")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("singular values of ds_T-1/ds_t")
    handles = dict(zip(*axes.flat[0].get_legend_handles_labels()[::-1]))
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def success_rates(df: pd.DataFrame, panel: str, title: str, model_order: list) -> plt.Figure:
    """The share of seeds that solved against the lag (log axis, ticks at the lags tried), one line per model
    with its own marker and dashes, so that models at the same rate stay visible; one panel per `panel`."""
    panels = ordered(df[panel].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.4, 3.2), sharey=True, squeeze=False)
    colours = palette(model_order)
    lags = sorted(df["seq_len"].unique())
    for ax, value in zip(axes.flat, panels):
        g = df[df[panel] == value]
        sns.lineplot(data=g, x="seq_len", y="solved_rate", hue="model", style="model", hue_order=model_order, style_order=model_order,
                     palette=colours, markers=True, dashes=True, errorbar=None, ax=ax, legend=ax is axes.flat[0], markersize=7)
        ax.set_xscale("log")
        ax.set_xticks(lags, [str(v) for v in lags])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(str(value), fontsize=9)
        ax.set_xlabel("lag (seq_len, steps)")
    axes.flat[0].set_ylabel("share of seeds solved")
    legend = axes.flat[0].get_legend()
    if legend is not None:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def flow_over_training(df: pd.DataFrame) -> plt.Figure:
    """gradlab.flow's records: ||dL/dh_t|| against distance from the loss, one line per recorded training
    step (a sequential colour: early dark, late light), one panel per module, layer and state part."""
    where = df["module"].replace("", "model").astype(str) + " layer " + df["layer"].astype(str) + ", dL/d" + df["wrt"].astype(str)
    return panels_of_lines(df.assign(recorded=where), x="distance", y="grad_norm", panel="recorded", hue="step",
                           title="Gradient flow while learning (gradlab.flow.watch)", xlabel="distance from the loss (steps)",
                           ylabel="||dL/ds_t|| (RMS over the batch)", col_wrap=3)
