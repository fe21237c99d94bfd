"""What clipping did, drawn from a training run's tables: norms against thresholds, how often it fired, and
the final loss over learning rate and threshold. Part of the training report when `clip` varies."""

from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import figures
from .page import Section
from .views import fixed_settings, group_by_others

DRAWN = {"clip", "point", "seed", "lr"}


def norms_and_thresholds(histogram: pd.DataFrame, thresholds: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per clipping strategy: the histogram of pre-clip gradient norms (log x; the derived table
    norm_histogram), the median threshold in force as a dashed line, the share of steps clipped in the corner."""
    order = list(dict.fromkeys(thresholds["clip"]))
    fig, axes = figures.panel_grid(len(order), 3, height=2.2, sharex=True)
    for ax, clip in zip(axes.flat, order):
        g = histogram[histogram["clip"] == clip].groupby("bin").agg(lo=("lo", "first"), hi=("hi", "first"), count=("count", "sum"))
        if len(g):
            ax.stairs(g["count"].to_numpy(), np.append(g["lo"].to_numpy(), g["hi"].iloc[-1]), fill=True, color="0.55")
        row = thresholds[thresholds["clip"] == clip].iloc[0]
        if np.isfinite(row["median_threshold"]):
            ax.axvline(row["median_threshold"], color="#c0392b", ls="--", lw=1.2)
        ax.set_xscale("log")
        ax.set_title(f"{clip}: {row['fraction_clipped']:.0%} clipped", fontsize=9)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("gradient norm before clipping")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def fraction_against_threshold(runs: pd.DataFrame, title: str) -> plt.Figure:
    fig, ax = figures.subplots(figsize=(5.6, 3.6))
    kind = runs["clip"].str.split(":").str[0]
    for k, g in runs.assign(kind=kind).groupby("kind", sort=True):
        ax.plot(g["threshold_over_norm"], g["fraction_clipped"], "o", label=k, ms=6)
    ax.set_xscale("log")
    ax.set_xlabel("median threshold / median gradient norm")
    ax.set_ylabel("share of steps clipped")
    ax.legend(fontsize=8, title="strategy", title_fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def final_over_lr_and_clip(final: pd.DataFrame, value: str, title: str) -> plt.Figure:
    """Final loss (or loss over baseline) for every learning rate and clipping strategy; a diverged run reads 'div'."""
    wide = final.pivot_table(index="clip", columns="lr", values=value, aggfunc="first", dropna=False)
    div = final.pivot_table(index="clip", columns="lr", values="diverged", aggfunc="first", dropna=False)
    wide = wide.reindex(list(dict.fromkeys(final["clip"])))
    div = div.reindex(wide.index)
    text = wide.map(lambda v: "" if pd.isna(v) else f"{v:.3g}").where(~div.fillna(False).astype(bool), "div")
    lines = title.count("\n") + 1  # the title's lines, and room for the colour bar's label beside a table of few rows
    fig, ax = figures.subplots(figsize=(min(figures.PAGE_IN - 0.3, 2.6 + 1.0 * wide.shape[1]), max(2.4, 1.0 + 0.36 * wide.shape[0] + 0.18 * lines)))
    shown = np.log10(wide.where(~div.fillna(False).astype(bool)).astype(float))
    sns.heatmap(shown, annot=text, fmt="", cmap="mako_r", ax=ax, cbar_kws={"label": f"log10 {value}"}, linewidths=0.5, annot_kws={"fontsize": 8})
    ax.grid(False)  # the theme's grid would cross the cells of diverged runs
    for i, row in enumerate(div.fillna(False).astype(bool).to_numpy()):  # a diverged run has no loss to colour: say so
        for j, diverged in enumerate(row):
            if diverged:
                ax.text(j + 0.5, i + 0.5, "div", ha="center", va="center", fontsize=8, color="#c0392b")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("clip")
    ax.tick_params(axis="y", labelrotation=0)  # 'norm:0.01' read across, not up into the next row's name
    fig.suptitle(title, fontsize=10)  # over the colour bar too, which a title over the axes alone ran into
    fig.tight_layout()
    return fig


def add(sec: Section, t: dict, settings: list[str], lyrics: bool, task: str | None = None) -> None:
    runs, histogram, final = t.get("clipping"), t.get("norm_histogram"), t.get("final")
    if runs is None or not len(runs) or runs["clip"].nunique() < 2:
        return
    named = f"{task}: " if task else ""
    clipped = runs[runs["fraction_clipped"] > 0]
    norm_like = clipped[~clipped["clip"].str.startswith("value")]
    said = []
    if len(norm_like):
        gap = max(0.0, 1.0 - float(norm_like["min_cosine"].min()))  # 1 - cosine of clipped to unclipped gradient, the worst step
        said.append("norm-type clipping (norm, mean, adaptive) keeps it (1 - cosine of clipped to unclipped gradient at most "
                    + (f"{gap:.0e}: float rounding)" if gap < 1e-5 else f"{gap:.2g})"))
    value = clipped[clipped["clip"].str.startswith("value")]
    if len(value):
        said.append(f"value clipping turns it (cosines from {value['min_cosine'].min():.3f}, median {value['median_cosine'].median():.3f})")
    if said:
        sec.key_points.append(named + "Clipping's direction, measured: " + "; ".join(said) + ".")
    for extra, g in group_by_others(runs, settings, DRAWN):
        stem = f"{task or ''}{extra}".replace(" ", "").replace(",", "-").replace(":", "")
        for lr, gl in g.groupby("lr", sort=True):
            if histogram is None:  # a folder from before the histogram was derived, without its step rows
                sec.missing.append(f"norms-{stem}-lr{lr:g} (needs the derived table norm_histogram)")
                continue
            sl = histogram[histogram["point"].isin(gl["point"])]
            sec.figures.append((f"norms-{stem}-lr{lr:g}",
                                "Gradient norms before clipping, every step of each run (log axis), with the median threshold in "
                                "force (dashed) and the share of steps clipped.",
                                partial(norms_and_thresholds, sl, gl, figures.fixed_title(f"{named}gradient norms and thresholds{extra}, lr {lr:g}",
                                                                                         fixed_settings(gl, settings, DRAWN)))))
        sec.figures.append((f"fraction-{stem}",
                            "Share of steps clipped against the threshold relative to the typical gradient norm, one point per run.",
                            partial(fraction_against_threshold, g, figures.fixed_title(f"{named}how often clipping fires{extra}",
                                                                                      fixed_settings(g, settings, DRAWN)))))
    if final is not None and "lr" in final:
        value = "final_train_loss" if lyrics else "loss_over_baseline"
        for extra, g in group_by_others(final, settings, DRAWN):
            stem = f"{task or ''}{extra}".replace(" ", "").replace(",", "-").replace(":", "")
            sec.figures.append((f"final-{stem}",
                                f"{value} at the end of each run over learning rate and clipping; 'div': the run diverged.",
                                partial(final_over_lr_and_clip, g, value, figures.fixed_title(f"{named}{value}{extra}", fixed_settings(g, settings, DRAWN)))))
    sec.tables.append((f"{named}what clipping did, per run".capitalize(), runs[[c for c in ["task", "cell", "clip", "lr", "steps_run", "fraction_clipped", "median_grad_norm",
                                                                        "median_threshold", "threshold_over_norm", "min_cosine", "median_update_norm",
                                                                        "max_update_norm", "loss_spikes"] if c in runs]]))
