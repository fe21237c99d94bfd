"""A run folder moves from one consistent state to the next: its tables, manifest, figures and page are
staged in DIR/.next/ and swapped in by a journalled commit, under a lock that one run holds at a time."""

from __future__ import annotations

import json
import os
import re
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


# --- what a run folder holds, and which of it is gradlab's -------------------------------------------------

RESERVED = (STAGING, LOCK, "plan.json", MANIFEST, PAGE, FIGURES, "points")  # names gradlab writes (or reads) in a run folder
_PART = re.compile(r"\w[\w.\-]*")  # one part of a state file's name: no separator, never '.' or '..', no leading dot


def state_name(rel: object) -> bool:
    """Whether `rel` may name a file of a run folder's state: manifest.json, report.html, NAME.parquet, or
    figures/NAME.png and figures/NAME.svg (a closed list: no other folder, no separator, no '..', nothing absolute).
    Every name a journal or a manifest gives is checked against it before anything is done with it."""
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        return False
    if rel in (MANIFEST, PAGE):
        return True
    parts = rel.split("/")
    if len(parts) == 1:
        return rel.endswith(".parquet") and bool(_PART.fullmatch(rel))
    return (len(parts) == 2 and parts[0] == FIGURES and bool(_PART.fullmatch(parts[1]))
            and parts[1].endswith((".png", ".svg")))


def is_run_manifest(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("study"), str) and isinstance(data.get("measure"), str)


def _manifest_of(out: Path) -> dict | None:
    """The folder's manifest when it is a gradlab one (None: none, or a file of that name that is not gradlab's)."""
    path = Path(out) / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if is_run_manifest(data) else None


def owned(out: Path, manifest: dict | None = None) -> set[str]:
    """The files of `out` that its gradlab run wrote, by the manifest's own list ('files'); for a folder
    written before manifests listed them, its tables (the manifest's), manifest, page and figures/*.png|svg
    (such runs replaced figures/ whole). Only names state_name allows, however the manifest reads: nothing outside the folder, and
    no file of anyone else's that the manifest does not name."""
    out = Path(out)
    manifest = manifest if manifest is not None else _manifest_of(out)
    if not is_run_manifest(manifest):
        return set()
    files = manifest.get("files")
    if not isinstance(files, list):  # a folder from before manifests listed their files: what such a run wrote
        listed = lambda key: [t for t in manifest.get(key) or [] if isinstance(t, str)] if isinstance(manifest.get(key), (list, dict)) else []  # noqa: E731
        tables = [*listed("table_digests"), *listed("tables"), *listed("derived"), "failures", "skipped"]
        figures = out / FIGURES
        drawn = [f"{FIGURES}/{p.name}" for p in figures.iterdir() if p.suffix in (".png", ".svg")] if figures.is_dir() and not figures.is_symlink() else []
        files = [MANIFEST, PAGE, *(f"{t}.parquet" for t in tables), *drawn]
    return {f for f in files if state_name(f) and (out / f).exists()}


def tables_of(out: Path, manifest: dict) -> list[str]:
    """The names of the tables the folder's run wrote (never another parquet file that lies beside them)."""
    return sorted(f[: -len(".parquet")] for f in owned(out, manifest) if f.endswith(".parquet"))


def links_in(out: Path) -> list[str]:
    """gradlab's own members of `out` (RESERVED names, the tables, what lies in figures/, points/ and .next/)
    that are symbolic links: gradlab never follows one out of the folder."""
    out = Path(out)
    found = []
    for name in RESERVED:
        path = out / name
        if path.is_symlink():
            found.append(name)
        elif name in (FIGURES, "points", STAGING) and path.is_dir():
            found += [p.relative_to(out).as_posix() for p in path.rglob("*") if p.is_symlink()]
    tables = {f for f in owned(out) if f.endswith(".parquet")}
    found += [p.name for p in out.glob("*.parquet") if p.name in tables and p.is_symlink()]
    return sorted(found)


