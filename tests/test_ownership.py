"""What gradlab owns in a run folder, and what it never takes: a report never leaves a run with less than its
tables hold (a points/ cache deleted), a user's .next/ or .lock is never gradlab's, a legacy folder keeps a user's
figure, a folder whose manifest is gone is repaired by a rerun, and a stale lock is taken over by one process only.
Each case runs the real command line on a small study and checks the files byte for byte afterwards."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from gradlab import folder
from small_run import STUDY, invoke, said


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def state(run: Path) -> dict[str, bytes]:
    """The run's tables and manifest (what a report must never shrink)."""
    return {name: data for name, data in files(run).items() if name.endswith(".parquet") and "/" not in name or name == "manifest.json"}


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(STUDY)
    return path


@pytest.fixture
def run(study, tmp_path) -> Path:
    out = tmp_path / "run"
    r = invoke("run", study, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


# --- 1. a report never leaves a run with less than its tables hold ------------------------------------------------

@pytest.mark.parametrize("lose", ["points", "one marker"])
def test_a_report_keeps_a_finished_run_whose_cache_is_gone(run, lose):
    before = state(run)
    rows = len(pd.read_parquet(run / "results.parquet"))
    if lose == "points":
        for p in (run / "points").iterdir():
            p.unlink()
        (run / "points").rmdir()
    else:
        next((run / "points").glob("*.json")).unlink()
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert "the tables are kept as they are, never rebuilt from fewer points" in said(r)
    assert f"holds {0 if lose == 'points' else 1} of the 2 points its tables show" in said(r)
    assert "Unfinished" not in r.output and "Unfinished" not in (run / "report.html").read_text()
    assert state(run) == before and len(pd.read_parquet(run / "results.parquet")) == rows
    assert json.loads((run / "manifest.json").read_text())["complete"] is True


def test_rederiving_a_run_whose_cache_is_short_is_refused(run):
    from gradlab.assemble import collect
    from gradlab.store import FolderError

    before = state(run)
    next((run / "points").glob("*.json")).unlink()
    with pytest.raises(FolderError, match="would leave the run with less than it holds"):
        collect(run)
    assert state(run) == before


def test_a_newer_run_that_saved_nothing_leaves_the_tables_of_the_run_before(run):
    before = state(run)
    plan = json.loads((run / "plan.json").read_text())
    plan["id"], plan["keys"], plan["argv"] = "a-newer-run", ["0123456789abcdef"], ["gradlab", "run", "other"]
    (run / "plan.json").write_text(json.dumps(plan))  # a run started with another grid, killed before its first point
    r = invoke("report", run)
    assert r.exit_code == 0 and "saved no point before it stopped: the tables of the run before it are kept" in said(r), r.output
    assert state(run) == before


# --- 2. a .next or .lock that is not gradlab's ---------------------------------------------------------------------

@pytest.mark.parametrize("share", [False, True])
def test_a_users_next_folder_survives_a_run_into_its_folder(study, tmp_path, share):
    web = tmp_path / "site"
    (web / ".next" / "static").mkdir(parents=True)
    (web / ".next" / "static" / "app.js").write_text("a web build")
    before = files(tmp_path)
    r = invoke("run", study, "--out", web, "--quiet", *(["--share-folder"] if share else []))
    assert r.exit_code == 2 and ".next" in r.output and "not gradlab's" in said(r) and "Traceback" not in r.output, r.output
    assert files(tmp_path) == before


@pytest.mark.parametrize("command", ["run", "report"])
def test_a_users_next_in_a_run_folder_is_never_removed(study, run, command):
    (run / ".next").mkdir()
    (run / ".next" / "index.html").write_text("mine")
    before = files(run)
    r = invoke(command, *([study, "--out", run, "--quiet"] if command == "run" else [run]))
    assert r.exit_code == 2 and ".next" in said(r) and "not gradlab's" in said(r), r.output
    assert files(run) == before


@pytest.mark.parametrize("content", ["not json", "", json.dumps({"user": "config"})])
def test_a_lock_file_gradlab_cannot_read_is_not_unlinked(study, run, content):
    (run / folder.LOCK).write_text(content)
    before = files(run)
    for args in (["run", study, "--out", run, "--quiet"], ["report", run]):
        r = invoke(*args)
        assert r.exit_code == 2 and ".lock" in r.output and "not gradlab's" in said(r), r.output
        assert files(run) == before


def test_next_as_a_plain_file_is_a_clear_error_every_time(study, run):
    (run / ".next").write_text("a file")
    for args in (["run", study, "--out", run, "--quiet"], ["report", run]):
        r = invoke(*args)
        assert r.exit_code == 2 and ".next" in r.output and "Traceback" not in r.output, r.output
    assert (run / ".next").read_text() == "a file"


def test_gradlabs_own_staging_and_lock_carry_its_mark(run, study):
    stage = folder.staging(run)
    assert folder.is_staging(stage) and json.loads((stage / folder.STAGED_BY).read_text())["gradlab"] == "staging"
    assert invoke("report", run).exit_code == 0  # gradlab's own half-written staging: dropped
    assert not (run / ".next").exists()
    with folder.FolderLock(run, "test") as lock:
        assert json.loads(lock.path.read_text())["gradlab"] == "lock"
        assert folder.foreign(run) == []


# --- 3. a folder from before manifests listed their files ----------------------------------------------------------

def test_a_legacy_folder_keeps_a_users_figure_and_replaces_gradlabs(run):
    invoke("report", run)
    manifest = json.loads((run / "manifest.json").read_text())
    ours = sorted(f for f in manifest["files"] if f.startswith("figures/"))
    del manifest["files"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "figures" / "my_plot.png").write_bytes(b"\x89PNG the user's plot")
    (run / "figures" / "my_plot.svg").write_text("<svg>the user's</svg>")
    assert folder.owned(run) >= set(ours) and not {"figures/my_plot.png", "figures/my_plot.svg"} & folder.owned(run)
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "figures" / "my_plot.png").read_bytes() == b"\x89PNG the user's plot"
    assert (run / "figures" / "my_plot.svg").read_text() == "<svg>the user's</svg>"
    assert "figures/my_plot.png" not in json.loads((run / "manifest.json").read_text())["files"]


