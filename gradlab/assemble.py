"""From saved points to a run folder's state: long-form tables, the measure's derived tables, the manifest
and (optionally) the page, staged and committed as one change (folder.commit)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from . import folder
from .ladder import from_record, skipped, succeeded_in
from .store import PLAN_FILE, FolderError, PointStore, read_json, write_json_atomic


def _cell(value: object) -> object:
    return str(value) if isinstance(value, (tuple, list, dict)) else value


def read_plan(out: Path) -> dict | None:
    """The plan the last run of `out` started with (None: no run started there)."""
    path = Path(out) / PLAN_FILE
    if not path.exists():
        return None
    plan = read_json(path)
    missing = [k for k in ("study", "measure", "keys", "columns", "code", "manifest") if k not in plan]
    if missing:
        raise FolderError(f"{path} lacks {', '.join(missing)}: it was written by an older gradlab or is damaged. "
                          "Rerun the command that made the folder (its argv is in manifest.json).")
    return plan


def saved_keys(out: Path, plan: dict) -> list[str]:
    """The plan's points saved in `out` by the code the plan ran (failures included: they are results)."""
    store = PointStore(out, plan["code"])
    return [k for k in plan["keys"] if store.state(k) == "done" or (store.read_meta(k) or {}).get("status") == "failed"]


def build_tables(out: Path, keys: list[str], axes: list[str], module) -> tuple[dict, dict, list, list]:
    """Long-form tables of the finished points among `keys` (every setting as a leading column, so the
    tables of any two runs stack), the measure's derived tables, the points and the failures."""
    store = PointStore(out)
    parts: dict[str, list[pd.DataFrame]] = {}
    points, failed = [], []
    for key in keys:
        meta = store.read_meta(key)
        if meta is None:
            continue
        coords = {a: _cell(meta["config"].get(a)) for a in axes}
        made_by = meta.get("env", {}).get("code", {})
        points.append({"key": key, "status": meta["status"], "seconds": meta["seconds"], **coords,
                       "computed_by": {k: made_by.get(k) for k in ("source", "torch", "commit", "dirty", "host")}
                       | {"worker": meta.get("env", {}).get("worker")}, **({"ensemble": meta["env"]["ensemble"]} if "ensemble" in meta.get("env", {}) else {})})
        if meta["status"] != "ok":
            failed.append({"key": key, **coords, "error": meta["error"]})
            continue
        for name, df in store.tables(key).items():
            if name in getattr(module, "ARTIFACTS", ()):  # kept in points/ for later analyses (a model's weights), not a table of the run
                continue
            df = df.copy()
            for pos, (axis, value) in enumerate(coords.items()):
                df.insert(pos, axis, [value] * len(df))
            df.insert(len(coords), "point", key)
            parts.setdefault(name, []).append(df)
    tables = {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}
    tables.setdefault("results", pd.DataFrame(columns=[*axes, "point"]))
    derived = module.derive(tables, axes) if len(tables["results"]) else {}
    return tables, derived, points, failed


def assemble(out: Path, plan: dict, module, extra: dict, render: Callable[[Path, Path], Path] | None = None) -> dict:
    """Stage the folder's next state from the plan's saved points (all of them, or those an interrupted run
    finished: the manifest says which), render the page into it if asked, and commit it whole; a table,
    figure or page the state before wrote that this one lacks is removed with the same commit (folder.commit).
    Returns the manifest."""
    from .env import environment

    out = Path(out)
    keys = saved_keys(out, plan)
    axes = plan["columns"]
    tables, derived, points, failed = build_tables(out, keys, axes, module)
    left_out = ladder_skips(out, plan, module)
    stage = folder.staging(out)
    every = tables | derived | {"failures": pd.DataFrame(failed, columns=["key", *axes, "error"])}
    if plan.get("ladder"):
        every["skipped"] = pd.DataFrame(left_out, columns=["key", *(plan["coords"][0] if plan["coords"] else {}), "because"])
    digests = folder.write_tables(stage, every)
    results = tables["results"]
    base = plan["manifest"]
    device = str(base.get("resolved", {}).get("device", ["cpu"])[0])
    manifest = base | extra | {
        "plan_id": plan.get("id"), "complete": len(keys) + len(left_out) == len(plan["keys"]),
        "points_saved": len(keys), "points_skipped": len(left_out), "points_total": len(plan["keys"]),
        "ladder": plan.get("ladder"),
        "environment": environment(device),
        "backends": sorted({str(b) for df in tables.values() if "backend" in df for b in df["backend"].dropna().unique()}),
        "tables": {name: len(df) for name, df in tables.items()}, "table_digests": digests,
        "derived": sorted(derived), "row_count": len(results), "points": points, "failed": len(failed),
    }
    described = getattr(module, "COLUMNS", {})
    written = [c for df in every.values() for c in df.columns]
    manifest["column_dictionary"] = {c: described.get(c, "") for c in dict.fromkeys(written)}
    write_json_atomic(manifest, stage / folder.MANIFEST)
    if render is not None:
        render(stage, stage)
    folder.commit(out)
    return manifest | {"failed_points": failed}


