"""The cliff report: the loss surface with its wall, and the descent paths over it, clipped or not."""

from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import figures
from .page import Section
from .views import Tables, fixed_settings


def surface_with_paths(surface: pd.DataFrame, paths: pd.DataFrame, title: str) -> plt.Figure:
    """log10 loss over (w, b) as filled contours, and every path: one colour per clip, markers at its start."""
    wide = surface.pivot_table(index="b", columns="w", values="loss")
    fig, ax = figures.subplots(figsize=(7.2, 5.4))
    filled = ax.contourf(wide.columns, wide.index, np.log10(wide.to_numpy() + 1e-12), levels=30, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="log10 loss")
    colours = dict(zip(sorted(paths["clip"].unique()), ("#ff5a36", "white", "#ffd23f", "#58c4dd")))
    for (clip, start), p in paths.groupby(["clip", "start"], sort=True):
        p = p.sort_values("step")
        ax.plot(p["w"], p["b"], "-", color=colours[clip], lw=1.4, label=f"clip {clip}" if start == 0 else None)
        ax.plot(p["w"].iloc[:1], p["b"].iloc[:1], "o", color="black", ms=5)
        ax.plot(p["w"].iloc[-1:], p["b"].iloc[-1:], "x", color=colours[clip], ms=7)
    (w0, w1), (b0, b1) = (wide.columns.min(), wide.columns.max()), (wide.index.min(), wide.index.max())
    ax.set_xlim(w0, w1)
    ax.set_ylim(b0, b1)
    for (clip, start), p in paths.groupby(["clip", "start"], sort=True):  # an end off the surface: marked on its edge, its place written
        w, b = p.sort_values("step")[["w", "b"]].iloc[-1]
        if not (w0 <= w <= w1 and b0 <= b <= b1):
            cw, cb = min(max(w, w0), w1), min(max(b, b0), b1)
            ax.plot([cw], [cb], marker="^" if b > b1 else "v" if b < b0 else ">" if w > w1 else "<", color=colours[clip], mec="black", ms=9, clip_on=False)
            ax.annotate(f"ends off the surface at ({w:.2f}, {b:.2f})", (cw, cb), xytext=(-6, -12 if b > b1 else 8), textcoords="offset points",
                        ha="right", fontsize=8, color="white")
    ax.set_xlabel("w (recurrent weight)")
    ax.set_ylabel("b (bias)")
    fig.suptitle(title, fontsize=10)  # above the colour bar too: over the axes alone, a long title ran into its top label
    fig.tight_layout()
    handles = dict(zip(*ax.get_legend_handles_labels()[::-1]))
    handles["start"] = plt.Line2D([], [], marker="o", ls="", color="black", ms=5)
    handles["end"] = plt.Line2D([], [], marker="x", ls="", color="0.3", ms=7)
    figures.legend_below(fig, handles, facecolor="0.45")  # below the surface: never over a start or an end
    return fig


def view(t: Tables, manifest: dict) -> Section:
    res, surface, summary = t["results"], t.get("surface"), t.get("paths")
    settings = manifest.get("columns", [])
    sec = Section()
    if summary is not None and len(summary):
        wall = summary["largest_grad_norm"].max()
        hit = summary[summary["clip"] == "none"].sort_values("longest_step", ascending=False).iloc[0]
        sec.key_points.append(
            f"The wall: gradients up to {wall:.3g} where the surface around it gives well under 1. Unclipped, the step from the "
            f"wall is lr x gradient, {hit['longest_step']:.3g} long for start {int(hit['start'])}, which throws the path to "
            f"(w, b) = ({hit['final_w']:.2f}, {hit['final_b']:.2f}), loss {hit['final_loss']:.3g}; clipped, the step is at most "
            "lr x threshold and the path walks down the wall instead.")
        sec.summaries.append(("Where each path ended", summary[[c for c in ["clip", "start", "final_w", "final_b", "final_loss", "largest_grad_norm",
                                                                     "longest_step", "steps_clipped"] if c in summary]]))
    if surface is not None and len(surface):
        one = surface[surface["point"] == surface["point"].iloc[0]]  # the surface is the same in every point
        sec.figures.append(("cliff", "log10 of the loss over (w, b), with gradient-descent paths from the same starts (o) to their ends (x), "
                            "one colour per clipping strategy. The thin bright-to-dark wall is the cliff.",
                            partial(surface_with_paths, one, res, figures.fixed_title("the cliff", fixed_settings(res, settings, {"clip", "starts"})))))
    return sec
