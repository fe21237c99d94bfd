"""Results on disk: atomic writes of tables and JSON, so a killed run never leaves a half-written file."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import pandas as pd


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """0666 less the user's umask: what open() would give (mkstemp's temporary files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table_atomic(df: pd.DataFrame, path: Path) -> None:
    """CSV or parquet by suffix."""
    if path.suffix == ".csv":
        _atomic(path, lambda p: df.to_csv(p, index=False))
    else:
        _atomic(path, lambda p: df.to_parquet(p, index=False))


def write_json_atomic(obj: object, path: Path) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8"))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


PLAN_FILE = "plan.json"  # written when a run starts: what it is, for resuming and for a reused --out
VALIDITY = ("source", "torch")  # the parts of a point's code identity that must match for it to be reused


class PointStore:
    """DIR/points/KEY.TABLE.parquet per finished point, then DIR/points/KEY.json as its commit marker:
    a point whose marker is missing did not finish and runs again; one whose marker says ok is reused,
    unless other code made it (another source digest or torch version than `code`): then it is stale
    and runs again, so one table never mixes code versions."""

    def __init__(self, out: Path, code: dict | None = None):
        self.dir = Path(out) / "points"
        self.code = code

    def _meta(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def read_meta(self, key: str) -> dict | None:
        path = self._meta(key)
        if not path.exists():
            return None
        try:
            return read_json(path)
        except (OSError, ValueError):  # unreadable marker: treat the point as unfinished
            return None

    def state(self, key: str) -> str:
        """'done' (reusable), 'stale' (finished by other code), or 'todo' (missing, failed, half-written)."""
        meta = self.read_meta(key)
        if not (meta and meta["status"] == "ok" and all((self.dir / f"{key}.{t}.parquet").exists() for t in meta["tables"])):
            return "todo"
        made_by = meta.get("env", {}).get("code", {})
        if self.code is not None and any(made_by.get(k) != self.code.get(k) for k in VALIDITY):
            return "stale"
        return "done"

    def done(self, key: str) -> bool:
        return self.state(key) == "done"

    def write(self, outcome) -> None:
        meta = {"key": outcome.key, "config": outcome.config, "seconds": outcome.seconds, "env": outcome.env}
        if outcome.error is None:
            for name, rows in outcome.tables.items():
                write_table_atomic(pd.DataFrame(rows), self.dir / f"{outcome.key}.{name}.parquet")
            meta |= {"status": "ok", "tables": sorted(outcome.tables), "error": None}
        else:
            meta |= {"status": "failed", "tables": [], "error": outcome.error}
        write_json_atomic(meta, self._meta(outcome.key))

    def tables(self, key: str) -> dict[str, pd.DataFrame]:
        meta = self.read_meta(key) or {"tables": []}
        return {t: pd.read_parquet(self.dir / f"{key}.{t}.parquet") for t in meta["tables"]}


def _cell(value: object) -> object:
    return str(value) if isinstance(value, (tuple, list, dict)) else value


def assemble(out: Path, keys: list[str], axes: list[str], module, manifest_extra: dict) -> dict:
    """Long-form tables from the finished points (every setting as a leading column, so the tables of
    any two runs stack), the measure's derived tables, and manifest.json with a column dictionary.
    Returns the failures and the row count."""
    from .env import environment

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
                       | {"worker": meta.get("env", {}).get("worker")}})
        if meta["status"] != "ok":
            failed.append({"key": key, **coords, "error": meta["error"]})
            continue
        for name, df in store.tables(key).items():
            df = df.copy()
            for pos, (axis, value) in enumerate(coords.items()):
                df.insert(pos, axis, [value] * len(df))
            df.insert(len(coords), "point", key)
            parts.setdefault(name, []).append(df)
    tables = {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}
    tables.setdefault("results", pd.DataFrame(columns=[*axes, "point"]))
    for name, df in tables.items():
        write_table_atomic(df, Path(out) / f"{name}.parquet")
    derived = module.derive(tables, axes) if len(tables["results"]) else {}
    for name, df in derived.items():
        write_table_atomic(df, Path(out) / f"{name}.parquet")
    write_table_atomic(pd.DataFrame(failed, columns=["key", *axes, "error"]), Path(out) / "failures.parquet")
    results = tables["results"]
    device = str(manifest_extra.get("resolved", {}).get("device", ["cpu"])[0])
    manifest = manifest_extra | {
        "environment": environment(device),
        "backends": sorted({str(b) for df in tables.values() if "backend" in df for b in df["backend"].dropna().unique()}),
        "tables": {name: len(df) for name, df in tables.items()},
        "derived": sorted(derived), "row_count": len(results), "points": points, "failed": len(failed),
    }
    described = getattr(module, "COLUMNS", {})
    written = [c for df in [*tables.values(), *derived.values()] for c in df.columns]
    manifest["column_dictionary"] = {c: described.get(c, "") for c in dict.fromkeys(written)}
    write_json_atomic(manifest, Path(out) / "manifest.json")
    return {"failed": failed, "rows": len(results)}


def progress_of(out: Path) -> dict | None:
    """For a run folder: its plan and how many of its points are saved (None when no run started there)."""
    path = Path(out) / PLAN_FILE
    if not path.exists():
        return None
    started = read_json(path)
    store = PointStore(out)
    return started | {"saved": sum(store.state(k) == "done" for k in started["keys"]), "total": len(started["keys"])}
