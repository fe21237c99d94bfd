"""The report of a run: PNG figures and one self-contained HTML page, read from the run's tables alone.
Pictures first: the few numbers the study exists for, then figures, then tables; details folded."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from ..folder import check_tables, tables_of
from ..store import read_json, write_text_atomic
from . import cliff, curse_of_memory, figures, gradient_decay, page, throughput, train

VIEWS = {"gradient_decay": gradient_decay.view, "train": train.view, "cliff": cliff.view, "throughput": throughput.view,
         "curse_of_memory": curse_of_memory.view}  # measure -> its view


def view_of(measure: str):
    """The measure's page: gradlab's own, or a plugin measure's view(tables, manifest) (None: tables alone)."""
    if measure in VIEWS or not measure:
        return VIEWS.get(measure)
    from ..measures import known_measures, load

    return getattr(load(measure), "view", None) if measure in known_measures() else None


def what_ran(manifest: dict) -> tuple[str, str]:
    """The page's title and its first paragraph: what ran. The profile's description only where no --set changed
    the profile (it describes the profile's own grid and settings); otherwise the profile and the changes, as given."""
    study, profile = manifest.get("study", "gradlab run"), str(manifest.get("profile") or "")
    changes = [str(c) for c in manifest.get("overrides") or []]
    if not changes:
        described = manifest.get("profile_description", "")
        lede = f"<p class='lede'><b>{html.escape(profile)}</b>: {html.escape(described)}</p>" if described else ""
        return f"{study} ({profile})" if profile else study, lede
    base = f"the {profile} profile" if profile else "the study's own grid and settings (no profile)"
    said = "; ".join(f"<code>--set {html.escape(c)}</code>" for c in changes)
    lede = (f"<p class='lede'><b>{html.escape(profile or study)}, changed</b>: {html.escape(base)} with {len(changes)} "
            f"change{'s' * (len(changes) != 1)} on the command line: {said}; the rest as {html.escape(base)} sets it (every "
            "setting as run: the manifest's resolved).</p>")
    return f"{study} ({profile + ', ' if profile else ''}changed by --set)", lede


class UnfinishedRun(FileNotFoundError):
    """A folder a run started in but did not finish: the message says how far it got and how to resume."""


def load_tables(out: Path, manifest: dict) -> dict[str, pd.DataFrame]:
    """The tables the run wrote (another parquet file beside them is not the run's, and is not read)."""
    return {name: pd.read_parquet(Path(out) / f"{name}.parquet") for name in tables_of(out, manifest)}


def check_finished(out: Path) -> dict:
    """The run's manifest, its tables checked against the checksums it records; an error that says what
    the folder holds when there is none."""
    out = Path(out)
    if (out / "manifest.json").exists():
        manifest = read_json(out / "manifest.json")
        check_tables(out, manifest)
        return manifest
    if (out / "plan.json").exists():
        raise UnfinishedRun(f"{out} is a run that stopped before writing its tables: `gradlab report {out}` writes them "
                            "from the saved points, and rerunning the same command resumes it.")
    raise FileNotFoundError(f"{out} holds no manifest.json: not a gradlab run folder (make one with `gradlab run`).")


def ensemble_note(manifest: dict) -> str | None:
    """How the points trained: in how many ensembles of which sizes, and how many solo and why (None: no ensembles)."""
    points = [p for p in manifest.get("points", []) if p.get("ensemble")]
    groups = {p["ensemble"]["group"]: p["ensemble"]["size"] for p in points if p["ensemble"].get("size", 1) > 1}
    if not groups:
        return None
    solo: dict[str, int] = {}
    for p in points:
        if p["ensemble"].get("size", 1) == 1:
            why = p["ensemble"].get("solo") or "alone"
            solo[why] = solo.get(why, 0) + 1
    sizes = sorted(groups.values(), reverse=True)
    line = (f"{sum(sizes)} points trained in {len(sizes)} ensemble{'s' * (len(sizes) != 1)} "
            f"(models per batched step: {', '.join(map(str, sizes))})")
    if solo:
        line += "; solo: " + "; ".join(f"{n} ({why})" for why, n in solo.items())
    return line + "."


def unfinished_note(manifest: dict) -> str | None:
    """A sentence for a folder whose run did not finish (None: it did)."""
    if manifest.get("complete", True):
        return None
    return (f"Unfinished run: {manifest.get('points_saved')} of {manifest.get('points_total')} points saved; everything here "
            f"describes those points only. Rerun to resume: {' '.join(manifest.get('argv') or [])}")


