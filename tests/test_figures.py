"""Figures as a person sees them: every figure of every study's page drawn from the committed reference runs
fits the page's column at full resolution with no text under 7 pt (10.7 px) and no words that run into each other
or into a panel, the same cell has the same colour in every figure and study, every legend entry is drawn;
divergences and off-axis ends are marked."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from browser import CHROMIUM, layout, screenshot
from figure_text import overlaps

from gradlab.report import figures, render

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("gradient-decay-quick", "long-range-quick", "lyrics-generalise", "clipping-quick", "cliff-quick", "throughput-quick", "throughput-book")
META = ("baseline", "median of the seeds", "exactly 0", "diverged here", "edge of chaos", "start", "end", "mean-field prediction")


def _stats(fig: plt.Figure) -> dict:
    """What a reader meets: the width the PNG takes (inches at DPI), the smallest text, and, per legend entry,
    its colour and whether anything of that colour is drawn in the panels."""
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width + 0.2
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
    drawn = set()
    for ax in fig.axes:
        for line in ax.get_lines():
            if len(line.get_xdata()):
                drawn.add(matplotlib.colors.to_hex(line.get_color()))
        for patch in ax.patches:
            drawn.add(matplotlib.colors.to_hex(patch.get_facecolor()))
        for coll in ax.collections:
            drawn.update(matplotlib.colors.to_hex(c) for c in coll.get_facecolor())
    legend = {}
    for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
        for handle, text in zip(lg.legend_handles, lg.get_texts()):
            colour = handle.get_color() if isinstance(handle, plt.Line2D) else handle.get_facecolor()
            legend[text.get_text()] = matplotlib.colors.to_hex(colour)
    return {"width": width, "smallest": min(t.get_fontsize() for t in texts), "legend": legend, "drawn": drawn, "overlaps": overlaps(fig)}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    """Each study's committed reference run rendered anew (its saved tables only) with the current code;
    every figure's properties caught as it is saved."""
    out, seen = {}, {}
    original = figures.save

    def catching(fig, path):
        seen[Path(path).stem] = _stats(fig)
        original(fig, path)

    figures.save = catching
    try:
        for name in PAGES:
            folder = tmp_path_factory.mktemp("pages") / name
            shutil.copytree(ROOT / "reports" / name, folder, ignore=shutil.ignore_patterns("points", "report.html", "figures"))
            seen = {}
            page = render(folder)
            out[name] = {"folder": folder, "page": page.read_text(encoding="utf-8"), "figures": seen}
    finally:
        figures.save = original
    return out


@pytest.mark.parametrize("name", PAGES)
def test_every_figure_fits_the_page_at_full_resolution_with_readable_text(pages, name):
    for stem, st in pages[name]["figures"].items():
        assert st["width"] * figures.DPI <= figures.PAGE_PX, f"{name}/{stem}: {st['width'] * figures.DPI:.0f} px wide, the page holds {figures.PAGE_PX}"
        assert st["smallest"] >= figures.MIN_FONT_PT, f"{name}/{stem}: text at {st['smallest']} pt"
    pngs = list((pages[name]["folder"] / "figures").glob("*.png"))
    assert len(pngs) == len(pages[name]["figures"]) == pages[name]["page"].count("<img ")  # one file per figure: none overwrote another
    for png in pngs:
        width = int.from_bytes(png.read_bytes()[16:20], "big")  # the PNG header's width
        assert width <= figures.PAGE_PX, png.name
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")  # a vector copy beside it, linked from the page
        assert f'href="figures/{png.stem}.svg"' in pages[name]["page"]


@pytest.mark.parametrize("name", PAGES)
def test_no_figure_has_words_that_run_into_each_other_or_into_a_panel(pages, name):
    """Titles, axis labels and tick labels as the renderer places them: none over another, over an axes (a colour
    bar, a neighbouring panel) or over a legend."""
    found = {stem: st["overlaps"] for stem, st in pages[name]["figures"].items() if st["overlaps"]}
    assert found == {}, f"{name}: {found}"


@pytest.mark.parametrize("name", PAGES)
def test_every_legend_entry_is_drawn(pages, name):
    for stem, st in pages[name]["figures"].items():
        for label, colour in st["legend"].items():
            if not label.startswith(META):
                assert colour in st["drawn"], f"{name}/{stem}: legend entry {label!r} ({colour}) is drawn nowhere"


def test_one_colour_per_cell_across_figures_and_studies(pages):
    colours: dict[str, set] = {}
    for name, page in pages.items():
        for stem, st in page["figures"].items():
            for label, colour in st["legend"].items():
                model = label.removeprefix("model ")
                if figures.model_colour(model) is not None:
                    colours.setdefault(model, set()).add(colour)
    assert {"rnn", "gru", "lstm", "lstm, forget bias 1"} <= set(colours)
    for model, seen in colours.items():
        assert seen == {matplotlib.colors.to_hex(figures.model_colour(model))}, (model, seen)
    assert len({next(iter(colours[m])) for m in ("rnn", "gru", "lstm", "lstm, forget bias 1")}) == 4


