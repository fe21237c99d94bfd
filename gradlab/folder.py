"""A run folder moves from one consistent state to the next: its tables, manifest, figures and page are
staged in DIR/.next/ and swapped in by a journalled commit, under a lock that one run holds at a time."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from .store import FolderError, file_digest, read_json, write_json_atomic

try:
    import fcntl
except ImportError:  # no flock (Windows): a lock's holder is judged by its pid alone
    fcntl = None

STAGING = ".next"  # the next state, being written; never read as the folder's state
STAGED_BY = "GRADLAB-STAGING.json"  # inside STAGING: gradlab's mark (a folder named .next proves nothing)
COMMIT = "COMMIT.json"  # inside STAGING: the staged state is complete; what to move in and what to remove
LOCK = ".lock"  # the pid, host and command of the run that is writing the folder, with gradlab's mark
MANIFEST = "manifest.json"
PAGE = "report.html"
FIGURES = "figures"
MARK = "gradlab"  # the key of the mark gradlab leaves inside every state file it writes (parquet, PNG, SVG, page)
PAGE_MARK = '<meta name="generator" content="gradlab">'  # the page's mark, in its head


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


def lock_of_gradlab(data: object) -> bool:
    """Whether a lock file's content is gradlab's: its mark, or (a lock from before the mark) pid, host and command."""
    if not isinstance(data, dict):
        return False
    return data.get(MARK) == "lock" or (isinstance(data.get("pid"), int) and isinstance(data.get("host"), str) and "command" in data)


def _flock(fd: int) -> bool:
    """Take the kernel's exclusive lock on an open file without waiting (True: taken). The kernel drops it when
    its holder dies, however it dies: a holder is alive exactly while its lock is held. Without flock: True."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_fd(fd: int) -> object:
    """The JSON in an open lock file (None: not JSON, or not readable)."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        return json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


class FolderLock:
    """An exclusive lock on a run folder: DIR/.lock, holding gradlab's mark, pid, host and command, and the kernel's
    flock for as long as its holder lives. The file is made whole and locked before it takes its name (a temporary
    linked to .lock), so no one ever reads a half-written lock or a lock its maker does not hold yet. A lock whose
    flock is free belongs to a process that is gone: it is taken over (`echo` says so) by whoever gets its flock first;
    that one removes it while holding it and links its own, so two processes never both hold the folder. A live
    holder is a FolderBusy error; a .lock that is not gradlab's is never taken, changed or removed (a FolderError)."""

    def __init__(self, out: Path, what: str, echo=None):
        self.path = Path(out) / LOCK
        self.what = what
        self.echo = echo or (lambda text: print(text, file=sys.stderr))
        self.held = False
        self._fd: int | None = None

    def _holder(self) -> dict | None:
        """The lock's content: None when there is no lock; {} when it is not a gradlab lock."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return {}
        return data if lock_of_gradlab(data) else {}

    def _foreign(self) -> FolderError:
        return FolderError(f"{self.path} is not gradlab's lock (it holds no lock gradlab wrote), and gradlab never changes or removes "
                           "a file it did not write. gradlab needs that name to lock the run folder: move the file away, or run into another --out.")

    def _busy(self, holder: dict) -> FolderBusy:
        return FolderBusy(f"{self.path.parent} is being written by another gradlab process (pid {holder.get('pid')} on {holder.get('host')}, "
                          f"since {holder.get('since')}: {holder.get('command')}). Wait for it, or use another --out.")

    def acquire(self) -> "FolderLock":
        out = self.path.parent
        out.mkdir(parents=True, exist_ok=True)
        me = {MARK: "lock", "pid": os.getpid(), "host": socket.gethostname(), "started": _proc_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.what, "flock": fcntl is not None}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".lock.", suffix=".tmp")
        try:
            os.write(fd, json.dumps(me).encode("utf-8"))
            os.fsync(fd)
            _flock(fd)  # a new file: nobody else has it yet
            for attempt in range(200):
                try:
                    os.link(tmp, self.path)  # whole and locked before it has the name
                except FileExistsError:
                    pass
                else:
                    self._fd, fd, self.held = fd, -1, True
                    return self
                if not self._take_over_if_stale(attempt):
                    continue
            raise FolderBusy(f"could not lock {out}: other processes keep taking {self.path}.")
        finally:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _take_over_if_stale(self, attempt: int) -> bool:
        """Called when .lock exists: raise FolderBusy for a live holder (FolderError for a file not gradlab's); remove
        a stale gradlab lock while holding its flock. Returns whether to try linking again at once."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return True  # released meanwhile
        except OSError:
            raise self._foreign() from None  # a link or a folder of that name
        try:
            data = _read_fd(fd)
            if not lock_of_gradlab(data):
                raise self._foreign()
            mine = _flock(fd)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replaced or removed while we looked: look again
                return True
            host = socket.gethostname()
            if not mine:  # its holder lives (or is taking over a stale lock this very moment: ask again shortly)
                if attempt < 20 and not _may_be_running(data, host):
                    time.sleep(0.02)
                    return False
                raise self._busy(data)
            pid, there = data.get("pid"), data.get("host")
            if isinstance(pid, int) and there not in (None, host):
                raise FolderBusy(f"{self.path.parent} is locked by pid {pid} on host {there} (since {data.get('since')}: "
                                 f"{data.get('command')}), which cannot be checked from here. If that run is over, delete {self.path}.")
            if not data.get("flock") and _may_be_running(data, host):  # a lock from a gradlab without flock, held by a live pid
                raise self._busy(data)
            self.echo(f"note: took over a stale lock on {self.path.parent} left by pid {pid} on {there} "
                      f"({data.get('command')}), which is no longer running.")
            os.unlink(self.path)  # while holding its flock: whoever opened it before sees it gone, and looks again
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.held:
            try:
                try:
                    if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                        os.unlink(self.path)  # before the flock goes: a waiter that opened it sees it gone
                except FileNotFoundError:
                    pass
            finally:
                os.close(self._fd)
                self._fd, self.held = None, False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locked_by_other(out: Path) -> dict | None:
    """The live holder of `out`'s lock, if another process holds it."""
    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        data = _read_fd(fd)
        if not lock_of_gradlab(data) or data.get("pid") == os.getpid():
            return None
        if data.get("flock") and fcntl is not None:
            if _flock(fd):
                return None  # nobody holds it
            return data
        return data if _may_be_running(data, socket.gethostname()) else None
    finally:
        os.close(fd)


# --- what a run folder holds, and which of it is gradlab's -------------------------------------------------

RESERVED = (STAGING, LOCK, "plan.json", MANIFEST, PAGE, FIGURES, "points")  # names gradlab writes (or reads) in a run folder
NAME_MAX = 255  # the longest file name (bytes) common file systems allow
_PART = re.compile(r"\w[\w.\-]*")  # one part of a state file's name: no separator, never '.' or '..', no leading dot


def state_name(rel: object) -> bool:
    """Whether `rel` may name a file of a run folder's state: manifest.json, report.html, NAME.parquet, or
    figures/NAME.png and figures/NAME.svg (a closed list: no other folder, no separator, no '..', nothing absolute,
    no name longer than a file system allows). Every name a journal or a manifest gives is checked against it
    before anything is done with it."""
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        return False
    if rel in (MANIFEST, PAGE):
        return True
    parts = rel.split("/")
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in parts):
        return False
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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if is_run_manifest(data) else None


