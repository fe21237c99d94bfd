"""Plot helpers in seaborn's style: (df, roles) -> Figure. They draw; they never compute."""

from __future__ import annotations

import functools
import logging
import textwrap

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files, not windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

CELL_ORDER = ("linear", "diagonal", "rnn", "gru", "lstm", "lru", "mingru", "minlstm")  # simplest first, the classics before the 2020s' cells
NAMELESS = {"model", "split", "quantity", "recorded"}  # panels and legend entries named by their value alone
PAGE_PX = 1060  # the report's column (1100 px less its padding): a wider PNG is shrunk, and its text with it
DPI = 110
PAGE_IN = PAGE_PX / DPI
TITLE_CHARS_PER_IN = 12  # characters of a 9 pt title per inch of panel (DejaVu Sans averages about 5.5 pt a character)
MIN_FONT_PT = 7.0  # 10.7 px at DPI: the smallest text a figure may carry, at the page's own width
# every figure, every study; the modern cells' from outside seaborn's deep and dark palettes, which name everything else
CELL_COLOURS = {"linear": "#7f7f7f", "diagonal": "#262626", "rnn": "#4c72b0", "gru": "#dd8452", "lstm": "#55a868",
                "lru": "#e7298a", "mingru": "#1b9e77", "minlstm": "#7570b3"}
IMPL_COLOURS = {"scratch": "#8172b3", "cudnn": "#937860", "scratch-graph": "#da8bc3", "scratch-compiled": "#8c8c8c", "book": "#ccb974"}
SHADES = (("forget bias", -0.45), ("reset_before", -0.45), ("cudnn", 0.45), ("scan", 0.45), ("(plain)", 0.5))  # a cell's variants: darker or lighter than the cell
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN")


def subplots(*args, **kwargs):
    """plt.subplots in gradlab's style (set once, on first use)."""
    set_style()
    return plt.subplots(*args, **kwargs)


@functools.cache  # once per process: the theme and the installed fonts do not change while it runs
def set_style() -> None:
    """seaborn's theme at the page's sizes, with a CJK font after DejaVu Sans where one is installed (the lyrics
    are Chinese): matplotlib falls back glyph by glyph along the list."""
    from matplotlib import font_manager

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in CJK_FONTS if f in installed][:1]
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # a CJK font of weight 500 only is no news per figure
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", *cjk]
    plt.rcParams["font.family"] = ["DejaVu Sans", *cjk]  # named, not 'sans-serif': matplotlib falls back only along named families
    plt.rcParams["savefig.dpi"] = DPI


def cjk_font() -> str | None:
    """The CJK font figures fall back to, or None (Chinese text would draw as boxes: install fonts-noto-cjk)."""
    return next((f for f in plt.rcParams["font.sans-serif"] if f in CJK_FONTS), None)


def ordered(values, order: tuple = CELL_ORDER) -> list:
    """Numbers sorted; known names in `order`, then the rest in their own order."""
    values = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return [v for v in order if v in values] + [v for v in values if v not in order]


def model_colour(label) -> tuple | None:
    """A model label's colour: its cell's (rnn blue, gru orange, lstm green, linear grey; the diagonal recurrence dark
    grey, lru magenta, mingru teal, minlstm violet), darker for a forget bias or the reset_before GRU, lighter for the fused
    impl, the scan or a diagonal recurrence without its normalisation (plain); None for a label that names no cell."""
    text = str(label)
    cell = text.split(" ")[0].rstrip(",")
    if cell not in CELL_COLOURS:
        return None
    rgb = np.array(matplotlib.colors.to_rgb(CELL_COLOURS[cell]))
    rest = text[len(cell):]
    for token, amount in SHADES:
        if token in rest:
            rgb = rgb * (1 + amount) if amount < 0 else rgb + (1 - rgb) * amount
    return tuple(float(v) for v in rgb)


