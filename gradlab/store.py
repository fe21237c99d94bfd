"""Results on disk: atomic writes of tables and JSON, and the point cache, each point checked against
the checksums written with it before it is reused."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd


class FolderError(ValueError):
    """A run folder that cannot be read or written as asked: the message names the file and what to do.
    exit_code: 2 for a folder refused before any work, 1 for a write that failed during a run."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


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
        with open(tmp, "rb") as f:  # on disk before it takes the name: a crash leaves the old file or the new one
            os.fsync(f.fileno())
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


def write_text_atomic(text: str, path: Path) -> None:
    _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a file that is not one is a FolderError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FolderError(f"{path} is not valid JSON ({exc}): the file is damaged; delete it (or the run folder) and rerun.") from None
    except RecursionError:
        raise FolderError(f"{path} nests deeper than any file gradlab writes: the file is damaged; delete it (or the run folder) and rerun.") from None
    if not isinstance(data, dict):
        raise FolderError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged; delete it and rerun.")
    return data


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


PLAN_FILE = "plan.json"  # written when a run starts: what it is, for resuming, reporting and a reused --out
VALIDITY = ("source", "torch")  # the parts of a point's code identity that must match for it to be reused
MARKER_DIGEST = "marker_sha256"  # a marker's checksum of its own content (every other key)


class PointStore:
    """DIR/points/KEY.TABLE.parquet per finished point, then DIR/points/KEY.json as its commit marker,
    with the sha256 of every table file and of itself. A point is reused only when its marker says ok,
    every checksum matches and this code made it (source digest and torch version: else 'stale');
    a point whose files fail their checksums is 'corrupt' and runs again, so does one with no marker."""

    def __init__(self, out: Path, code: dict | None = None):
        self.dir = Path(out) / "points"
        self.code = code

    def _meta(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _table(self, key: str, name: str) -> Path:
        return self.dir / f"{key}.{name}.parquet"

    def read_meta(self, key: str) -> dict | None:
        """The marker, or None when there is none or it fails its own checksum."""
        path = self._meta(key)
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(meta, dict) or meta.get(MARKER_DIGEST) != _json_digest({k: v for k, v in meta.items() if k != MARKER_DIGEST}):
            return None
        return meta

    def state(self, key: str) -> str:
        """'done' (reusable), 'stale' (finished by other code), 'corrupt' (its files fail their checksums:
        truncated or changed on disk) or 'todo' (never finished, or failed)."""
        if not self._meta(key).exists():
            return "todo"
        meta = self.read_meta(key)
        if meta is None:
            return "corrupt"
        if meta.get("status") != "ok":
            return "todo"
        for name, digest in meta.get("digests", {}).items():
            path = self._table(key, name)
            if not path.exists() or file_digest(path) != digest:
                return "corrupt"
        made_by = meta.get("env", {}).get("code", {})
        if self.code is not None and any(made_by.get(k) != self.code.get(k) for k in VALIDITY):
            return "stale"
        return "done"

    def done(self, key: str) -> bool:
        return self.state(key) == "done"

    def write(self, outcome) -> None:
        meta = {"key": outcome.key, "config": outcome.config, "seconds": outcome.seconds, "env": outcome.env}
        if outcome.error is None:
            digests = {}
            for name, rows in outcome.tables.items():
                path = self._table(outcome.key, name)
                write_table_atomic(pd.DataFrame(rows), path)
                digests[name] = file_digest(path)
            meta |= {"status": "ok", "tables": sorted(outcome.tables), "digests": digests, "error": None}
        else:
            meta |= {"status": "failed", "tables": [], "digests": {}, "error": outcome.error}
        meta = json.loads(json.dumps(meta, ensure_ascii=False, default=str))  # what reading it back gives, for the checksum
        write_json_atomic(meta | {MARKER_DIGEST: _json_digest(meta)}, self._meta(outcome.key))

    def tables(self, key: str) -> dict[str, pd.DataFrame]:
        meta = self.read_meta(key) or {"tables": []}
        return {t: pd.read_parquet(self._table(key, t)) for t in meta["tables"]}
