"""A run folder moves from one consistent state to the next: its tables, manifest, figures and page are
staged in DIR/.next/ and swapped in by a journalled commit, under a lock that one run holds at a time."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pandas as pd

from .store import FolderError, file_digest, read_json, write_json_atomic

STAGING = ".next"  # the next state, being written; never read as the folder's state
COMMIT = "COMMIT.json"  # inside STAGING: the staged state is complete; what to move in and what to remove
LOCK = ".lock"  # the pid, host and command of the run that is writing the folder
MANIFEST = "manifest.json"
PAGE = "report.html"
FIGURES = "figures"


class FolderBusy(FolderError):
    """Another live gradlab process holds the folder's lock."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its first owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _may_be_running(holder: dict, host: str) -> bool:
    """Whether the lock's holder may still be running: a live pid here, or any holder on another host
    (which cannot be checked from here)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    return holder.get("host") != host or _alive(pid, holder.get("started"))


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    now = _proc_start(pid)
    return started is None or now is None or now == started


class FolderLock:
    """An exclusive lock on a run folder: DIR/.lock, made with O_EXCL, holding pid, host and command. A lock
    left by a dead process on this host is taken over (`echo` says so); a live holder is a FolderBusy error."""

    def __init__(self, out: Path, what: str, echo=None):
        self.path = Path(out) / LOCK
        self.what = what
        self.echo = echo or (lambda text: print(text, file=sys.stderr))
        self.held = False

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: its writer died between creating and filling it

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _proc_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.what}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile: try again
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and _may_be_running(holder, me["host"]):
                    raise FolderBusy(f"{self.path.parent} is being written by another gradlab process (pid {pid} on {host}, since "
                                     f"{holder.get('since')}: {holder.get('command')}). Wait for it, or use another --out.")
                if isinstance(pid, int) and host not in (None, me["host"]):
                    raise FolderBusy(f"{self.path.parent} is locked by pid {pid} on host {host} (since {holder.get('since')}: "
                                     f"{holder.get('command')}), which cannot be checked from here. If that run is over, delete {self.path}.")
                self.echo(f"note: took over a stale lock on {self.path.parent} left by pid {pid} on {host} "
                          f"({holder.get('command')}), which is no longer running.")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderBusy(f"could not lock {self.path.parent}: another process keeps taking {self.path}.")

    def release(self) -> None:
        if self.held:
            try:
                holder = self._holder()
                if holder and holder.get("pid") == os.getpid():
                    self.path.unlink()
            finally:
                self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locked_by_other(out: Path) -> dict | None:
    """The live holder of `out`'s lock, if another process holds it."""
    holder = FolderLock(out, "")._holder()
    if not holder or holder.get("pid") == os.getpid():
        return None
    return holder if _may_be_running(holder, socket.gethostname()) else None


def staging(out: Path) -> Path:
    """An empty DIR/.next/ to write the next state into (what a crashed writer left there is dropped)."""
    path = Path(out) / STAGING
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def commit(out: Path, remove: list[str] = ()) -> None:
    """Swap the staged state in: write the journal (what moves in, what goes), then apply it. A crash after
    the journal is written is finished by `recover`; one before it leaves the old state whole."""
    out, stage = Path(out), Path(out) / STAGING
    moves = sorted(p.name for p in stage.iterdir() if p.name != COMMIT)
    write_json_atomic({"move": moves, "remove": [r for r in remove if r not in moves]}, stage / COMMIT)
    _apply(out)


def _apply(out: Path) -> None:
    stage = out / STAGING
    journal = read_json(stage / COMMIT)
    for name in journal["move"]:
        src, dst = stage / name, out / name
        if not src.exists():
            continue  # moved before a crash
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(src, dst)
    for name in journal["remove"]:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (stage / COMMIT).unlink()
    shutil.rmtree(stage, ignore_errors=True)


def recover(out: Path) -> str | None:
    """Bring a folder a writer died in back to a consistent state: finish a commit whose journal was
    written, drop a staging that never got one. Says what it did (None: nothing to do)."""
    stage = Path(out) / STAGING
    if not stage.exists():
        return None
    if (stage / COMMIT).exists():
        _apply(Path(out))
        return f"finished writing {out}'s new state, which a process that stopped had begun swapping in"
    shutil.rmtree(stage, ignore_errors=True)
    return f"dropped a half-written state in {out} (a process stopped while writing it); the folder is as it was before"


def state_files(out: Path) -> list[str]:
    """The names that make up a folder's state: tables, manifest, figures, page."""
    out = Path(out)
    return sorted([p.name for p in out.glob("*.parquet")] + [n for n in (MANIFEST, PAGE, FIGURES) if (out / n).exists()])


def check_tables(out: Path, manifest: dict) -> None:
    """Every table the manifest lists matches the checksum it was written with (a table git does not keep
    may be absent); one that does not is a FolderError naming it."""
    for name, digest in manifest.get("table_digests", {}).items():
        path = Path(out) / f"{name}.parquet"
        if path.exists() and file_digest(path) != digest:
            raise FolderError(f"{path} does not match the checksum manifest.json records for it: the folder was changed "
                              "outside gradlab. Rerun the command that made it (it reuses every cached point) to rewrite its tables.")


def write_tables(stage: Path, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Each table as stage/NAME.parquet; returns their checksums."""
    digests = {}
    for name, df in tables.items():
        path = stage / f"{name}.parquet"
        df.to_parquet(path, index=False)
        digests[name] = file_digest(path)
    return digests
