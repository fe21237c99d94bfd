"""The throughput report: the scratch/fused ratio per cell and shape first, then tokens/s and peak fractions."""

from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from . import figures
from .page import Section
from .views import Tables, fixed_settings

SHAPE = ["seq_len", "batch_size", "hidden_size"]


def _shape(df: pd.DataFrame) -> pd.Series:
    """'T 100, B 50, H 128' (and ', I 2' where the input is narrower than H; ', train step' for that workload)."""
    label = "T " + df["seq_len"].astype(str) + ", B " + df["batch_size"].astype(str) + ", H " + df["hidden_size"].astype(str)
    if "input_size" in df:
        label = label + df["input_size"].map(lambda v: f", I {int(v)}" if pd.notna(v) else "")
    if "workload" in df:
        label = label + df["workload"].map(lambda w: ", train step" if w == "train_step" else "")
    return label


def bars_by_shape(df: pd.DataFrame, value: str, ylabel: str, title: str, line: float | None = None, log: bool = False) -> plt.Figure:
    """One group of bars per shape (in numeric order), one bar per impl, one panel per cell; a panel's
    width follows its number of shapes, so 17 shapes get room to be read."""
    cells = figures.ordered(df["cell"].unique())
    shapes = {c: list(dict.fromkeys(df[df["cell"] == c].sort_values(SHAPE)["shape"])) for c in cells}
    widths = {c: max(2.2, 0.42 * len(shapes[c])) for c in cells}
    rows: list[list[str]] = [[]]  # cells packed into rows the page holds, a panel's width following its shapes
    for c in cells:
        if rows[-1] and sum(widths[k] for k in rows[-1]) + widths[c] + 1.2 > figures.PAGE_IN:
            rows.append([])
        rows[-1].append(c)
    page_w = min(figures.PAGE_IN - 0.3, max(sum(widths[k] for k in r) for r in rows) + 1.2)
    heights = [3.0 + (1.3 if any(len(shapes[k]) > 3 for k in r) else 0.3) for r in rows]
    fig = figures.subplots(figsize=(page_w, sum(heights) + 0.8))[0]
    fig.clear()
    grid = fig.add_gridspec(len(rows), 1, height_ratios=heights)
    impls = sorted(df["impl"].unique())
    colours = figures.palette(impls, hue="impl")
    axes_rows = []
    for i, r in enumerate(rows):
        used = [widths[k] for k in r]
        spare = max(page_w - 1.2 - sum(used), 0.0)
        sub = grid[i].subgridspec(1, len(r) + (spare > 0.05), width_ratios=used + ([spare] if spare > 0.05 else []))
        first = axes_rows[0][0] if axes_rows else None
        row_axes = []
        for j in range(len(r)):  # one y axis for every panel: the cells read against each other, and no panel's labels in its neighbour
            row_axes.append(fig.add_subplot(sub[0, j], sharey=first or (row_axes[0] if row_axes else None)))
        axes_rows.append(row_axes)
    for row_cells, row_axes in zip(rows, axes_rows):
        for ax, cell in zip(row_axes, row_cells):
            g = df[df["cell"] == cell]
            if log:  # a bar's length on a log axis means nothing: points
                sns.pointplot(data=g, x="shape", y=value, hue="impl", ax=ax, errorbar=None, order=shapes[cell], hue_order=impls, palette=colours,
                              linestyle="none", dodge=0.4, markers="o", markersize=6)
            else:
                sns.barplot(data=g, x="shape", y=value, hue="impl", ax=ax, errorbar=None, order=shapes[cell], hue_order=impls, palette=colours, saturation=1)
            if line is not None:
                ax.axhline(line, color="0.3", ls="--", lw=1)
            if log:
                ax.set_yscale("log")
            ax.set_title(cell, fontsize=9)
            ax.set_xlabel("")
            many = len(shapes[cell]) > 3
            ax.tick_params(axis="x", labelrotation=90 if many else 20, labelsize=8)
            if ax.get_legend():
                ax.get_legend().remove()
        row_axes[0].set_ylabel(ylabel)
        for ax in row_axes[1:]:
            ax.set_ylabel("")
            ax.tick_params(axis="y", which="both", labelleft=False)
    for ax in (a for row_axes in axes_rows for a in row_axes):
        figures.powers_of_ten_only(ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    figures.legend_below(fig, {i: plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in impls})
    return fig


def _ratio_sentence(ratios: pd.DataFrame) -> str:
    """Each impl's time over the fused kernel's, per cell: shape by shape when they are few, else the range."""
    said = []
    for (impl, cell), g in ratios.groupby(["impl", "cell"], sort=False):
        g = g.sort_values(SHAPE)
        if len(g) <= 3:
            said.append(f"{impl} {cell} " + " and ".join(f"{r:.2f} at {s}" for r, s in zip(g["ratio_to_fused"], g["shape"])))
        else:
            said.append(f"{impl} {cell} {g['ratio_to_fused'].min():.2f} to {g['ratio_to_fused'].max():.2f} over {len(g)} shapes")
    if "twin" in ratios and (ratios["twin"] == "scan").any():
        return "Time over the fast twin's (the fused kernel's; the scan's for lru, mingru, minlstm; below 1: faster than it): " + "; ".join(said) + "."
    return "Time over the fused kernel's (below 1: faster than it): " + "; ".join(said) + "."


def view(t: Tables, manifest: dict) -> Section:
    res = t["results"].assign(shape=lambda d: _shape(d))
    settings = manifest.get("columns", [])
    sec = Section()
    epoch = (res["workload"] == "lyrics_epoch").all()
    untitled = {"cell", "seq_len", "batch_size", "hidden_size", "input_size", "impls", "point", "repeats", "warmup", "seed", "time_shares", "noise_retries"}
    if "workload" in res and not (res["workload"] == "train_step").any():
        untitled |= {"optimizer", "lr", "clip"}  # the train step's settings: nothing else reads them
    fixed = fixed_settings(res, settings, untitled)
    if epoch:
        g = res[res["impl"] == "gradlab"]
        sec.key_points.append("The book's lyrics epoch (hidden 256, 35 steps, batch 32, vocabulary 1,027): "
                              + "; ".join(f"{c}: gradlab {b['ms_median']:.0f} ms against the book's code's {b['ms_median'] / b['ratio_to_book']:.0f} ms "
                                          f"({1 / b['ratio_to_book']:.2f}x faster), {b['peak_fraction']:.0%} of the matmul peak, "
                                          f"{b['epoch_over_matmuls']:.2f}x the time of its own matmuls run alone"
                                          for c, b in g.set_index("cell").iterrows()) + ".")
        sec.summaries.append(("The lyrics epoch", res[["cell", "impl", "ms_median", "tokens_per_s", "gflops", "peak_fraction",
                                                       "ratio_to_book", "matmul_only_ms", "epoch_over_matmuls"]]))
        return sec
    sec.key_points.append("Each point times every impl on the same data, runs interleaved (a drift in the machine's speed hits "
                          "all alike); numbers are medians of synchronised runs. peak_fraction: the achieved matmul FLOP rate over an "
                          "n x n matmul's, measured in the same point on the same device and dtype.")
    noisy = res[res["noisy"]] if "noisy" in res else res.iloc[:0]
    if len(noisy):
        sec.key_points.append(f"NOISE: {len(noisy)} timing{'s' * (len(noisy) != 1)} spread too widely to mean anything (IQR above half the "
                              "median, after retries): " + "; ".join(f"{r.impl} {r.cell} at {r.shape} ({r.ms_median:.3g} ms, IQR {r.ms_iqr:.3g} ms)"
                                                                  for r in noisy.itertuples()) + ". No ratio is quoted for them; rerun on a quiet machine.")
    twin = res["twin"].fillna("cudnn") if "twin" in res else pd.Series("cudnn", index=res.index)
    ratios = res[(res["impl"] != twin) & res["ratio_to_fused"].notna()]
    if len(ratios):
        sec.key_points.append(_ratio_sentence(ratios))
        wide = ratios.pivot_table(index=["cell", *SHAPE, "shape", "mode"], columns="impl", values="ratio_to_fused", aggfunc="first")  # shape names the workload
        wide.columns = [f"{c} / {'twin' if 'twin' in res and (res['twin'] == 'scan').any() else 'fused'}" for c in wide.columns]
        wide = wide.reset_index().drop(columns=SHAPE)  # sorted by the numbers, shown as one label
        sec.summaries.append(("Time over the fused kernel's (1: as fast; below 1: faster)", wide))
        sec.figures.append(("ratio", "Median time of each impl over the fused kernel's (cuDNN on a GPU, PyTorch's own on a CPU), per "
                            "cell and shape; dashed: 1, as fast.",
                            partial(bars_by_shape, ratios, "ratio_to_fused", "time / fused kernel's", figures.fixed_title("time over the fused kernel", fixed), line=1.0)))
    if "ratio_to_reference" in res and res["ratio_to_reference"].notna().any():
        ref = res[res["ratio_to_reference"].notna() & ~res["impl"].str.endswith(" (reference)")]
        who = res.loc[res["impl"].str.endswith(" (reference)"), "impl"].iloc[0].removesuffix(" (reference)")
        sec.key_points.append(f"Against {who}, timed interleaved in the same points on the same data (time over its; below 1: faster): "
                              + "; ".join(f"{r.impl} {r.cell} {r.ratio_to_reference:.2f} at {r.shape}" for r in ref.sort_values(["cell", "impl", *SHAPE]).itertuples())
                              + ".")
    lengths = res[res["workload"] == "cell"] if "workload" in res else res
    if lengths["seq_len"].nunique() >= 3:
        sec.figures.append(("length", "Median time of one layer's call against the sequence length (log-log), one panel per cell, one colour "
                            "per impl: a loop's time grows as T; a scan's as T log T in work but log T in depth.",
                            partial(figures.panels_of_lines, lengths.assign(time_ms=lengths["ms_median"]), "seq_len", "time_ms", panel="cell",
                                    hue="impl", title=figures.fixed_title("time against length", fixed_settings(lengths, settings, untitled)),
                                    xlabel="sequence length T", ylabel="ms per call", logx=True, runs=None)))
    above = res[res["peak_fraction"] > 1]
    if len(above):
        tf32 = manifest.get("environment", {}).get("cudnn_allow_tf32")
        sec.key_points.append(f"{len(above)} timings run above the matmul peak ({', '.join(sorted(above['impl'].unique()))}, up to "
                              f"{above['peak_fraction'].max():.2f}): the peak is a full-precision {above['dtype'].iloc[0]} matmul"
                              + (", and cuDNN runs float32 recurrent layers in TF32 here (cudnn_allow_tf32 in the manifest)." if tf32 else "."))
    sec.figures.append(("tokens", "Tokens (steps x batch) per second, per impl, cell and shape (log axis: points, not bars).",
                        partial(bars_by_shape, res, "tokens_per_s", "tokens per second", figures.fixed_title("throughput", fixed), log=True)))
    sec.figures.append(("peak", "Share of the matmul peak measured in the same point: the achieved matmul FLOP rate (the FLOP count "
                        "of timing.layer_flops) over an n x n matmul's.",
                        partial(bars_by_shape, res, "peak_fraction", "share of the matmul peak", figures.fixed_title("peak fraction", fixed))))
    shares = [c for c in res if c.startswith("share_")]
    if shares and res[shares].notna().any().any():
        profiled = res[res[shares].notna().any(axis=1)]
        sec.tables.append(("Where the time goes: shares of the profiled wall time (torch.profiler; 'Python and dispatch' is the "
                           "wall time no kernel accounts for, the profiler's own overhead included)",
                           profiled[["cell", "impl", "shape", *shares]].rename(columns=lambda c: c.removeprefix("share_").replace("_", " "))))
    sec.tables.append(("Every timing", res[[c for c in ["cell", "impl", "shape", "mode", "ms_median", "ms_iqr", "spread", "noisy", "attempts",
                                                        "tokens_per_s", "gflops", "peak_fraction", "peak_mem_bytes", "backend", "ratio_to_fused"] if c in res]]))
    return sec
