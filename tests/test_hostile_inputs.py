"""Inputs that used to stop a command with a traceback, a wrong message or a stuck folder: a closed pipe, files nested
or named beyond reason, a journal of 40 MB, a damaged manifest field, values without a ceiling, a ladder that cannot
walk. Each is a clear error (or, for the pipe, no error at all) that says what is wrong and what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gradlab import folder
from small_run import STUDY, invoke, said

GRADLAB = Path(sys.executable).parent / "gradlab"


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(STUDY)
    return path


@pytest.fixture
def run(study, tmp_path) -> Path:
    out = tmp_path / "run"
    assert invoke("run", study, "--out", out, "--quiet").exit_code == 0
    return out


# --- 7. a closed pipe ----------------------------------------------------------------------------------------------

def _piped(command: str, cwd: Path) -> tuple[int, str]:
    done = subprocess.run(["bash", "-c", f"{command}; echo \"status ${{PIPESTATUS[0]}}\" >&2"], capture_output=True, text=True, cwd=cwd, timeout=300)
    return int(done.stderr.strip().splitlines()[-1].split()[-1]), done.stderr


def test_gradlab_list_into_head_exits_0(tmp_path):
    status, err = _piped(f"{GRADLAB} list | head -1", tmp_path)
    assert status == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("streams", ["", "2>&1"])
def test_a_run_into_a_closed_pipe_computes_everything_and_exits_0(study, tmp_path, streams):
    out = tmp_path / "piped"
    status, err = _piped(f"{GRADLAB} run {study} --out {out} {streams} | head -c 5 >/dev/null", tmp_path)
    assert status == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["row_count"] == len(pd.read_parquet(out / "results.parquet")) > 0
    assert (out / "report.html").exists()


# --- 8. tracebacks and stuck folders -------------------------------------------------------------------------------

def test_a_deeply_nested_journal_or_study_file_is_a_clear_error(study, run, tmp_path):
    (run / ".next").mkdir()
    (run / ".next" / folder.COMMIT).write_text("[" * 100_000 + "]" * 100_000)
    r = invoke("report", run)
    assert r.exit_code == 2 and "COMMIT.json" in r.output and "Traceback" not in r.output, r.output
    deep = tmp_path / "deep.toml"
    deep.write_text('name = "deep"\nmeasure = "cliff"\n[settings]\nstarts = ' + "[" * 5000 + "]" * 5000 + "\n")
    r = invoke("run", deep, "--dry-run")
    assert r.exit_code == 2 and "deeper" in r.output and "Traceback" not in r.output, r.output


def test_a_journal_of_40_mb_is_refused_at_once(run):
    (run / ".next").mkdir()
    names = ["figures/" + "x" * 30 + f"{i}.png" for i in range(1_000_000)]
    (run / ".next" / folder.COMMIT).write_text(json.dumps({"move": names, "remove": []}))
    assert (run / ".next" / folder.COMMIT).stat().st_size > 40e6
    start = time.perf_counter()
    r = invoke("report", run)
    assert r.exit_code == 2 and "is not a journal gradlab wrote" in said(r), r.output
    assert time.perf_counter() - start < 10  # read no further than its size (replaying it took 85 s)


def test_a_name_longer_than_a_file_system_allows_is_refused(study, run, tmp_path):
    (run / ".next").mkdir()
    (run / ".next" / folder.COMMIT).write_text(json.dumps({"move": ["x" * 300 + ".parquet"], "remove": []}))
    r = invoke("report", run)
    assert r.exit_code == 2 and "not a file of a run's state" in said(r) and "Traceback" not in r.output, r.output
    r = invoke("run", study, "--out", tmp_path / ("y" * 300), "--quiet")
    assert r.exit_code == 2 and "file systems allow at most 255" in said(r) and "free space" not in said(r), r.output


def test_a_damaged_field_of_the_manifest_is_named(run):
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest | {"row_count": "20,000"}))
    r = invoke("report", run)
    assert r.exit_code == 2 and "manifest.json is damaged: row_count should be a whole number, got '20,000'" in said(r), r.output
    (run / "manifest.json").write_text(json.dumps(manifest | {"points": ["not a point"]}))
    r = invoke("compare", run, run)
    assert r.exit_code == 2 and "points should list points" in said(r), r.output


@pytest.mark.parametrize("where", ["/nonexistent/x.csv", ".", "folder"])
def test_compare_out_names_a_file_in_a_folder_that_exists(run, tmp_path, where, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    r = invoke("compare", run, run, "--out", where)
    assert r.exit_code == 2 and "Invalid value for --out" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "folder").joinpath("x.csv").exists()


@pytest.mark.parametrize("setting, said_", [
    ("starts=[[nan,1]]", "starts must be (w, b) pairs of finite numbers"),
    ("starts=[[1,inf]]", "starts must be (w, b) pairs of finite numbers"),
    ("resolution=50000", "resolution must be at most 2001"),
])
def test_cliff_values_without_meaning_are_refused(setting, said_):
    r = invoke("run", "cliff", "--set", setting, "--dry-run")
    assert r.exit_code == 2 and said_ in said(r), r.output


@pytest.mark.parametrize("setting, said_", [
    ("pred_len=100000000", "pred_len must be in 0 .. 10000"),
    ("sample_temperature=1e30", "sample_temperature must be in (0, 100]"),
])
def test_lyrics_sampling_has_a_ceiling(setting, said_, monkeypatch):
    r = invoke("run", "lyrics", "--profile", "book", "--set", setting, "--dry-run")
    assert r.exit_code == 2 and said_ in said(r), r.output


@pytest.mark.parametrize("ladder, said_", [
    ('axis = "cell"\nstop_after = 1', "its values must be numbers"),
    ('axis = "seq_len"\nstop_after = 1\nover = "lr"', "it must be an axis of the grid other than 'seq_len'"),
    ('axis = "seq_len"\nstop_after = 1\nover = "seq_len"', "it must be an axis of the grid other than 'seq_len'"),
])
def test_a_ladder_walks_a_numeric_axis_over_another_axis(tmp_path, ladder, said_):
    path = tmp_path / "ladder.toml"
    path.write_text(f'name = "ladder"\nmeasure = "train"\n[grid]\ncell = ["rnn", "gru"]\nseq_len = [5, 10]\n[settings]\nsteps = 10\n[ladder]\n{ladder}\n')
    r = invoke("run", path, "--dry-run")
    assert r.exit_code == 2 and said_ in said(r), r.output
