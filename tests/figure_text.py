"""Where a figure's words are, as matplotlib's renderer places them: every title, axis label and tick label that is
drawn, and the boxes of the axes and legends; and which of them run into each other."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np


def _drawn_ticklabels(axis) -> list:
    """The tick labels the axis draws: those whose place lies in its view, compared on the axis's own scale
    (matplotlib keeps labels for ticks outside it, placed but not drawn)."""
    scale = axis.get_transform().transform
    lo, hi = sorted(float(v) for v in scale(np.array(axis.get_view_interval(), dtype=float)))
    slack = (hi - lo) * 1e-9
    which = 1 if axis.axis_name == "y" else 0
    return [t for t in axis.get_majorticklabels() + axis.get_minorticklabels()
            if lo - slack <= float(scale(np.array([t.get_position()[which]], dtype=float))[0]) <= hi + slack]


def words_and_boxes(fig: plt.Figure) -> tuple[list, list]:
    """(what, its box in pixels) for every drawn text that labels something (suptitle, titles, axis labels, tick
    labels), and for every visible axes and legend: the figure drawn once first, so that the boxes are final."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = []

    def add(kind: str, text) -> None:
        if text is not None and text.get_visible() and text.get_text().strip():
            texts.append((f"{kind} {text.get_text()!r}", text.get_window_extent(renderer)))

    for sup in (fig._suptitle, fig._supxlabel, fig._supylabel):
        add("figure title or label", sup)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for text in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label):
            add("label", text)
        for axis in (ax.xaxis, ax.yaxis):
            for text in _drawn_ticklabels(axis):
                add("tick", text)
    boxes = [(f"the axes of {ax.get_title() or ax.get_label() or 'a colour bar'!r}", ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible()]
    boxes += [("a legend", legend.get_window_extent(renderer)) for legend in fig.legends]
    return texts, boxes


def overlaps(fig: plt.Figure, pad: float = 0.5) -> list[tuple[str, str]]:
    """Pairs that run into each other by more than `pad` pixels each way: two texts, or a text and an axes or a
    legend (a colour bar over an axis label, a panel's tick labels inside its neighbour)."""
    texts, boxes = words_and_boxes(fig)

    def hit(a, b) -> bool:
        return a.x0 + pad < b.x1 and b.x0 + pad < a.x1 and a.y0 + pad < b.y1 and b.y0 + pad < a.y1

    found = [(n1, n2) for (n1, b1), (n2, b2) in itertools.combinations(texts, 2) if hit(b1, b2)]
    found += [(n1, n2) for n1, b1 in texts for n2, b2 in boxes if hit(b1, b2)]
    return found
