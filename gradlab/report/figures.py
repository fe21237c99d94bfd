"""Plot functions in seaborn's style: (df, roles) -> Figure. They draw; they never compute."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files, not windows
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def log_lines(df: pd.DataFrame, x: str, y: str, hue: str | None = None, style: str | None = None, col: str | None = None,
              title: str = "", ylabel: str | None = None) -> plt.Figure:
    """Lines of y against x on a log y axis; seeds and repeats drawn as their median."""
    col = col if col and df[col].nunique() > 1 else None
    grid = sns.relplot(data=df, x=x, y=y, hue=hue, style=style, col=col, kind="line", estimator="median",
                       errorbar=None, height=3.4, aspect=1.15, facet_kws={"sharey": True}, col_wrap=min(3, df[col].nunique()) if col else None)
    grid.set(yscale="log")
    grid.set_axis_labels(x, ylabel or y)
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def heatmap(df: pd.DataFrame, index: list[str], columns: str, values: str, title: str = "", fmt: str = ".3f",
            center: float | None = None) -> plt.Figure:
    wide = df.pivot_table(index=index, columns=columns, values=values, aggfunc="first")
    wide.index = ["/".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in wide.index]
    fig, ax = plt.subplots(figsize=(1.3 + 1.1 * max(1, wide.shape[1]), 0.9 + 0.45 * max(1, wide.shape[0])))
    sns.heatmap(wide, annot=True, fmt=fmt, cmap="vlag", center=center, ax=ax, cbar_kws={"label": values})
    ax.set_title(title)
    ax.set_xlabel(columns)
    return fig


def bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    ax.set_title(title)
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)