def check_links(out: Path) -> None:
    """A FolderError naming the members of `out` that are links (gradlab refuses them, it never follows them)."""
    found = links_in(out)
    if found:
        shown = ", ".join(str(Path(out) / f) for f in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FolderError(f"{shown} {'is a symbolic link' if len(found) == 1 else 'are symbolic links'}: gradlab never follows a link "
                          "inside a run folder (it could lead outside it). Replace the link by the file or folder itself, or use another --out.")


def holds_run(out: Path) -> bool:
    """Whether `out` holds a gradlab run (a gradlab manifest, or the plan of a run that started there)."""
    out = Path(out)
    if _manifest_of(out) is not None:
        return True
    plan = out / "plan.json"
    try:
        data = json.loads(plan.read_text(encoding="utf-8")) if plan.is_file() and not plan.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("study"), str) and "keys" in data


_POINT_FILE = re.compile(r"[0-9a-f]{16}(\.json|\.\w+\.parquet)|\.[0-9a-f]{16}\..*\.tmp")  # points/KEY.json, KEY.TABLE.parquet, a temporary


def foreign(out: Path) -> list[str]:
    """What `out` holds that no gradlab run wrote (relative names): anything but the files its manifest lists,
    its plan, lock, staging and saved points (a manifest, page or plan that is not gradlab's counts as foreign)."""
    out = Path(out)
    mine = owned(out) | ({"plan.json"} if holds_run(out) else set())
    found = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name in (LOCK, STAGING) or name.startswith(".write-test-") or name in mine:
            continue
        if name == "points" and entry.is_dir() and not entry.is_symlink():
            found += [f"points/{p.name}" for p in sorted(entry.iterdir()) if not _POINT_FILE.fullmatch(p.name)]
        elif name == FIGURES and entry.is_dir() and not entry.is_symlink():
            found += [f"{FIGURES}/{p.name}" for p in sorted(entry.iterdir()) if f"{FIGURES}/{p.name}" not in mine]
        elif not (name.startswith(".") and name.endswith(".tmp")):
            found.append(name)
    return found


def staging(out: Path) -> Path:
    """An empty DIR/.next/ to write the next state into (what a crashed writer left there is dropped)."""
    check_links(out)
    path = Path(out) / STAGING
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _staged(stage: Path) -> list[str]:
    """The state files in the staging folder (relative names), each checked against state_name."""
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if not p.is_dir() and p.name != COMMIT)
    bad = [f for f in files if not state_name(f)]
    if bad:
        raise FolderError(f"{stage} holds {', '.join(bad)}, which is not a file of a run's state (tables, manifest, page, figures).")
    return files


def drawn(rel: str) -> bool:
    """Whether a state file is drawn from the tables (the page and its figures), rather than written with them."""
    return rel == PAGE or rel.startswith(f"{FIGURES}/")


def commit(out: Path, redrawn: bool = False, keep_drawn: bool = False) -> None:
    """Swap the staged state in: the manifest (staged, or the folder's own when only the page and figures
    were `redrawn`: the tables stay) lists every file of the new state; the journal says what moves in and
    which files of the state before go (only those the folder's manifest lists as its own: another file, in
    the folder or beside it, is never touched); then it is applied. A file in the way that gradlab did not
    write is refused before anything moves. A crash after the journal is written is finished by `recover`;
    one before it leaves the old state whole. keep_drawn: the figures of the state before that this one did not
    redraw stay (a view that lacked an input never deletes what it could not redraw)."""
    out, stage = Path(out), Path(out) / STAGING
    before = owned(out)
    manifest = read_json(stage / MANIFEST) if (stage / MANIFEST).exists() else _manifest_of(out)
    if manifest is None:
        raise FolderError(f"{out} holds no gradlab manifest.json: there is no run state to commit.")
    kept = {f for f in before if (redrawn and not drawn(f) and f != MANIFEST) or (keep_drawn and f.startswith(f"{FIGURES}/") and f not in _staged(stage))}
    if redrawn:  # the tables stay as they are: so does the list of them, a file git does not keep (steps.parquet) included
        listed = manifest.get("files")  # a redraw stages no manifest: this is the folder's own, read above
        kept |= {f for f in listed if isinstance(f, str) and state_name(f) and not drawn(f) and f != MANIFEST} if isinstance(listed, list) else set()
    files = sorted(set(_staged(stage)) | {MANIFEST} | kept)
    write_json_atomic(manifest | {"files": files}, stage / MANIFEST)
    in_the_way = [f for f in files if f not in before and os.path.lexists(out / f)]
    if in_the_way:
        raise FolderError(f"{', '.join(str(out / f) for f in in_the_way)} {'is' if len(in_the_way) == 1 else 'are'} not gradlab's "
                          "(no manifest of a run here lists it), and this run would write its own file of that name: gradlab replaces "
                          "only what a gradlab run wrote. Move it away, or use another --out.")
    write_json_atomic({"move": sorted(set(files) - kept), "remove": sorted(before - set(files))}, stage / COMMIT)
    _apply(out)


