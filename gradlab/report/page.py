"""The HTML of a report: one self-contained page, pictures first, tables that fit the page, details folded."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..folder import PAGE_MARK  # gradlab's mark in the page's head (gradlab.folder.marked)

STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","WenQuanYi Zen Hei","PingFang SC","Microsoft YaHei",sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.lede{color:#444}.run{color:#666;font-size:.88em}.failed{color:#a00;font-weight:600}
.key{background:#f3f7fb;border-left:4px solid #4a7fb5;padding:.6em 1em;margin:1em 0}
figure{margin:1.2em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.88em;margin-top:.3em}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.84em;margin:.4em 0 .2em}
td,th{border:1px solid #d6d6d6;padding:2px 7px;text-align:right}th{background:#f5f5f5}td.t,th.t{text-align:left}
.poor{color:#888;font-style:italic}.cap{color:#555;font-size:.85em;margin:0 0 1.2em}
details{margin:.8em 0}summary{cursor:pointer;color:#345}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.78em}"""


@dataclass
class Section:
    """What a measure's view hands the page: prose, figures, tables; all read from stored tables."""

    key_points: list[str] = field(default_factory=list)  # sentences, shown first
    notes: list[str] = field(default_factory=list)  # how to read the numbers (definitions, not findings): folded under the key points
    summaries: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # compact tables of the numbers the study exists for
    figures: list[tuple[str, str, Callable]] = field(default_factory=list)  # (file stem, caption, draw() -> a figure)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    folded: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # long tables, shown on request
    missing: list[str] = field(default_factory=list)  # figures the view could not draw, each with the input it lacks


def fmt(value: object) -> str:
    if isinstance(value, float):
        if pd.isna(value):
            return ""
        if abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:,.0f}" if abs(value) < 1e9 else f"{value:.3g}"  # 2.37e+23, not 24 digits of a blown-up perplexity
    return "" if value is None else str(value)


def table(df: pd.DataFrame, title: str = "", note: str = "", max_rows: int = 200) -> str:
    """df as an HTML table that fits the page: columns constant over every row go to a caption below it."""
    df = df.reset_index(drop=True)
    constant = [c for c in df.columns if len(df) > 1 and df[c].map(repr).nunique() == 1]
    shown = df.drop(columns=constant)
    text = {c: "t" if not pd.api.types.is_numeric_dtype(shown[c]) or pd.api.types.is_bool_dtype(shown[c]) else "" for c in shown.columns}
    head = "".join(f"<th class='{text[c]}'>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.head(max_rows).iterrows():
        cells = "".join(f"<td class='{text[c]}'>{html.escape(fmt(row[c]))}</td>" for c in shown.columns)
        rows.append(f"<tr>{cells}</tr>")
    fixed = ", ".join(f"{c} = {fmt(df[c].iloc[0])}" for c in constant if fmt(df[c].iloc[0]) != "")
    caption = " ".join(x for x in [note, f"The same in every row: {fixed}." if fixed else "",
                                    f"First {max_rows} of {len(df)} rows." if len(df) > max_rows else ""] if x)
    return (f"<h3>{html.escape(title)}</h3>" if title else "") + f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>" \
        + (f"<p class='cap'>{html.escape(caption)}</p>" if caption else "")


def figure(path: Path, caption: str) -> str:
    """The PNG inside the page, and a link to the SVG beside it (figures/NAME.svg) for print."""
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode()
    vector = f' <a href="figures/{html.escape(path.with_suffix(".svg").name)}">SVG</a>' if path.with_suffix(".svg").exists() else ""
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}{vector}</figcaption></figure>")


def details(title: str, body: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{PAGE_MARK}<meta name='viewport' content='width=device-width'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")