def owned(out: Path, manifest: dict | None = None) -> set[str]:
    """The files of `out` that its gradlab run wrote, by the manifest's own list ('files'). For a folder written
    before manifests listed them: the manifest, its tables, the page, and the figures that page shows (each PNG's
    bytes are in the page) or that carry gradlab's mark, with the SVG beside each. For a run folder whose manifest
    is gone or damaged: the state files that carry gradlab's mark (`marked`). Only names state_name allows,
    however the manifest reads: nothing outside the folder, and no file of anyone else's that the manifest does
    not name."""
    out = Path(out)
    manifest = manifest if manifest is not None else _manifest_of(out)
    if not is_run_manifest(manifest):
        return {f for f in _state_files(out) if marked(out / f)} if holds_run(out) else set()
    files = manifest.get("files")
    if not isinstance(files, list):  # a folder from before manifests listed their files: what such a run wrote, recognised
        listed = lambda key: [t for t in manifest.get(key) or [] if isinstance(t, str)] if isinstance(manifest.get(key), (list, dict)) else []  # noqa: E731
        tables = [*listed("table_digests"), *listed("tables"), *listed("derived"), "failures", "skipped"]
        shown = _shown_in_page(out / PAGE)
        pngs = {f for f in _state_files(out) if f.endswith(".png") and (marked(out / f) or _sha(out / f) in shown)}
        svgs = {f for f in _state_files(out) if f.endswith(".svg") and (marked(out / f) or f[: -len(".svg")] + ".png" in pngs)}
        files = [MANIFEST, PAGE, *(f"{t}.parquet" for t in tables), *pngs, *svgs]
    return {f for f in files if isinstance(f, str) and state_name(f) and (out / f).exists()}