def palette(values, ordered_values: bool = False, hue: str | None = None) -> dict:
    """One colour per value, the same in every figure and study: fixed colours for models and cells
    (model_colour) and impls, a sequential map for ordered quantities (steps, scales) with many values,
    distinct colours by sorted value otherwise."""
    values = sorted(dict.fromkeys(values), key=lambda v: (str(type(v)), v))
    if hue == "impl":  # fixed colours, none a cell's; a new impl gets one of the rest
        spare = iter(c for c in sns.color_palette("deep", 10)[3:] if matplotlib.colors.to_hex(c) not in IMPL_COLOURS.values())
        return {v: IMPL_COLOURS.get(v) or next(spare, (0.3, 0.3, 0.3)) for v in values}
    fixed = {v: model_colour(v) for v in values}
    if values and all(c is not None for c in fixed.values()):
        seen: dict = {}
        for v in ordered(values):  # two labels of one shade (say forget bias 1 and 2): the later one darker still
            c = fixed[v]
            while c in seen.values():
                c = tuple(x * 0.75 for x in c)
            seen[v] = c
        return seen
    if ordered_values:  # steps, scales, lags: a sequential map, never the colours the cells own
        return dict(zip(values, sns.color_palette("viridis", len(values))))
    owned = {*CELL_COLOURS.values(), *IMPL_COLOURS.values()}  # a cell's or an impl's colour never names anything else
    spare = [c for c in sns.color_palette("deep", 10) if matplotlib.colors.to_hex(c) not in owned]
    spare += [c for c in sns.color_palette("dark", 10) if c not in spare and matplotlib.colors.to_hex(c) not in owned]
    return {v: spare[i % len(spare)] for i, v in enumerate(values)}


