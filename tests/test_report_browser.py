"""The report page of a fresh run in a real browser (headless Chromium, Debian's package): it fits the page,
its images load at their own size, the summary is on the first screen, details start folded. Every study's
page is looked at the same way in test_figures.py. Skipped where no Chromium is installed."""

from __future__ import annotations

import pytest
from browser import CHROMIUM, layout, screenshot

from gradlab.report import render
from gradlab.runner import run_study


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
def test_gradient_decay_page_in_a_browser(tmp_path):
    out = tmp_path / "run"
    run_study("gradient-decay", "quick", ["seq_len=40", "probe=hidden,jacobian"], out=out, device="cpu", progress=False)
    page = render(out)
    seen = layout(page, tmp_path)
    assert seen["scroll"] <= seen["width"]  # nothing wider than the window: no sideways scrolling
    assert seen["images"] and all(w > 0 and right <= seen["width"] and shown == w for w, right, shown in seen["images"])  # decoded, inside, unshrunk
    headings = dict(seen["h2"])
    assert headings["Summary"] < 800 and headings["Summary"] < headings["Figures"] < headings["Tables"]  # the summary on screen one
    assert seen["open"] == 0  # column dictionary and manifest folded
    shot = screenshot(page, tmp_path / "first-screen.png", tmp_path)
    assert shot.stat().st_size > 20_000  # a real picture of the page, not a blank window