def test_a_legacy_figure_is_known_by_the_page_that_shows_it_not_by_its_name(run):
    import base64

    invoke("report", run)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    fig = run / "figures" / "rates.png"
    marked_bytes = fig.read_bytes()
    unmarked = marked_bytes.replace(b"tEXtgradlab\0", b"tEXtsomeone\0")  # as drawn before figures carried the mark
    assert unmarked != marked_bytes
    fig.write_bytes(unmarked)
    assert "figures/rates.png" not in folder.owned(run)  # neither marked nor the bytes the page shows
    page = (run / "report.html").read_text()
    (run / "report.html").write_text(page.replace(base64.b64encode(marked_bytes).decode(), base64.b64encode(unmarked).decode()))
    assert "figures/rates.png" in folder.owned(run) and "figures/rates.svg" in folder.owned(run)  # the page shows it: gradlab's


# --- 4. a damaged or deleted manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("marks", ["marked", "from before the marks"])
def test_a_rerun_repairs_a_folder_whose_manifest_was_deleted(study, run, marks):
    tables = {n: pd.read_parquet(run / n) for n in state(run) if n.endswith(".parquet")}
    if marks != "marked":  # tables written before gradlab marked them: known by their content
        for name, df in tables.items():
            df.to_parquet(run / name, index=False)
            assert not folder.marked(run / name)
    (run / "manifest.json").unlink()
    (run / "notes.txt").write_text("the user's")
    r = invoke("run", study, "--out", run, "--quiet")
    assert r.exit_code == 0 and "2 cached, 0 computed" in r.output, r.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and "notes.txt" not in manifest["files"] and (run / "notes.txt").read_text() == "the user's"
    for name, df in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), df)


def test_a_report_rebuilds_a_folder_whose_manifest_was_deleted_from_its_points(run):
    rows = len(pd.read_parquet(run / "results.parquet"))
    (run / "manifest.json").unlink()
    r = invoke("report", run)
    assert r.exit_code == 0 and "holds no manifest.json" in said(r), r.output
    assert json.loads((run / "manifest.json").read_text())["complete"] and len(pd.read_parquet(run / "results.parquet")) == rows


def test_a_damaged_manifest_names_itself_and_the_way_back_works(study, run):
    (run / "manifest.json").write_text("{ damaged")
    r = invoke("report", run)
    assert r.exit_code == 2 and "manifest.json is not valid JSON" in r.output and "delete it" in r.output
    (run / "manifest.json").unlink()
    r = invoke("run", study, "--out", run, "--quiet")
    assert r.exit_code == 0 and "2 cached, 0 computed" in r.output, r.output


def test_a_users_table_in_a_folder_without_manifest_is_still_not_gradlabs(study, run):
    (run / "manifest.json").unlink()
    (run / "summary.parquet").write_bytes(b"the user's, not a table gradlab wrote")
    r = invoke("run", study, "--out", run, "--quiet")
    assert r.exit_code == 2 and "summary.parquet is not gradlab's" in said(r), r.output
    assert (run / "summary.parquet").read_bytes() == b"the user's, not a table gradlab wrote"


# --- 5. one holder of a lock, however many take over a stale one ---------------------------------------------------

def _contend(out: str, log: str, barrier) -> None:
    from gradlab.folder import FolderBusy, FolderLock

    barrier.wait()
    try:
        lock = FolderLock(out, "contender", echo=lambda _: None).acquire()
    except FolderBusy:
        return
    with open(log, "a") as f:
        f.write(f"in {os.getpid()}\n")
        f.flush()
        time.sleep(0.05)
        f.write(f"out {os.getpid()}\n")
    lock.release()


def test_eight_processes_on_one_stale_lock_never_both_hold_it(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(14):
        out = tmp_path / f"r{round_}"
        out.mkdir()
        dead = ctx.Process(target=lambda: None)
        dead.start()
        dead.join()  # a pid that is no longer running
        (out / folder.LOCK).write_text(json.dumps({"gradlab": "lock", "pid": dead.pid, "host": os.uname().nodename,
                                                    "since": "then", "command": "gradlab run killed", "flock": True}))
        log = tmp_path / f"log{round_}"
        log.touch()
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_contend, args=(str(out), str(log), barrier)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        lines = log.read_text().split()
        events = list(zip(lines[::2], lines[1::2]))
        assert events, "someone takes over a stale lock"
        holding = 0
        for what, _ in events:  # entries and exits strictly alternate: never two holders at once
            holding += 1 if what == "in" else -1
            assert holding in (0, 1), events
        assert not (out / folder.LOCK).exists()


def test_a_folder_without_manifest_or_points_says_how_to_get_them_back(study, run):
    import shutil

    (run / "manifest.json").unlink()
    shutil.rmtree(run / "points")
    r = invoke("report", run)
    assert r.exit_code == 2 and "no saved point of its last run to write one from" in said(r) and "Rerun the command" in said(r), r.output
    assert "Usage:" not in r.output and "gradlab report" not in said(r).split("Rerun")[1]
    r = invoke("run", study, "--out", run, "--quiet")
    assert r.exit_code == 0 and "holds no manifest.json" in said(r) and "2 computed" in r.output, r.output
