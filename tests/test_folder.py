"""The run folder under faults: a kill or a full disk while tables are written, two runs at once,
truncated and bit-flipped cache files, a killed run reported, committed reference runs left alone."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from gradlab import folder
from gradlab.cli import main
from gradlab.report import check_finished
from gradlab.runner import run_study
from gradlab.store import FolderError, PointStore

STUDY = """
name = "small"
measure = "gradient_decay"
[grid]
cell = ["linear", "rnn"]
init_scale = [0.9, 1.1]
[settings]
seq_len = 10
hidden_size = 4
input_size = 2
batch_size = 2
device = "cpu"
"""


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(STUDY)
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _consistent(out: Path) -> None:
    """The manifest describes the tables beside it: the same points, the same checksums."""
    m = check_finished(out)  # raises on a table that is not the one the manifest wrote
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["point"]) == {p["key"] for p in m["points"] if p["status"] == "ok"}
    assert not (out / folder.STAGING).exists()


def test_a_crash_in_the_middle_of_swapping_tables_in_is_finished_by_the_next_reader(small, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    before = json.loads((out / "manifest.json").read_text())
    real, moved = os.replace, []

    def dies_on_third(src, dst):  # killed after two files of the new state took their names
        if Path(src).parent == out / folder.STAGING and not Path(src).name.startswith("."):
            if len(moved) == 2:
                raise KeyboardInterrupt
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dies_on_third)
    r = CliRunner().invoke(main, ["run", str(small), "--out", str(out), "--quiet", "--set", "init_scale=0.9,1.1,1.3"])
    monkeypatch.setattr(os, "replace", real)
    assert r.exit_code == 130 and "interrupted: 6 of 6 points saved" in r.output  # Ctrl-C while tables are written, as promised
    assert (out / folder.STAGING / folder.COMMIT).exists()  # half swapped: the journal says what is left
    r = invoke("report", str(out))
    assert r.exit_code == 0 and "finished writing" in r.output
    _consistent(out)
    after = json.loads((out / "manifest.json").read_text())
    assert after["plan_id"] != before["plan_id"] and after["points_total"] == 6


def test_a_full_disk_while_staging_leaves_the_old_state_whole(small, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    invoke("report", str(out))
    page, tables = (out / "report.html").read_bytes(), (out / "results.parquet").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", no_space)  # under every table gradlab writes (pandas' to_parquet included)
    r = invoke("run", str(small), "--out", str(out), "--quiet")  # every point cached: only the tables are written
    assert r.exit_code == 1 and "No space left on device" in r.output and "keeps its previous state" in r.output
    monkeypatch.undo()
    assert (out / "report.html").read_bytes() == page and (out / "results.parquet").read_bytes() == tables
    r = invoke("report", str(out))  # the next writer drops the half-written staging
    assert r.exit_code == 0
    _consistent(out)


def test_a_full_disk_while_saving_points_is_a_clear_error_and_keeps_what_was_saved(small, tmp_path, monkeypatch):
    from gradlab import store

    out, real, calls = tmp_path / "run", store.write_table_atomic, []

    def fails_on_third(df, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(df, path)

    monkeypatch.setattr(store, "write_table_atomic", fails_on_third)
    r = invoke("run", str(small), "--out", str(out), "--quiet")
    assert r.exit_code == 1 and "could not save a point" in r.output and "No space left on device" in r.output
    assert "Traceback" not in r.output and "Usage:" not in r.output
    monkeypatch.undo()
    assert "4 points, 2 cached, 2 to compute" in invoke("run", str(small), "--out", str(out), "--quiet").output


def _hold_lock(out: Path) -> subprocess.Popen:
    code = ("import sys, time; from gradlab.folder import FolderLock; lock = FolderLock(sys.argv[1], 'gradlab run other').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_runs_into_one_folder_the_second_is_refused_and_a_dead_holder_is_taken_over(small, tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        r = invoke("run", str(small), "--out", str(out), "--quiet")
        assert r.exit_code == 2 and f"pid {holder.pid}" in r.output and "gradlab run other" in r.output
        assert not (out / "points").exists()  # refused before any work
        assert invoke("report", str(out)).exit_code == 2  # a reader that writes waits its turn too
    finally:
        holder.kill()
        holder.wait()
    r = invoke("run", str(small), "--out", str(out), "--quiet")
    assert r.exit_code == 0 and f"took over a stale lock on {out} left by pid {holder.pid}" in r.output
    assert not (out / folder.LOCK).exists()  # released at the end


def test_a_lock_of_another_host_is_not_taken_over(small, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / folder.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "gradlab run x"}))
    r = invoke("run", str(small), "--out", str(out), "--quiet")
    assert r.exit_code == 2 and "host elsewhere" in r.output and f"delete {out / folder.LOCK}" in r.output


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "marker"])
def test_a_damaged_cached_point_is_recomputed_and_said(small, tmp_path, damage):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    clean = pd.read_parquet(out / "results.parquet")
    key = clean["point"].iloc[0]
    table = out / "points" / f"{key}.results.parquet"
    if damage == "truncate":
        table.write_bytes(table.read_bytes()[:100])
    elif damage == "flip":
        _flip_a_bit(table)
    else:
        marker = out / "points" / f"{key}.json"
        marker.write_text(marker.read_text().replace('"seconds": ', '"seconds": 1', 1))
    assert PointStore(out).state(key) == "corrupt"
    r = invoke("run", str(small), "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert "1 saved point failed its checksum (truncated or changed on disk) and is recomputed" in r.output
    assert "4 points: 3 cached, 1 computed (1 recomputed: they failed their checksums)" in r.output
    again = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(clean, again)  # the same numbers as before the damage


def test_a_changed_table_is_caught_by_the_report(small, tmp_path):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    _flip_a_bit(out / "decay_rates.parquet")
    r = invoke("report", str(out))
    assert r.exit_code == 2 and "decay_rates.parquet does not match the checksum" in r.output


def test_report_of_a_killed_run_with_a_new_grid_renders_what_the_folder_holds(small, tmp_path):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", "run", str(small), "--out", str(out), "--quiet", "--set", "seq_len=400",
                             "--set", "hidden_size=48", "--set", "init_scale=0.5,0.6,0.7,0.8,0.9"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    plan_id = json.loads((out / "manifest.json").read_text())["plan_id"]
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 5:
        time.sleep(0.05)  # the first new point saved
    proc.send_signal(signal.SIGKILL)  # no chance to write anything
    proc.wait()
    assert json.loads((out / "manifest.json").read_text())["plan_id"] == plan_id  # the tables are still the earlier run's
    r = invoke("report", str(out))
    assert r.exit_code == 0
    assert "stopped before writing its tables: writing them from its saved points" in r.output
    assert "Unfinished run:" in r.output and "of 10 points saved" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["plan_id"] != plan_id and not m["complete"] and m["points_total"] == 10
    assert "Unfinished run:" in (out / "report.html").read_text()
    _consistent(out)


def test_sigterm_ends_like_ctrl_c_with_the_saved_points_tabled(small, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", "run", str(small), "--out", str(out), "--quiet", "--set", "seq_len=400",
                             "--set", "hidden_size=48", "--set", "init_scale=0.5,0.6,0.7,0.8,0.9"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "points").glob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "points saved in" in output and "rerun the same command to resume" in output, output
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and m["points_saved"] >= 1
    _consistent(out)


def test_no_report_removes_the_page_of_an_earlier_state(small, tmp_path):
    out = tmp_path / "run"
    invoke("run", str(small), "--out", str(out), "--quiet")
    assert (out / "report.html").exists() and list((out / "figures").glob("*.png"))
    invoke("run", str(small), "--out", str(out), "--quiet", "--no-report", "--set", "seq_len=12")
    assert not (out / "report.html").exists() and not (out / "figures").exists()  # it would describe the seq_len=10 run
    _consistent(out)


def test_a_plain_run_never_writes_over_a_committed_reference_run(small, tmp_path):
    repo = tmp_path / "repo"
    out = repo / "reports" / "ref"
    run_study(small, out=out, progress=False)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", "reports/ref/manifest.json")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "ref")
    before = (out / "manifest.json").read_bytes()
    r = invoke("run", str(small), "--out", str(out), "--quiet", "--set", "seq_len=12")
    assert r.exit_code == 2 and "holds a committed reference run" in r.output and "--reference" in r.output
    assert (out / "manifest.json").read_bytes() == before
    assert invoke("run", str(small), "--out", str(out), "--quiet", "--reference", "--set", "seq_len=12").exit_code == 0


def test_runs_land_in_runs_by_default(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("run", str(small), "--quiet", "--no-report")
    assert r.exit_code == 0 and (tmp_path / "runs" / "small-default" / "manifest.json").exists()


@pytest.mark.parametrize("where", ["file", "below_file", "unwritable"])
def test_an_out_that_cannot_hold_a_run_is_refused_before_any_work(small, tmp_path, where, monkeypatch):
    target = tmp_path / "f"
    target.write_text("x")
    out = {"file": target, "below_file": target / "sub", "unwritable": tmp_path / "ro"}[where]
    if where == "unwritable":  # root writes anywhere: make the write itself fail, as a read-only mount does
        real = Path.write_bytes
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system"))
                            if ".write-test" in self.name else real(self, data))
    r = invoke("run", str(small), "--out", str(out), "--quiet")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert {"file": "is a file, not a folder", "below_file": "is a file, not a folder", "unwritable": "Read-only file system"}[where] in r.output


@pytest.mark.parametrize("name", ["manifest.json", "plan.json"])
def test_a_damaged_manifest_or_plan_names_the_file(small, tmp_path, name):
    out = tmp_path / "run"
    run_study(small, out=out, progress=False)
    (out / name).write_text("{not json")
    r = invoke("report", str(out))
    assert r.exit_code == 2 and f"{out / name} is not valid JSON" in r.output and "Traceback" not in r.output


def test_compare_fills_the_settings_of_rows_only_one_run_has(small, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_study(small, out=a, progress=False)
    run_study(small, out=b, progress=False, overrides=["init_scale=0.9,1.1,1.3"])
    csv = tmp_path / "c.csv"
    r = invoke("compare", str(a), str(b), "--out", str(csv))
    assert r.exit_code == 0
    table = pd.read_csv(csv)
    only_b = table[table["in"] == "B only"]
    assert len(only_b) and only_b["init_scale"].eq(1.3).all() and only_b["cell"].notna().all()
    assert table[["cell", "init_scale", "probe", "wrt"]].notna().all().all()
