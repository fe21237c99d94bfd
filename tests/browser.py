"""Headless Chromium (Debian's package) for looking at report pages: the page's layout as the browser lays
it out, and a screenshot. CHROMIUM is None where no browser is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1280,800", "--virtual-time-budget=5000"]
MEASURE = """<script>window.addEventListener('load', () => {
  const h2 = [...document.querySelectorAll('h2')].map(h => [h.textContent, h.getBoundingClientRect().top]);
  document.title = 'LAYOUT' + JSON.stringify({scroll: document.documentElement.scrollWidth, width: innerWidth,
    images: [...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().right, i.getBoundingClientRect().width]), h2,
    open: [...document.querySelectorAll('details')].filter(d => d.open).length, height: document.documentElement.scrollHeight});
});</script></body>"""


def layout(page: Path, work: Path) -> dict:
    """scroll and window width, every image's (natural width, right edge, shown width), the h2 headings' tops,
    open details, page height: read from the page laid out in Chromium."""
    probe = work / f"{page.parent.name}-probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE), encoding="utf-8")
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={work / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    return json.loads(re.search(r"<title>LAYOUT(.*?)</title>", dom, re.S).group(1).replace("&quot;", '"'))


def screenshot(page: Path, shot: Path, work: Path, height: int = 800) -> Path:
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={work / 'profile'}", f"--window-size=1280,{height}"]
    subprocess.run([*args, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return shot