def ladder_skips(out: Path, plan: dict, module) -> list[dict]:
    """The points the plan's ladder leaves out, given the points saved in `out`."""
    ladder = from_record(plan.get("ladder"))
    if ladder is None:
        return []
    store = PointStore(out, plan["code"])
    saved = set(saved_keys(out, plan))
    known = {i: succeeded_in(store, k, module) for i, k in enumerate(plan["keys"]) if k in saved}
    return skipped(plan["coords"], plan["keys"], known.get, ladder)


def lags_behind(out: Path) -> tuple[dict | None, str | None]:
    """The plan whose saved points the folder's tables do not show yet (a run stopped before writing them, or
    points saved since), with None when the tables are up to date; and a sentence when the saved points are fewer
    than the tables show (a points/ cache deleted, or a folder copied without it): the tables are never rebuilt
    from less than they hold, only from more points of their own run, or from the points of a newer run."""
    plan = read_plan(out)
    if plan is None:
        return None, None
    path = Path(out) / folder.MANIFEST
    manifest = read_json(path) if path.exists() else None
    saved = saved_keys(out, plan)
    if manifest is None:
        return (plan, None) if saved else (None, None)
    if manifest.get("plan_id") != plan.get("id"):  # a newer run started here
        if saved:
            return plan, None
        return None, (f"the last run started in {out} ({' '.join(plan.get('argv') or [])}) saved no point before it stopped: the "
                      "tables of the run before it are kept. Rerun that command to resume it.")
    shown = _shown(manifest)
    if set(saved) == shown:
        return None, None
    lost = shown - set(saved)
    if lost:
        new = set(saved) - shown
        return None, (f"{out}/points holds {len(shown) - len(lost)} of the {len(shown)} points its tables show (a cache deleted, or the "
                      "folder copied without it): the tables are kept as they are, never rebuilt from fewer points"
                      + (f", and the {len(new)} points saved since are not shown yet" if new else "")
                      + ". Rerun the command that made it to recompute what is missing.")
    return plan, None


def _shown(manifest: dict) -> set:
    """The keys of the points a folder's tables show (its manifest's list)."""
    return {p.get("key") for p in manifest.get("points") or [] if isinstance(p, dict)}


def collect(out: Path, render: Callable[[Path, Path], Path] | None = None) -> dict:
    """The folder's state rebuilt from its plan and saved points (for `gradlab report` after a run was
    killed before it could write its tables, and scripts/rederive.py). Refused (a FolderError) when the saved
    points are fewer than the folder's tables show: a rebuild never leaves a run with less than it holds."""
    from . import measures

    plan = read_plan(out)
    if plan is None:
        raise FolderError(f"{out} holds no plan.json: no gradlab run started there.")
    path = Path(out) / folder.MANIFEST
    before = read_json(path) if path.exists() else {}
    if before.get("plan_id") == plan.get("id"):
        lost = _shown(before) - set(saved_keys(out, plan))
        if lost:
            raise FolderError(f"{out}/points lacks {len(lost)} of the points its tables show (a cache deleted, or the folder copied "
                              "without it): rebuilding from the saved points would leave the run with less than it holds. Rerun the "
                              "command that made it to recompute them.")
    ended = before.get("ended") if before.get("plan_id") == plan.get("id") else None  # the run's own end, when it wrote one
    return assemble(out, plan, measures.load(plan["measure"]), {"collected_by": "gradlab report", "ended": ended, **_described(plan)}, render)


def reanalyse(out: Path, echo: Callable[[str], None] | None = None) -> int:
    """The analyses of every saved point that kept its model (a lyrics run's weights) made again from those weights by
    today's code, without training (the measure's `reanalyse`: the context probe, lyrics' input gradients and by-frequency
    table): each point's tables replaced in points/, its record naming the code that reanalysed it. The folder's
    tables follow with the next `collect`. Returns how many points were reanalysed."""
    from . import measures
    from .env import code_identity
    from .runner import PointOutcome

    plan = read_plan(out)
    if plan is None:
        raise FolderError(f"{out} holds no plan.json: no gradlab run started there, so no point kept its weights.")
    module = measures.load(plan["measure"])
    if not hasattr(module, "reanalyse"):
        raise FolderError(f"measure {plan['measure']!r} keeps no weights to analyse again.")
    store, done = PointStore(out, plan["code"]), 0
    for key in saved_keys(out, plan):
        meta = store.read_meta(key)
        if meta is None or meta.get("status") != "ok":
            continue
        tables = store.tables(key)
        again = module.reanalyse(meta["config"], tables)
        if again is None:
            continue
        env = meta.get("env", {}) | {"reanalysed_by": code_identity()}
        store.write(PointOutcome(key, meta["config"], tables | again, None, meta.get("seconds", 0.0), env))
        done += 1
        if echo:
            echo(f"  reanalysed {key} from its kept weights: {', '.join(sorted(again)) or 'nothing to analyse'}")
    return done


def _described(plan: dict) -> dict:
    """The study's and the profile's descriptions as the study file says them now (prose, not numbers: a page
    rebuilt later describes its run in today's words); nothing when the study cannot be read."""
    from .study import StudyError, load_study

    try:
        study = load_study(plan["study"])
    except (StudyError, OSError):
        return {}
    if study.measure != plan.get("measure"):
        return {}
    return {"description": study.description, "profile_description": study.profiles.get(plan.get("profile"), {}).get("description", "")}