def _journal(out: Path) -> dict:
    """The journal of `out`, every name in it checked: only the run's own state files, no link on the way."""
    path = out / STAGING / COMMIT
    journal = read_json(path)
    moves, removes = journal.get("move"), journal.get("remove")
    if not isinstance(moves, list) or not isinstance(removes, list):
        raise FolderError(f"{path} is not a journal gradlab wrote (it lists no 'move' and 'remove'): nothing was done. Delete {out / STAGING}.")
    bad = [repr(n) for n in moves + removes if not state_name(n)]
    if bad:
        raise FolderError(f"{path} names {', '.join(bad[:5])}, which {'is' if len(bad) == 1 else 'are'} not a file of a run's state "
                          "(a journal may name only the run's own tables, manifest, page and figures, inside its folder): nothing "
                          f"was done. The folder did not come from gradlab as it is; delete {out / STAGING} to use it.")
    links = [n for n in [FIGURES, *moves, *removes] if (out / n).is_symlink() or (out / STAGING / n).is_symlink()]
    if links:
        raise FolderError(f"{path} would move or remove through symbolic links ({', '.join(links[:5])}): nothing was done. "
                          "gradlab never follows a link inside a run folder; replace the links by what they point to.")
    dirs = [n for n in removes if (out / n).is_dir()] + [n for n in moves if (out / n).is_dir() or (out / STAGING / n).is_dir()]
    if dirs or (out / FIGURES).exists() and not (out / FIGURES).is_dir():
        raise FolderError(f"{path}: {', '.join(dirs) or FIGURES} should be {'files' if dirs else 'a folder'} in {out}: nothing was done.")
    return {"move": moves, "remove": removes}


def _apply(out: Path) -> None:
    stage = out / STAGING
    if stage.is_symlink():
        raise FolderError(f"{stage} is a symbolic link: gradlab never follows a link inside a run folder. Delete it.")
    journal = _journal(out)
    for name in journal["move"]:
        src, dst = stage / name, out / name
        if not src.exists():
            continue  # moved before a crash
        dst.parent.mkdir(exist_ok=True)
        os.replace(src, dst)
    for name in journal["remove"]:
        path = out / name
        if path.exists():
            path.unlink()
    figures = out / FIGURES
    if figures.is_dir() and not any(figures.iterdir()):
        figures.rmdir()
    (stage / COMMIT).unlink()
    shutil.rmtree(stage, ignore_errors=True)


def recover(out: Path) -> str | None:
    """Bring a folder a writer died in back to a consistent state: finish a commit whose journal was
    written, drop a staging that never got one. Says what it did (None: nothing to do)."""
    stage = Path(out) / STAGING
    if not os.path.lexists(stage):
        return None
    if stage.is_symlink():
        raise FolderError(f"{stage} is a symbolic link: gradlab never follows a link inside a run folder. Delete the link.")
    if (stage / COMMIT).exists():
        _apply(Path(out))
        return f"finished writing {out}'s new state, which a process that stopped had begun swapping in"
    shutil.rmtree(stage, ignore_errors=True)
    return f"dropped a half-written state in {out} (a process stopped while writing it); the folder is as it was before"


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