def legend_below(fig: plt.Figure, handles: dict, fontsize: float = 8, facecolor: str | None = None) -> None:
    """The legend under the panels, in as many columns as the page's width holds (none on top of a line);
    on a `facecolor` box where its colours need one (white lines)."""
    if not handles:
        return
    longest = max(len(str(k)) for k in handles)
    per_entry = 0.5 + longest * fontsize * 0.55 / 72  # inches: the handle and the text
    ncol = max(1, min(len(handles), int((min(fig.get_figwidth(), PAGE_IN) - 0.2) // per_entry)))
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=fontsize,
               frameon=facecolor is not None, facecolor=facecolor)


def panel_grid(n: int, col_wrap: int = 3, width: float = 3.0, height: float = 2.4, extra_h: float = 0.9, **kw):
    """n panels in rows of at most col_wrap, as wide as the page allows."""
    cols = max(1, min(n, col_wrap))
    rows = -(-n // cols)
    w = min(width, (PAGE_IN - 0.7) / cols)
    return subplots(rows, cols, figsize=(w * cols + 0.7, height * rows + extra_h), squeeze=False, **kw)


def save(fig: plt.Figure, path) -> None:
    """The PNG for the page and an SVG beside it (vector, for papers). A figure wider than the page is
    drawn at a lower resolution so that the page shows it at its own size (a test keeps them within)."""
    from pathlib import Path

    path = Path(path)
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width + 0.2  # inches, with bbox_inches="tight"'s padding
    # gradlab's mark inside each (gradlab.folder.marked): a run folder knows its own figures by it, whatever its manifest says
    fig.savefig(path, dpi=min(DPI, PAGE_PX / width), bbox_inches="tight", metadata={"gradlab": "a figure of a run folder"})
    fig.savefig(path.with_suffix(".svg"), bbox_inches="tight", metadata={"Creator": "gradlab", "Date": None})


LOG_LABELS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))  # fewest labels first
LABEL_GAP_PX = 16  # a tick label is about 12 px high at DPI: labels closer than this run into each other


def powers_of_ten_only(ax: plt.Axes) -> None:
    """Log y labels that do not run into each other on a short panel (matplotlib labels 2, 3, 4, 6 x 10^k between the
    powers of ten, which overlap there): the fewest of powers of ten, then 2 and 5 x 10^k, then more, that give two
    labels or more at least LABEL_GAP_PX apart; powers of ten alone where even the fewest are closer. A view too
    narrow for two of any of them keeps matplotlib's own labels. Call it once the limits are set."""
    if ax.get_yscale() != "log":
        return
    lo, hi = sorted(ax.get_ylim())
    if lo <= 0 or hi <= lo:
        return
    px_per_decade = ax.get_window_extent().height / np.log10(hi / lo)
    for subs in LOG_LABELS:
        marks = sorted(np.log10(m) + k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1) for m in subs
                       if lo <= m * 10.0**k <= hi)
        if len(marks) < 2:
            continue  # too few here: try more
        if min(np.diff(marks)) * px_per_decade < LABEL_GAP_PX:  # too close already: more would be closer still
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        elif subs == (1.0,):
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(base=10, subs=subs[1:]))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(np.inf, np.inf)))
        return


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
                    style: str | None = None, col_wrap: int = 3, log: bool = True, logx: bool = False,
                    cap: float | None = None, sharey: bool = True, runs: str | None = "point") -> plt.Figure:
    """One panel per value of `panel`, lines of y against x on a log axis coloured by `hue` (one colour per
    value across panels). Exact zeros cannot sit on a log axis: they are marked at the panel's floor as
    'x', and the legend says so. `baseline` draws a dashed horizontal line (e.g. 1 for loss / baseline).
    A run that diverged (its row's `diverged` true, or y infinite) is drawn up to its divergence and marked
    there at the top of the axis ('X'); a line of three points or fewer carries markers, so that it shows.
    Several runs at each x (seeds, each a `runs` value): their median and middle half, ended where fewer than
    half of them are still there (runs that solved and stopped would otherwise leave a median of the rest).
    sharey False: each panel its own y range (two panels of very different scales)."""
    df = df.assign(**{c: named_missing(df[c]) for c in {panel, hue, style} - {None}})
    broke = ~np.isfinite(df[y].astype(float)) & df[y].notna()
    if "diverged" in df:
        broke |= df["diverged"].fillna(False).astype(bool)
    finite = df[y][np.isfinite(df[y].astype(float)) & ~broke]
    top = cap if cap is not None else (float(finite.max()) * (3 if log else 1.1) if len(finite) else 1.0)
    df = df.assign(**{y: df[y].where(~broke, top)}, _broke=broke)
    if cap is not None:  # values beyond the cap are drawn at it (a diverged run should not squash the others)
        df = df.assign(**{y: df[y].clip(upper=cap)})
    order = panel_order or ordered(df[panel].unique())
    n = len(order)
    fig, axes = panel_grid(n, col_wrap, sharex=True, sharey=sharey)
    cols = axes.shape[1]
    colours = palette(df[hue].unique(), ordered_values=hue in ("step", "init_scale", "seq_len"), hue=hue)
    styles = {v: ls for v, ls in zip(ordered(df[style].unique()), ("-", "--", ":", "-."))} if style else {None: "-"}
    positive = df[y][(df[y] > 0) & np.isfinite(df[y])]
    floor = positive.min() / 3 if len(positive) else 1e-12
    zeros_at_floor = zeros_at_floor and log
    has_zero = banded = diverged = False
    broken_at: list = []
    for ax, value in zip(axes.flat, order):
        g = df[df[panel] == value]
        for (h, st), line in g.groupby([hue, style] if style else [hue, panel], sort=False, dropna=False):
            line = line.sort_values(x)
            pos = line[line[y] > 0] if log else line[line[y].notna()]
            label = (str(h) if hue in NAMELESS else f"{hue} {h}") + (f", {style} {st}" if style else "")
            ls = styles.get(st if style else None, "-")
            marker = "o" if pos[x].nunique() <= 3 else None  # too few points for a line to be seen
            if pos[x].duplicated().any():  # several runs (seeds) at each x: their median, and a band over their middle half
                banded = True
                if runs in line:  # the median only while at least half of the runs are still there
                    present = line.groupby(x)[runs].nunique()
                    pos = pos[pos[x].isin(present.index[present * 2 >= line[runs].nunique()])]
                sns.lineplot(data=pos, x=x, y=y, estimator="median", errorbar=("pi", 50), color=colours[h], ls=ls, lw=1.4,
                             label=label, ax=ax, legend=False, marker=marker, ms=4)
            else:
                ax.plot(pos[x], pos[y], color=colours[h], ls=ls, lw=1.4, label=label, marker=marker, ms=4)
            ends = line[line["_broke"]]
            if len(ends):
                diverged = True
                broken_at.append((ax, ends[x].to_numpy(), ends[y].to_numpy(), colours[h]))
            zero = line[line[y] == 0]
            if zeros_at_floor and len(zero):
                has_zero = True
                ax.plot(zero[x], np.full(len(zero), floor), "x", color=colours[h], ms=5)
        _mark_divergences(fig, broken_at)
        broken_at = []
        if baseline is not None:
            ax.axhline(baseline, color="0.3", ls="--", lw=1)
        ax.set_yscale("log" if log else "linear")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_title(str(value) if panel in NAMELESS else f"{panel} {value}", fontsize=9)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        powers_of_ten_only(ax)
    for k, ax in enumerate(axes.flat[:n]):
        if k + cols >= n:  # nothing drawn below it: its column's x axis is labelled here
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    seen = {}  # one plain line per entry: the legend shows colour and dash, never one line's markers
    for ax in axes.flat[:n]:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lb, plt.Line2D([], [], color=hd.get_color(), ls=hd.get_linestyle(), lw=1.4) if isinstance(hd, plt.Line2D) else hd)
    if has_zero:
        seen["exactly 0 (marked at the floor)"] = plt.Line2D([], [], marker="x", ls="", color="0.3")
    if diverged:
        seen["diverged here (drawn at the top)" if cap is None else f"diverged here (drawn at {cap:,g})"] = plt.Line2D([], [], marker="X", ls="", color="0.5", mec="black", mew=0.6, ms=7)
    if baseline is not None:
        seen["baseline"] = plt.Line2D([], [], ls="--", color="0.3")
    if banded:
        seen["median of the seeds, while at least half run; band: their middle 50%"] = plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.35)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    legend_below(fig, seen)
    return fig


