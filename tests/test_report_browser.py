"""The report page in a real browser (headless Chromium, Debian's package): it fits the page, its images
load, the summary is on the first screen, details start folded. Skipped where no Chromium is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from gradlab.report import render
from gradlab.runner import run_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1280,800", "--virtual-time-budget=5000"]
MEASURE = """<script>window.addEventListener('load', () => {
  const h2 = [...document.querySelectorAll('h2')].map(h => [h.textContent, h.getBoundingClientRect().top]);
  document.title = 'LAYOUT' + JSON.stringify({scroll: document.documentElement.scrollWidth, width: innerWidth,
    images: [...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().right]), h2,
    open: [...document.querySelectorAll('details')].filter(d => d.open).length});
});</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
def test_gradient_decay_page_in_a_browser(tmp_path):
    out = tmp_path / "run"
    run_study("gradient-decay", "quick", ["seq_len=40", "probe=hidden,jacobian"], out=out, device="cpu", progress=False)
    page = render(out)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE), encoding="utf-8")
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    layout = json.loads(re.search(r"<title>LAYOUT(.*?)</title>", dom, re.S).group(1).replace("&quot;", '"'))
    assert layout["scroll"] <= layout["width"]  # nothing wider than the window: no sideways scrolling
    assert layout["images"] and all(w > 0 and right <= layout["width"] for w, right in layout["images"])  # every figure decoded, inside
    headings = dict(layout["h2"])
    assert headings["Summary"] < 800 and headings["Summary"] < headings["Figures"] < headings["Tables"]  # the summary on screen one
    assert layout["open"] == 0  # column dictionary and manifest folded
    shot = tmp_path / "first-screen.png"
    subprocess.run([*args, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a real picture of the page, not a blank window