def test_every_cell_and_variant_a_study_draws_side_by_side_has_its_own_colour():
    """The curse of memory's figure draws the diagonal recurrence and the lru normalised and plain beside every other cell:
    no two of its labels may share a colour, nor a modern cell take a classic cell's."""
    labels = ["linear", "diagonal (normalised)", "diagonal (plain)", "rnn", "gru", "lstm", "lstm, forget bias 1", "lru (normalised)",
              "lru (plain)", "mingru", "minlstm", "lru scan", "mingru scan", "lstm cudnn"]
    hexes = [matplotlib.colors.to_hex(figures.model_colour(m)) for m in labels]
    assert len(set(hexes)) == len(labels), dict(zip(labels, hexes))


def test_a_page_without_figures_has_no_figures_section(pages):
    assert "<h2>Figures</h2>" not in pages["throughput-book"]["page"]
    assert "<h2>Figures</h2>" in pages["throughput-quick"]["page"]


def test_the_clipping_summary_is_one_paragraph_per_task_with_definitions_folded(pages):
    page = pages["clipping-quick"]["page"]
    key = page.split("<div class='key'>")[1].split("</div>")[0]
    assert key.count("<p>") <= 3  # seeds line aside: lyrics and adding, one paragraph each
    assert "How to read these numbers" in page and "Perplexity is exp" not in key


def test_a_run_that_diverged_at_step_3_is_drawn_to_there_and_marked():
    curves = pd.DataFrame({"step": [0, 3, 0, 50, 100], "loss": [1.0, np.inf, 1.0, 0.5, 0.2], "clip": ["none", "none", "norm:1", "norm:1", "norm:1"],
                           "diverged": [False, True, False, False, False], "panel": "adding"})
    fig = figures.panels_of_lines(curves, "step", "loss", panel="panel", hue="clip", title="t", xlabel="step", ylabel="loss")
    none = matplotlib.colors.to_hex(figures.palette(["none", "norm:1"])["none"])
    ax = fig.axes[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "X" and matplotlib.colors.to_hex(ln.get_color()) == none]
    assert marks and marks[0].get_xdata()[0] == 3  # marked where it diverged
    line = [ln for ln in ax.get_lines() if ln.get_label() == "clip none"][0]
    assert line.get_marker() == "o" and list(line.get_xdata()) == [0, 3]  # too short for a line alone: it carries markers, up to the divergence
    assert any(t.get_text().startswith("diverged here") for t in fig.legends[0].get_texts())
    plt.close(fig)


def test_theory_markers_differ_in_shape_colour_and_fill():
    theory = pd.DataFrame({"model": "rnn", "init_scale": [0.5, 1.0, 1.5], "predicted_factor": [0.5, 0.9, 1.2]})
    measured = pd.DataFrame({"model": "rnn", "init_scale": [1.0, 1.0], "factor_per_step": [0.9, 0.9], "probe": ["hidden", "jacobian"]})
    fig = figures.theory_against_measured(theory, measured, pd.DataFrame({"model": [], "edge_init_scale": []}), "t", ["rnn"])
    points = {ln.get_marker(): ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "None"}
    assert set(points) == {"o", "s"}
    assert points["o"].get_color() != points["s"].get_color() and points["s"].get_markerfacecolor() == "none"
    assert points["s"].get_markersize() > points["o"].get_markersize()  # the hollow square rings the dot: both seen
    plt.close(fig)


def test_the_cliffs_end_off_the_surface_is_marked_on_its_edge(pages):
    from gradlab.report.cliff import surface_with_paths

    folder = pages["cliff-quick"]["folder"]
    surface, res = pd.read_parquet(folder / "surface.parquet"), pd.read_parquet(folder / "results.parquet")
    fig = surface_with_paths(surface[surface["point"] == surface["point"].iloc[0]], res, "t")
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    edge = [ln for ln in ax.get_lines() if ln.get_marker() in ("^", "v", "<", ">")]
    assert edge and all(x0 <= ln.get_xdata()[0] <= x1 and y0 <= ln.get_ydata()[0] <= y1 for ln in edge)
    assert any("ends off the surface at" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_chinese_text_draws_with_a_cjk_font_where_one_is_installed(recwarn):
    from matplotlib import font_manager

    if not any(f.name in figures.CJK_FONTS for f in font_manager.fontManager.ttflist):
        pytest.skip("no CJK font installed (Debian: fonts-wqy-zenhei); figures fall back to DejaVu Sans, and say so by a warning")
    fig, ax = figures.subplots()
    assert figures.cjk_font() in figures.CJK_FONTS
    ax.set_title("分开 想要")
    fig.canvas.draw()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    plt.close(fig)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
@pytest.mark.parametrize("name", PAGES)
def test_every_studys_page_in_a_browser(pages, name, tmp_path):
    """The page laid out in Chromium: no sideways scrolling, every figure decoded and shown at its own width
    (not shrunk, so its text is as large as drawn), the summary on the first screen, details folded."""
    page = pages[name]["folder"] / "report.html"
    seen = layout(page, tmp_path)
    assert seen["scroll"] <= seen["width"]
    assert all(w > 0 and right <= seen["width"] and shown == w for w, right, shown in seen["images"]), seen["images"]
    assert len(seen["images"]) == len(pages[name]["figures"])
    headings = dict(seen["h2"])
    assert headings.get("Summary", 0) < 800 and seen["open"] == 0
    shot = screenshot(page, tmp_path / "page.png", tmp_path, height=min(seen["height"], 6000))
    assert shot.stat().st_size > 20_000