def _mark_divergences(fig: plt.Figure, marks: list) -> None:
    """An 'X' where each run diverged; runs that diverged at the same place side by side (7 pt apart), so
    that every one of them shows."""
    from matplotlib.transforms import offset_copy

    spots: dict = {}
    for ax, xs, ys, colour in marks:
        for xv, yv in zip(xs, ys):
            spots.setdefault((id(ax), xv, yv), (ax, []))[1].append(colour)
    for (_, xv, yv), (ax, colours) in spots.items():
        for i, colour in enumerate(colours):
            shift = offset_copy(ax.transData, fig=fig, x=7 * (i - (len(colours) - 1) / 2), units="points")
            ax.plot([xv], [yv], "X", color=colour, ms=7, mec="black", mew=0.6, transform=shift, clip_on=False)


def heatmaps(df: pd.DataFrame, rows: str, cols: str, values: str, panel: str, title: str, center: float = 1.0,
             weak: str | None = None, weak_below: float = 0.95, fmt: str = ".3f", row_order: list | None = None) -> plt.Figure:
    """One heatmap per value of `panel`, on one shared colour scale centred at `center`. Where the column
    `weak` is under `weak_below` (a poor fit), the number is written '~x' in grey: not a crisp rate.
    A panel's title is wrapped to its panel's width (long quantity names would run into the next panel's), and
    the colour bar has a row of its own under the panels, so that it covers no axis label."""
    panels = list(dict.fromkeys(df[panel]))
    finite = df[values][np.isfinite(df[values])]
    span = max(abs(finite.max() - center), abs(finite.min() - center), 1e-9) if len(finite) else 1.0
    label_w = 0.09 * max(len(str(v)) for v in df[rows].unique()) + 0.4  # inches for the row labels
    panel_w = max(0.62 * df[cols].nunique() + 0.3, 1.7)  # 0.62 in a cell holds '~0.999' at 8 pt; 1.7 in: a title of 20 characters a line
    per_row = max(1, min(len(panels), int((PAGE_IN - label_w - 0.9) // panel_w)))
    n_rows = -(-len(panels) // per_row)
    titles = [textwrap.fill(str(v), max(12, int((panel_w - 0.15) * TITLE_CHARS_PER_IN))) for v in panels]
    title_lines = max(t.count("\n") + 1 for t in titles)
    row_h = 0.4 + 0.3 * df[rows].nunique() + 0.16 * title_lines  # inches: the cells, the x ticks and label, the title
    set_style()
    fig = plt.figure(figsize=(label_w + 0.9 + panel_w * per_row, 0.6 + row_h * n_rows + 0.8))
    grid = fig.add_gridspec(n_rows + 1, per_row, height_ratios=[row_h] * n_rows + [0.12])
    axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(per_row)] for i in range(n_rows)])
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    present = set(df.dropna(subset=[values])[rows]) or set(df[rows])
    every_row = [r for r in (row_order or ordered(df[rows].unique())) if r in present]
    for k, (ax, value) in enumerate(zip(axes.flat, panels)):
        g = df[df[panel] == value]
        wide = g.pivot_table(index=rows, columns=cols, values=values, aggfunc="first", dropna=False)
        wide = wide.reindex(every_row)  # every panel's rows in one order, blank where a panel has none: the labels on the left read across
        text = wide.map(lambda v: "" if pd.isna(v) else format(v, fmt))
        if weak:
            fit = g.pivot_table(index=rows, columns=cols, values=weak, aggfunc="first", dropna=False).reindex(wide.index)
            text = text.where(~(fit < weak_below), "~" + text)
        sns.heatmap(wide, annot=text, fmt="", cmap="vlag", center=center, vmin=center - span, vmax=center + span, ax=ax,
                    cbar=False, linewidths=0.5, annot_kws={"fontsize": 8})
        ax.grid(False)  # the theme's grid would cross the blank cells
        ax.set_title(titles[k], fontsize=9)
        first = k % per_row == 0
        ax.set_ylabel(rows if first else "")
        if not first:
            ax.set_yticklabels([])
        ax.set_xlabel(cols)
        long_ticks = max((len(str(c)) for c in wide.columns), default=0) > 5
        ax.tick_params(axis="x", labelrotation=90 if long_ticks else 0)
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle(title, fontsize=10)
    bar = fig.add_subplot(grid[n_rows, :])
    mappable = plt.cm.ScalarMappable(cmap="vlag", norm=matplotlib.colors.Normalize(center - span, center + span))
    fig.colorbar(mappable, cax=bar, orientation="horizontal", label=values)
    fig.tight_layout()  # the colour bar's row is a row of the grid: its ticks and label are laid out like any panel's
    box = bar.get_position()
    width = min(box.width, 4.0 / fig.get_figwidth())  # at most 4 in long, centred under the panels
    bar.set_position([box.x0 + (box.width - width) / 2, box.y0, width, box.height])
    return fig


def bars(df: pd.DataFrame, x: str, y: str, hue: str | None, title: str, ylabel: str, order: list | None = None) -> plt.Figure:
    """Bars of y per x (and hue), in the fixed colours of models and impls; the legend below."""
    order = order or ordered(df[x].unique())
    fig, ax = subplots(figsize=(min(PAGE_IN - 0.4, 2.0 + 0.5 * len(order) * max(1, df[hue].nunique() if hue else 1)), 3.2))
    key = hue or x
    colours = palette(df[key].unique(), hue=key)
    sns.barplot(data=df, x=x, y=y, hue=key, ax=ax, errorbar=None, order=order, palette=colours, legend=bool(hue), saturation=1,
                hue_order=ordered(df[key].unique()) if hue else order)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if hue and ax.get_legend() is not None:
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
        fig.tight_layout()
        legend_below(fig, dict(zip(labels, handles)))
    else:
        fig.tight_layout()
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)


