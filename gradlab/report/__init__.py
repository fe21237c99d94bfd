"""The report of a run: PNG figures and one self-contained HTML page, read from the run's tables alone."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from ..store import read_json
from . import figures
from .studies import FIGURES, TABLES

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em}.failed{color:#a00}"""


def load_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(Path(out).glob("*.parquet"))}


def render(out: Path) -> Path:
    """Write DIR/figures/*.png and DIR/report.html from DIR's tables and manifest; returns the page."""
    out = Path(out)
    if not (out / "manifest.json").exists():
        raise FileNotFoundError(f"{out} holds no manifest.json: not a gradlab run folder (make one with `gradlab run`).")
    manifest = read_json(out / "manifest.json")
    tables = load_tables(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    blocks = []
    measure = manifest.get("measure", "")
    if len(tables.get("results", [])) and measure in FIGURES:
        for stem, caption, fig in FIGURES[measure](tables, manifest.get("columns", manifest.get("axes", []))):
            path = fig_dir / f"{stem.strip('-') or 'figure'}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            figures.close(fig)
            data = base64.b64encode(path.read_bytes()).decode()
            blocks.append(f'<figure><img alt="{html.escape(stem)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    sections = [f"<h2>Figures</h2>{''.join(blocks) or '<p>No figures: the run has no results yet.</p>'}"]
    shown = TABLES.get(measure, lambda t: [])(tables)
    failures = tables.get("failures")
    if failures is not None and len(failures):
        shown.append(("Failed points", failures))
    if shown:
        sections.append("<h2>Tables</h2>" + "".join(
            f"<h3>{html.escape(title)}</h3>{df.to_html(index=False, escape=True, float_format=lambda v: f'{v:.4g}', na_rep='')}"
            for title, df in shown))
    sections.append(f"<h2>Manifest</h2><pre>{html.escape(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))}</pre>")
    failed = manifest.get("failed", 0)
    title = f"{manifest.get('study', 'gradlab run')} ({manifest.get('profile', '')})"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(manifest.get('description', ''))}</p>"
        f"<p>{manifest.get('row_count', 0)} rows from {len(manifest.get('points', []))} points"
        + (f", <span class='failed'>{int(failed)} failed</span>" if failed else "")
        + f"; started {html.escape(str(manifest.get('started')))}, ended {html.escape(str(manifest.get('ended')))}.</p>"
        + "".join(sections) + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