def _state_files(out: Path) -> list[str]:
    """The files of `out` whose names a run's state could have (not following links)."""
    found = [p.name for p in out.iterdir() if state_name(p.name)] if out.is_dir() else []
    figures = out / FIGURES
    if figures.is_dir() and not figures.is_symlink():
        found += [f"{FIGURES}/{p.name}" for p in figures.iterdir() if state_name(f"{FIGURES}/{p.name}")]
    return [f for f in found if (out / f).is_file() and not (out / f).is_symlink()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_EMBEDDED = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _shown_in_page(page: Path) -> set[str]:
    """sha256 of every PNG a page holds inside itself (gradlab's pages carry their figures)."""
    try:
        text = page.read_bytes() if page.is_file() and not page.is_symlink() else b""
    except OSError:
        return set()
    shown = set()
    for match in _EMBEDDED.finditer(text):
        try:
            shown.add(hashlib.sha256(base64.b64decode(match.group(1), validate=True)).hexdigest())
        except ValueError:
            continue
    return shown


def marked(path: Path) -> bool:
    """Whether a state file carries the mark gradlab leaves in what it writes: a key in a table's parquet metadata,
    a text chunk of a PNG, the creator of an SVG, a meta tag in the page's head, a manifest of a run."""
    path = Path(path)
    try:
        if not path.is_file() or path.is_symlink():
            return False
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return MARK.encode() in (pq.read_schema(path).metadata or {})
        head = path.open("rb").read(1 << 14)
    except Exception:  # noqa: BLE001 - a file that cannot be read as its kind carries no mark
        return False
    if path.suffix == ".png":
        return b"tEXt" + MARK.encode() + b"\0" in head
    if path.suffix == ".svg":
        return f"<dc:title>{MARK}".encode() in head
    if path.name == PAGE:
        return PAGE_MARK.encode() in head
    if path.name == MANIFEST:
        return is_run_manifest(_manifest_of(path.parent))
    return False


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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("study"), str) and "keys" in data


_POINT_FILE = re.compile(r"[0-9a-f]{16}(\.json|\.\w+\.parquet)|\.[0-9a-f]{16}\..*\.tmp")  # points/KEY.json, KEY.TABLE.parquet, a temporary


def foreign(out: Path) -> list[str]:
    """What `out` holds that no gradlab run wrote (relative names): anything but the files its manifest lists,
    its plan, saved points, and a staging folder and lock that carry gradlab's mark (a manifest, page, plan,
    .next or .lock that is not gradlab's counts as foreign)."""
    out = Path(out)
    mine = owned(out) | ({"plan.json"} if holds_run(out) else set())
    found = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name in mine or _WRITE_TEST.fullmatch(name) or (name == STAGING and is_staging(entry)) or (name == LOCK and _is_lock(entry)):
            continue
        if name == "points" and entry.is_dir() and not entry.is_symlink():
            found += [f"points/{p.name}" for p in sorted(entry.iterdir()) if not _POINT_FILE.fullmatch(p.name)]
        elif name == FIGURES and entry.is_dir() and not entry.is_symlink():
            found += [f"{FIGURES}/{p.name}" for p in sorted(entry.iterdir()) if f"{FIGURES}/{p.name}" not in mine]
        elif not (name.startswith(".") and name.endswith(".tmp")):
            found.append(name)
    return found