PROBE_MARKERS = {  # marker, colour, face, size, label: distinct in shape and colour, the larger one hollow, so none hides another
    "jacobian": ("s", "#1b9e77", "none", 9, "measured, ||ds_T/ds_t||"),
    "hidden": ("o", "#d95f02", None, 5.5, "measured, ||dL/dh_t||"),
    "independent": ("x", "#7570b3", None, 7, "measured, fresh random gradient each step"),
    "input": ("^", "#e7298a", None, 6, "measured, ||dL/dx_t||"),
}


def theory_against_measured(theory: pd.DataFrame, measured: pd.DataFrame, edge: pd.DataFrame, title: str, panel_order: list) -> plt.Figure:
    """One panel per model: the predicted factor per step against init_scale (line), the measured ones (points,
    one marker and colour per probe), 1 (dashed) and the edge of chaos (dotted, where the prediction crosses 1)."""
    n = len(panel_order)
    fig, axes = panel_grid(n, 3, height=2.5)
    for ax, model in zip(axes.flat, panel_order):
        line = theory[theory["model"] == model].sort_values("init_scale")
        ax.plot(line["init_scale"], line["predicted_factor"], "-", color="#2c7fb8", lw=1.6, label="mean-field prediction")
        for probe in [p for p in PROBE_MARKERS if p in set(measured["probe"])] + sorted(set(measured["probe"]) - set(PROBE_MARKERS)):
            g = measured[(measured["model"] == model) & (measured["probe"] == probe)]
            marker, colour, face, size, label = PROBE_MARKERS.get(probe, ("d", "0.3", None, 6, probe))
            ax.plot(g["init_scale"], g["factor_per_step"], marker, color=colour, mfc=face or colour, ms=size, mew=1.3, ls="", label=label)
        ax.axhline(1.0, color="0.4", ls="--", lw=1)
        for x in edge.loc[edge["model"] == model, "edge_init_scale"].dropna():
            ax.axvline(x, color="0.2", ls=":", lw=1.2, label=f"edge of chaos, {x:.2f}")
        ax.set_title(str(model), fontsize=9)
        ax.set_xlabel("init_scale (recurrent spectral norm)")
        ax.set_ylim(0, 2)  # the region around 1 that matters; the linear cell's line runs on past it
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("factor per step")
    handles = {}
    for ax in axes.flat[:n]:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb if not lb.startswith("edge") else "edge of chaos (prediction = 1)", h)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    legend_below(fig, handles)
    return fig


