"""The report of a run: PNG figures and one self-contained HTML page, read from the run's tables alone.
Pictures first: the few numbers the study exists for, then figures, then tables; details folded."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from ..store import progress_of, read_json
from . import cliff, figures, gradient_decay, page, throughput, train

VIEWS = {"gradient_decay": gradient_decay.view, "train": train.view, "cliff": cliff.view, "throughput": throughput.view}  # measure -> its view


class UnfinishedRun(FileNotFoundError):
    """A folder a run started in but did not finish: the message says how far it got and how to resume."""


def load_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(Path(out).glob("*.parquet"))}


def check_finished(out: Path) -> dict:
    """The run's manifest; an error that says what the folder holds when there is none."""
    out = Path(out)
    if (out / "manifest.json").exists():
        return read_json(out / "manifest.json")
    started = progress_of(out)
    if started is None:
        raise FileNotFoundError(f"{out} holds no manifest.json: not a gradlab run folder (make one with `gradlab run`).")
    raise UnfinishedRun(
        f"{out} is an unfinished run of study {started['study']!r} ({started['profile']}): {started['saved']} of "
        f"{started['total']} points saved; rerun the same command to resume: {' '.join(started.get('argv') or [])}")


def summary_of(out: Path) -> page.Section:
    """A finished run's key points and summary table (nothing drawn): what `gradlab run` prints at the end."""
    manifest = check_finished(out)
    tables = load_tables(out)
    view = VIEWS.get(manifest.get("measure", ""))
    return view(tables, manifest) if view and len(tables.get("results", [])) else page.Section()


def render(out: Path) -> Path:
    """Write DIR/figures/*.png and DIR/report.html from DIR's tables and manifest; returns the page."""
    out = Path(out)
    manifest = check_finished(out)
    tables = load_tables(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    measure = manifest.get("measure", "")
    view = VIEWS.get(measure)
    section = view(tables, manifest) if view and len(tables.get("results", [])) else page.Section()
    blocks = []
    for stem, caption, draw in section.figures:
        fig = draw()
        path = fig_dir / f"{stem.strip('-') or 'figure'}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        figures.close(fig)
        blocks.append(page.figure(path, caption))
    title = f"{manifest.get('study', 'gradlab run')} ({manifest.get('profile', '')})"
    failed = int(manifest.get("failed", 0))
    git = manifest.get("environment", {}).get("git", {})
    commit = (git.get("commit") or "unknown commit")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    body = [f"<h1>{html.escape(title)}</h1><p class='lede'>{html.escape(manifest.get('description', ''))}</p>",
            f"<p class='run'>{manifest.get('row_count', 0):,} rows from {len(manifest.get('points', []))} points"
            + (f", <span class='failed'>{failed} failed</span>" if failed else "")
            + f"; {html.escape(' '.join(manifest.get('argv') or []))}; gradlab {html.escape(str(manifest.get('environment', {}).get('gradlab')))}"
            f" at {html.escape(commit)}, torch {html.escape(str(manifest.get('environment', {}).get('torch')))}, "
            f"{html.escape(str(manifest.get('environment', {}).get('device')))}; {html.escape(str(manifest.get('started')))[:19]} to "
            f"{html.escape(str(manifest.get('ended')))[:19]} UTC.</p>"]
    if section.key_points or section.summaries:
        body.append("<h2>Summary</h2><div class='key'>" + "".join(f"<p>{html.escape(k)}</p>" for k in section.key_points) + "</div>")
        body.extend(page.table(df, title) for title, df in section.summaries)
    body.append("<h2>Figures</h2>" + ("".join(blocks) or "<p>No figures: the run has no results yet.</p>"))
    shown = list(section.tables)
    failures = tables.get("failures")
    if failures is not None and len(failures):
        shown.append(("Failed points", failures))
    if shown or section.folded:
        body.append("<h2>Tables</h2>" + "".join(page.table(df, t) for t, df in shown)
                    + "".join(page.details(f"{t} ({len(df)} rows)", page.table(df)) for t, df in section.folded))
    if manifest.get("dropped"):
        body.append("<p class='cap'>Left out by the study's exclusion rules: "
                    + html.escape("; ".join(manifest["dropped"])) + ".</p>")
    columns = manifest.get("column_dictionary", {})
    if columns:
        body.append(page.details(f"Column dictionary ({len(columns)} columns)", page.table(
            pd.DataFrame({"column": list(columns), "unit and meaning": list(columns.values())}))))
    body.append(page.details("Manifest (study, resolved settings, versions, device, points)",
                             f"<pre>{html.escape(json.dumps(manifest, indent=1, ensure_ascii=False, default=str))}</pre>"))
    path = out / "report.html"
    path.write_text(page.page(title, "".join(body)), encoding="utf-8")
    return path