def summary_of(out: Path) -> page.Section:
    """A finished run's key points and summary table (nothing drawn): what `gradlab run` prints at the end."""
    manifest = check_finished(out)
    tables = load_tables(out, manifest)
    view = view_of(manifest.get("measure", ""))
    return view(tables, manifest) if view and len(tables.get("results", [])) else page.Section()


def render(out: Path, echo=None) -> Path:
    """DIR's figures and report.html drawn anew from its tables and manifest, swapped in with the old
    ones in one commit (a crash leaves the old page and figures, never half of each); returns the page.
    A figure the view cannot redraw (an input it needs is not in the folder: a table git does not keep) is
    kept as it was, never deleted, and `echo` hears which."""
    from ..folder import commit, staging

    out = Path(out)
    check_finished(out)
    missing = draw(out, staging(out)).missing
    if missing and echo:
        echo(f"note: some figures could not be drawn from what {out} holds, and the ones drawn before are kept: " + "; ".join(missing))
    commit(out, redrawn=True, keep_drawn=bool(missing))
    return out / "report.html"


class Drawn(type(Path())):
    """The page drawn (a path), with the figures its view could not draw (`missing`)."""

    missing: list[str] = []


def draw(out: Path, into: Path) -> Drawn:
    """Draw INTO/figures/*.png and INTO/report.html (INTO: a staging folder) from DIR's tables and
    manifest; returns the page, with the figures its view could not draw (an input it needs is not in the
    folder). Swapping them in is the caller's (folder.commit)."""
    out, into = Path(out), Path(into)
    manifest = check_finished(out)
    tables = load_tables(out, manifest)
    fig_dir = into / "figures"
    fig_dir.mkdir(exist_ok=True)
    measure = manifest.get("measure", "")
    view = view_of(measure)
    section = view(tables, manifest) if view and len(tables.get("results", [])) else page.Section()
    missing = list(section.missing)  # a view that lacks an input says which figures it could not draw
    blocks = []
    names: set[str] = set()
    for stem, caption, draw in section.figures:
        fig = draw()
        name = base = stem.strip("-") or "figure"
        while name in names:  # one file per figure, even where a view named two alike
            name = f"{base}-{len(names)}"
        names.add(name)
        path = fig_dir / f"{name}.png"
        figures.save(fig, path)  # and its SVG beside it
        figures.close(fig)
        blocks.append(page.figure(path, caption))
    title, ran = what_ran(manifest)
    failed = int(manifest.get("failed", 0))
    git = manifest.get("code") or manifest.get("environment", {}).get("git", {})  # the code that computed the points
    commit = (git.get("commit") or "unknown commit")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    lede = ran + f"<p class='lede'>{html.escape(manifest.get('description', ''))}</p>"  # what ran, first; the study's question after it
    body = [f"<h1>{html.escape(title)}</h1>{lede}",
            f"<p class='run'>{manifest.get('row_count', 0):,} rows from {len(manifest.get('points', []))} points"
            + (f", <span class='failed'>{failed} failed</span>" if failed else "")
            + f"; {html.escape(' '.join(manifest.get('argv') or []))}; gradlab {html.escape(str(manifest.get('environment', {}).get('gradlab')))}"
            f" at {html.escape(commit)}, torch {html.escape(str(manifest.get('environment', {}).get('torch')))}, "
            f"{html.escape(str(manifest.get('environment', {}).get('device')))}; {html.escape(str(manifest.get('started')))[:19]} to "
            f"{html.escape(str(manifest.get('ended')))[:19]} UTC.</p>"]
    note = unfinished_note(manifest)
    if note:
        body.append(f"<p class='failed'>{html.escape(note)}</p>")
    if missing:
        body.append("<p class='cap'>Not redrawn here (the figures drawn before are kept in figures/): " + html.escape("; ".join(missing)) + ".</p>")
    grouped = ensemble_note(manifest)
    if grouped:
        body.append(f"<p class='run'>{html.escape(grouped)}</p>")
    if section.key_points or section.summaries:
        body.append("<h2>Summary</h2><div class='key'>" + "".join(f"<p>{html.escape(k)}</p>" for k in section.key_points) + "</div>")
        if section.notes:
            body.append(page.details("How to read these numbers", "".join(f"<p>{html.escape(n)}</p>" for n in section.notes)))
        body.extend(page.table(df, title) for title, df in section.summaries)
    if blocks:
        body.append("<h2>Figures</h2>" + "".join(blocks))
    elif not len(tables.get("results", [])):
        body.append("<h2>Figures</h2><p>No figures: the run has no results yet.</p>")
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
    path = Drawn(into / "report.html")
    write_text_atomic(page.page(title, "".join(body)), path)
    path.missing = missing
    return path