def finite_size(df: pd.DataFrame, title: str) -> plt.Figure:
    """|measured - predicted| factor against hidden size (log-log), one line per model and probe."""
    fig, ax = subplots(figsize=(6.2, 3.8))
    colours = palette(df["model"].unique(), hue="model")
    for (model, probe), g in df.groupby(["model", "probe"], sort=True):
        g = g.sort_values("hidden_size")
        ax.plot(g["hidden_size"], g["abs_error"], "o-" if probe == "hidden" else "x--", color=colours[model], label=f"{model}, {probe}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden size H")
    ax.set_ylabel("|measured - predicted| factor")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=10)
    for ax in fig.axes:
        powers_of_ten_only(ax)
    fig.tight_layout()
    return fig


def spectra(q: pd.DataFrame, title: str, panel_order: list) -> plt.Figure:
    """One panel per model: the singular values of ds_T/ds_t against distance (median line, 25-75% and 5-95%
    bands, largest dotted), their RMS (solid) and the mean-field RMS prediction factor^distance (dashed)."""
    n = len(panel_order)
    fig, axes = panel_grid(n, 3, height=2.5, sharey=True)
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
    for ax in axes[:, 0]:
        ax.set_ylabel("singular values of ds_T-1/ds_t")
    handles = dict(zip(*axes.flat[0].get_legend_handles_labels()[::-1]))
    fig.suptitle(title, fontsize=10)
    for ax in fig.axes:
        powers_of_ten_only(ax)
    fig.tight_layout()
    legend_below(fig, handles)
    return fig


def success_rates(df: pd.DataFrame, panel: str, title: str, model_order: list) -> plt.Figure:
    """The share of seeds that solved against the lag (log axis, ticks at the lags tried), one line per model
    with its own marker and dashes, so that models at the same rate stay visible; one panel per `panel`."""
    panels = ordered(df[panel].unique())
    fig, axes = panel_grid(len(panels), 2 if len(panels) == 4 else 3, width=3.6, height=2.6, sharey=True)
    colours = palette(model_order, hue="model")
    lags = sorted(df["seq_len"].unique())
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, value in zip(axes.flat, panels):
        g = df[df[panel] == value]
        sns.lineplot(data=g, x="seq_len", y="solved_rate", hue="model", style="model", hue_order=model_order, style_order=model_order,
                     palette=colours, markers=True, dashes=True, errorbar=None, ax=ax, legend=ax is axes.flat[0], markersize=7)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xscale("log")
        ax.set_xticks(lags, [str(v) for v in lags])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(str(value), fontsize=9)
        ax.set_xlabel("lag (seq_len, steps)")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of seeds solved")
    legend = axes.flat[0].get_legend()
    handles = {}
    if legend is not None:
        handles = dict(zip(*axes.flat[0].get_legend_handles_labels()[::-1]))
        legend.remove()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    legend_below(fig, handles)
    return fig