_WRITE_TEST = re.compile(r"\.write-test-\d+")  # check_out's probe that the folder can be written


def is_staging(path: Path) -> bool:
    """Whether DIR/.next is gradlab's staging folder: a folder (not a link) holding gradlab's mark, or the journal of
    a commit (a staging folder written before the mark existed, killed while it was swapped in)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and any(os.path.lexists(path / n) for n in (STAGED_BY, COMMIT))


def _is_lock(path: Path) -> bool:
    """Whether DIR/.lock is gradlab's lock (a file whose content is gradlab's)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 16:
            return False
        return lock_of_gradlab(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False


def not_gradlabs(out: Path) -> list[str]:
    """The names gradlab needs in every run folder that something else holds there: a .next or .lock that is not
    gradlab's (--share-folder cannot put a run beside those: gradlab stages and locks under these names)."""
    out = Path(out)
    found = []
    if os.path.lexists(out / STAGING) and not (out / STAGING).is_symlink() and not is_staging(out / STAGING):
        found.append(STAGING)
    if os.path.lexists(out / LOCK) and not _is_lock(out / LOCK):
        found.append(LOCK)
    return found


def _refuse_theirs(out: Path, name: str) -> FolderError:
    what = "stages a run's next state" if name == STAGING else "locks a run folder"
    return FolderError(f"{Path(out) / name} is not gradlab's (it does not carry gradlab's mark), and gradlab {what} under that "
                       "name: it never changes or removes what it did not make. Move it away (if it is a half-written state "
                       "left by an older gradlab, delete it), or run into another --out.")


def staging(out: Path) -> Path:
    """An empty DIR/.next/ to write the next state into, with gradlab's mark (what a crashed writer of gradlab's
    left there is dropped; a .next that is not gradlab's is refused, never removed)."""
    check_links(out)
    path = Path(out) / STAGING
    if os.path.lexists(path):
        if not is_staging(path):
            raise _refuse_theirs(out, STAGING)
        shutil.rmtree(path)
    made = Path(tempfile.mkdtemp(dir=out, prefix=f"{STAGING}.", suffix=".tmp"))  # marked before it takes the name
    try:
        (made / STAGED_BY).write_text(json.dumps({MARK: "staging", "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        os.chmod(made, 0o777 & ~_umask())
        os.rename(made, path)
    except BaseException:
        shutil.rmtree(made, ignore_errors=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _staged(stage: Path) -> list[str]:
    """The state files in the staging folder (relative names), each checked against state_name."""
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if not p.is_dir() and p.name not in (COMMIT, STAGED_BY))
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
    same = {f for f in in_the_way if _same_content(out / f, stage / f)}  # gradlab's own, known by what it holds: replacing it loses nothing
    same |= {f for f in in_the_way if f.endswith(".svg") and (f[: -len(".svg")] + ".png" in same | before)}  # the vector twin of such a figure
    in_the_way = [f for f in in_the_way if f not in same]
    if in_the_way:
        raise FolderError(f"{', '.join(str(out / f) for f in in_the_way)} {'is' if len(in_the_way) == 1 else 'are'} not gradlab's "
                          "(no manifest of a run here lists it), and this run would write its own file of that name: gradlab replaces "
                          "only what a gradlab run wrote. Move it away, or use another --out.")
    write_json_atomic({"move": sorted(set(files) - kept), "remove": sorted(before - set(files))}, stage / COMMIT)
    _apply(out)


def _same_content(theirs: Path, ours: Path) -> bool:
    """Whether a file in the way holds what this run writes under its name (the same bytes, or for a table the
    same rows and columns): a file of a run folder whose manifest is gone, recognised by its content."""
    try:
        if not theirs.is_file() or theirs.is_symlink() or not ours.is_file():
            return False
        if theirs.stat().st_size == ours.stat().st_size and theirs.read_bytes() == ours.read_bytes():
            return True
        if ours.suffix == ".parquet":
            return pd.read_parquet(theirs).equals(pd.read_parquet(ours))
    except Exception:  # noqa: BLE001 - a file that cannot be read as a table is not this table
        return False
    return False


JOURNAL_MAX = 1 << 20  # bytes: a journal gradlab writes names the run's own state files, a few hundred at most


def _journal(out: Path) -> dict:
    """The journal of `out`, every name in it checked: only the run's own state files, no link on the way."""
    path = out / STAGING / COMMIT
    if path.is_file() and path.stat().st_size > JOURNAL_MAX:
        raise FolderError(f"{path} is not a journal gradlab wrote ({path.stat().st_size / 1e6:.1f} MB; gradlab's name a run's own files, "
                          f"under {JOURNAL_MAX // 1024} KB): nothing was done. The folder did not come from gradlab as it is; "
                          f"delete {out / STAGING} to use it.")
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
    if not is_staging(stage):
        raise _refuse_theirs(out, STAGING)
    if (stage / COMMIT).exists():
        _apply(Path(out))
        return f"finished writing {out}'s new state, which a process that stopped had begun swapping in"
    shutil.rmtree(stage, ignore_errors=True)
    return f"dropped a half-written state in {out} (a process stopped while writing it); the folder is as it was before"


_MANIFEST_FIELDS = {  # what a manifest's fields hold, where present: checked before any of them is read
    "study": (str,), "measure": (str,), "profile": (str,), "description": (str,), "profile_description": (str,),
    "row_count": (int,), "failed": (int,), "points_saved": (int,), "points_total": (int,), "points_skipped": (int,),
    "complete": (bool,), "argv": (list,), "points": (list,), "files": (list,), "table_digests": (dict,), "tables": (dict,),
    "column_dictionary": (dict,), "code": (dict,), "environment": (dict,), "resolved": (dict,), "dropped": (list,),
}


def check_manifest(out: Path, manifest: dict) -> None:
    """Every field the page and the commands read holds what gradlab writes there: a damaged one is a FolderError
    naming it, never a traceback of whatever tripped over it."""
    path = Path(out) / MANIFEST
    for key, kinds in _MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if key in manifest and value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
            raise FolderError(f"{path} is damaged: {key} should be {' or '.join(_KIND_NAMES[k] for k in kinds)}, got {value!r:.60}. "
                              "Delete it and rerun the command that made the folder (its points are reused), or `gradlab report` it.")
    for key in ("points", "argv"):
        if any(not isinstance(item, dict if key == "points" else str) for item in manifest.get(key) or []):
            raise FolderError(f"{path} is damaged: {key} should list {'points (objects)' if key == 'points' else 'words'}. Delete it and "
                              "rerun the command that made the folder (its points are reused).")
    if any(not isinstance(d, str) for d in (manifest.get("table_digests") or {}).values()):
        raise FolderError(f"{path} is damaged: table_digests should map each table to its checksum. Delete it and rerun the command that made the folder.")


_KIND_NAMES = {str: "text", int: "a whole number", bool: "true or false", list: "a list", dict: "an object"}


def check_tables(out: Path, manifest: dict) -> None:
    """The manifest's fields are what gradlab writes (check_manifest), and every table it lists matches the checksum
    it was written with (a table git does not keep may be absent); one that does not is a FolderError naming it."""
    check_manifest(out, manifest)
    for name, digest in manifest.get("table_digests", {}).items():
        path = Path(out) / f"{name}.parquet"
        if path.exists() and file_digest(path) != digest:
            raise FolderError(f"{path} does not match the checksum manifest.json records for it: the folder was changed "
                              "outside gradlab. Rerun the command that made it (it reuses every cached point) to rewrite its tables.")


def write_tables(stage: Path, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Each table as stage/NAME.parquet, gradlab's mark in its metadata; returns their checksums."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    digests = {}
    for name, df in tables.items():
        path = stage / f"{name}.parquet"
        table = pa.Table.from_pandas(df, preserve_index=False)
        mark = {MARK.encode(): json.dumps({"table": name}).encode()}
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **mark}), path)
        digests[name] = file_digest(path)
    return digests