def steps_to_solve(df: pd.DataFrame, panel: str, title: str, model_order: list) -> plt.Figure:
    """Steps to solve against the lag (log axes), one panel per `panel`, one colour per model: each run a
    point, a run that did not solve within its budget (the steps setting) a triangle above the budget line
    (censored: more than the budget), and a line through the median over seeds (counting those as beyond
    the budget; where fewer than half solved, the line stops at the budget with an open triangle)."""
    panels = ordered(df[panel].unique())
    fig, axes = panel_grid(len(panels), 2 if len(panels) == 4 else 3, width=3.6, height=2.6, sharey=True)
    colours = palette(model_order, hue="model")
    lags = sorted(df["seq_len"].unique())
    budget = float(df["steps"].max())
    above = budget * 1.35  # where censored runs are drawn
    models = [m for m in model_order if m in set(df["model"])]
    offsets = {m: 1 + 0.04 * (i - (len(models) - 1) / 2) for i, m in enumerate(models)}  # models side by side at a lag
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, value in zip(axes.flat, panels):
        g = df[df[panel] == value]
        for model in models:
            m = g[g["model"] == model]
            if not len(m):
                continue
            solved = m["solved"].astype(bool)
            x = m["seq_len"].astype(float) * offsets[model]
            ax.scatter(x[solved], m.loc[solved, "steps_to_solve"].astype(float), color=colours[model], s=16, alpha=0.8, zorder=3)
            ax.scatter(x[~solved], np.full((~solved).sum(), above), color=colours[model], marker="^", s=22, alpha=0.8, zorder=3)
            medians = []
            for lag, per_lag in m.groupby("seq_len"):
                values = np.sort(np.where(per_lag["solved"].astype(bool), per_lag["steps_to_solve"].astype(float), np.inf))
                middle = values[(len(values) - 1) // 2 : len(values) // 2 + 1]
                medians.append((lag * offsets[model], float(middle.mean()) if np.isfinite(middle).all() else np.inf))
            xs, ys = zip(*medians)
            ys = np.array(ys)
            ax.plot(xs, np.where(np.isfinite(ys), ys, above), color=colours[model], lw=1.2, label=model)
        ax.axhline(budget, color="0.3", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lags, [str(v) for v in lags])
        ax.minorticks_off()
        ax.set_title(str(value), fontsize=9)
        ax.set_xlabel("lag (seq_len, steps)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"steps to solve (triangles: > {budget:,.0f})")
    handles = {m: plt.Line2D([], [], color=colours[m], lw=1.2, marker="o", markersize=4) for m in models}
    handles[f"not solved within {budget:,.0f} steps"] = plt.Line2D([], [], color="0.3", lw=0, marker="^", markersize=5)
    fig.suptitle(title, fontsize=10)
    for ax in fig.axes:
        powers_of_ten_only(ax)
    fig.tight_layout()
    legend_below(fig, handles)
    return fig


def _flow_grid(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The rows (module and layer) and columns (state parts, h before c) of a flow figure's grid."""
    rows = list(dict.fromkeys(df["module"].replace("", "model").astype(str) + " layer " + df["layer"].astype(str)))
    cols = [w for w in ("h", "c") if w in set(df["wrt"])] + sorted(set(df["wrt"]) - {"h", "c"})
    return rows, cols


def flow_over_training(df: pd.DataFrame) -> plt.Figure:
    """gradlab.flow's records: ||dL/ds_t|| against distance from the loss, one line per recorded training step
    coloured along a colour bar (early dark, late light: no legend however many steps), a grid of panels with one
    row per module and layer and one column per state part (dL/dh, the total dL/dc). The y axis is named once for
    the figure (a label per row would be longer than its row), the x axis under each column's lowest panel, and
    a layer without a state part (a GRU beside an LSTM has no c) gets no empty panel."""
    df = df.assign(where=df["module"].replace("", "model").astype(str) + " layer " + df["layer"].astype(str))
    rows, cols = _flow_grid(df)
    set_style()
    row_h = 2.3
    fig = plt.figure(figsize=(min(PAGE_IN, 3.4 * len(cols) + 1.2), 0.5 + row_h * len(rows) + 0.8))
    grid = fig.add_gridspec(len(rows) + 1, len(cols), height_ratios=[row_h] * len(rows) + [0.1])
    steps = sorted(df["step"].unique())
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=min(steps), vmax=max(steps) if max(steps) > min(steps) else min(steps) + 1)
    axes: dict = {}
    for i, where in enumerate(rows):
        for j, wrt in enumerate(cols):
            g = df[(df["where"] == where) & (df["wrt"] == wrt)]
            if not len(g):  # no such state part in this layer
                continue
            ax = axes[i, j] = fig.add_subplot(grid[i, j], sharex=next(iter(axes.values()), None))
            for step, line in g.groupby("step"):
                line = line.groupby("distance")["grad_norm"].mean()  # several calls in a step: their mean
                positive = line[line > 0]
                ax.plot(positive.index, positive.to_numpy(), color=cmap(norm(step)), lw=1.1)
            ax.set_yscale("log")
            ax.set_title(f"{where}, dL/d{wrt}", fontsize=9)
    for (i, j), ax in axes.items():
        lowest = not any((k, j) in axes for k in range(i + 1, len(rows)))
        ax.xaxis.set_tick_params(labelbottom=lowest)
        ax.set_xlabel("steps before the last (T-1-t)" if lowest else "")
    fig.supylabel("||dL/ds_t|| (RMS over the batch)", fontsize=9)
    fig.suptitle("Gradient flow while learning (gradlab.flow.watch)", fontsize=10)
    bar = fig.add_subplot(grid[len(rows), :])
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal", label="training step")
    for ax in fig.axes:
        powers_of_ten_only(ax)
    fig.tight_layout()
    box = bar.get_position()
    width = min(box.width, 4.0 / fig.get_figwidth())
    bar.set_position([box.x0 + (box.width - width) / 2, box.y0, width, box.height])
    return fig


def flow_at_distances(df: pd.DataFrame, distances: tuple[int, ...]) -> plt.Figure:
    """gradlab.flow's records: ||dL/ds_t|| at fixed distances from the loss against the training step, one line per
    distance (a sequential colour), one panel per module, layer and state part."""
    df = df[df["distance"].isin(distances)]
    where = df["module"].replace("", "model").astype(str) + " layer " + df["layer"].astype(str) + ", dL/d" + df["wrt"].astype(str)
    df = df.assign(recorded=where).groupby(["recorded", "distance", "step"], as_index=False, sort=False)["grad_norm"].mean()
    return panels_of_lines(df, x="step", y="grad_norm", panel="recorded", hue="distance", col_wrap=3, panel_order=list(dict.fromkeys(where)),
                           title="Gradient at fixed distances from the loss while learning (gradlab.flow.watch)", xlabel="training step",
                           ylabel="||dL/ds_t|| (RMS over the batch)")


def gradient_flow_figure(tables: dict) -> plt.Figure:
    """gradlab.flow.gradient_flow's tables at a glance: per module and layer, ||dL/dh_t|| (and the total dL/dc_t) and
    ||dL/dx_t|| against distance from the last step, and, where the Jacobian was probed, its largest and median
    singular values (median over the sequences)."""
    res = tables["results"]
    spec = tables.get("spectrum")
    res = res[res["probe"].isin(["hidden", "input"])]
    res = res.assign(where=res["module"].replace("", "model").astype(str) + " layer " + res["layer"].astype(str),
                     quantity=np.where(res["probe"] == "input", "dL/dx", "dL/d" + res["wrt"].astype(str)))
    rows = list(dict.fromkeys(res["where"]))
    n_cols = 2 if spec is not None and len(spec) else 1
    fig, axes = subplots(len(rows), n_cols, figsize=(min(PAGE_IN, 4.2 * n_cols + 1), 2.6 * len(rows) + 0.9), squeeze=False)
    colours = {"dL/dh": "#4c72b0", "dL/dc": "#55a868", "dL/dx": "#c44e52"}
    for i, where in enumerate(rows):
        ax = axes[i, 0]
        for quantity, g in res[res["where"] == where].groupby("quantity", sort=False):
            line = g.groupby("distance")["grad_norm"].mean()
            line = line[line > 0]
            ax.plot(line.index, line.to_numpy(), label=quantity, color=colours.get(quantity), lw=1.3)
        ax.set_yscale("log")
        ax.set_title(f"{where}: gradients", fontsize=9)
        ax.set_xlabel("steps before the last (T-1-t)")
        ax.set_ylabel("norm (RMS over the batch)")
        ax.legend(fontsize=7)
        if n_cols == 2:
            ax = axes[i, 1]
            s = spec[(spec["module"].replace("", "model").astype(str) + " layer " + spec["layer"].astype(str)) == where]
            top = s[s["rank"] == 0].groupby("distance")["singular_value"].median()
            mid = s.groupby(["distance", "sequence"])["singular_value"].median().groupby("distance").median()
            for values, label in ((top, "largest"), (mid, "median")):
                values = values[values > 0]
                ax.plot(values.index, values.to_numpy(), label=label, lw=1.3)
            ax.set_yscale("log")
            ax.set_title(f"{where}: singular values of ds_T-1/ds_t", fontsize=9)
            ax.set_xlabel("steps before the last (T-1-t)")
            ax.legend(fontsize=7)
    fig.suptitle("Gradient flow (gradlab.flow.gradient_flow)", fontsize=10)
    for ax in fig.axes:
        powers_of_ten_only(ax)
    fig.tight_layout()
    return fig
