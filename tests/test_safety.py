"""gradlab touches only its own files: a hostile run folder (a journal naming files outside it, links),
an ordinary folder of a user's files, a start that fails (an unreachable scheduler) and names that would
put a run outside runs/. Each case builds the folder, runs the real command line, and checks every file
outside the run folder, and every foreign file inside it, byte for byte afterwards."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from gradlab import folder
from small_run import STUDY, invoke


def snapshot(root: Path, skip: Path | None = None) -> dict[str, object]:
    """Every entry under root (but `skip`): a file's bytes, a link's target, a folder as such."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if skip is not None and path == skip:
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes()
    return found


@pytest.fixture
def world(tmp_path) -> dict:
    """A study file, a finished run folder, and a user's files around it: a tree beside the run, a file above it."""
    study = tmp_path / "small.toml"
    study.write_text(STUDY)
    run = tmp_path / "work" / "run"
    assert invoke("run", study, "--out", run, "--quiet").exit_code == 0
    victim = tmp_path / "work" / "precious"
    (victim / "deep").mkdir(parents=True)
    (victim / "thesis.tex").write_text("years of work")
    (victim / "deep" / "data.csv").write_text("1,2,3")
    (tmp_path / "work" / "x").write_text("beside the run")
    return {"study": study, "run": run, "victim": victim, "root": tmp_path}


def hostile(run: Path, journal: dict) -> None:
    (run / folder.STAGING).mkdir(exist_ok=True)
    (run / folder.STAGING / folder.COMMIT).write_text(json.dumps(journal))


@pytest.mark.parametrize("journal", [
    {"move": [], "remove": ["{victim}"]},  # an absolute path: the whole tree
    {"move": ["../x"], "remove": []},  # out of the folder
    {"move": [], "remove": ["../precious/thesis.tex"]},
    {"move": [], "remove": ["figures/../../x"]},
    {"move": [], "remove": ["points"]},  # a folder of the run's, not a state file
    {"move": ["manifest.json"], "remove": ["..\\x"]},
    {"move": "manifest.json", "remove": []},  # not even a list
])
@pytest.mark.parametrize("command", ["report", "run"])
def test_a_hostile_journal_is_refused_and_nothing_anywhere_changes(world, journal, command):
    run, root = world["run"], world["root"]
    journal = json.loads(json.dumps(journal).replace("{victim}", str(world["victim"])))
    hostile(run, journal)
    before = snapshot(root)
    r = invoke("report", run) if command == "report" else invoke("run", world["study"], "--out", run, "--quiet")
    assert r.exit_code == 2, r.output
    assert f"{run / folder.STAGING / folder.COMMIT}" in r.output and "nothing was done" in r.output and "Traceback" not in r.output
    assert snapshot(root) == before  # nothing outside the folder, nor in it


def test_a_staging_folder_that_is_a_link_out_of_the_folder_is_refused(world):
    run, victim = world["run"], world["victim"]
    (victim / folder.COMMIT).write_text(json.dumps({"move": ["thesis.tex"], "remove": []}))  # ... and would move the user's file in
    (run / folder.STAGING).symlink_to(victim, target_is_directory=True)
    before = snapshot(world["root"])
    for r in (invoke("report", run), invoke("run", world["study"], "--out", run, "--quiet")):
        assert r.exit_code == 2 and "is a symbolic link" in r.output and str(run / folder.STAGING) in r.output, r.output
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("member", ["figures", "manifest.json", "points", "results.parquet", "figures/rates.png"])
def test_a_member_of_the_run_folder_that_is_a_link_is_refused_up_front(world, member):
    """A linked figures/ used to leave a journal that made every later run and report fail: now nothing starts."""
    run, victim = world["run"], world["victim"]
    target = victim / "elsewhere"
    os.replace(run / member, target)
    (run / member).symlink_to(target, target_is_directory=target.is_dir())
    before = snapshot(world["root"])
    for r in (invoke("report", run), invoke("run", world["study"], "--out", run, "--quiet", "--set", "seq_len=12")):
        assert r.exit_code == 2 and "symbolic link" in r.output and str(run / member) in r.output, r.output
    assert snapshot(world["root"]) == before
    (run / member).unlink()
    os.replace(target, run / member)
    assert invoke("report", run).exit_code == 0  # the link replaced by the thing itself: the folder works again


def test_a_link_inside_the_staging_folder_is_not_followed(world):
    run, victim = world["run"], world["victim"]
    hostile(run, {"move": ["report.html"], "remove": []})
    (run / folder.STAGING / "report.html").symlink_to(victim / "thesis.tex")
    before = snapshot(world["root"])
    r = invoke("report", run)
    assert r.exit_code == 2 and f"{run / folder.STAGING / 'report.html'} is a symbolic link" in r.output, r.output
    assert snapshot(world["root"]) == before


def test_an_ordinary_folder_of_a_users_files_is_refused_before_any_work(world, tmp_path):
    mine = tmp_path / "mydata"
    (mine / "figures").mkdir(parents=True)
    (mine / "experiment.parquet").write_bytes(b"PAR1 the user's own")
    (mine / "figures" / "my_plot.png").write_bytes(b"\x89PNG a plot")
    (mine / "report.html").write_text("<p>my report</p>")
    before = snapshot(tmp_path)
    r = invoke("run", world["study"], "--out", mine, "--quiet")
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.split())
    assert "is not empty and holds no gradlab run (experiment.parquet, figures/my_plot.png, report.html)" in said
    assert "--share-folder" in said and "Traceback" not in said
    assert snapshot(tmp_path) == before  # no points, no lock, no plan
    r = invoke("run", world["study"], "--out", mine, "--quiet", "--share-folder")  # its report.html would be written over
    assert r.exit_code == 2 and "holds experiment.parquet, figures/my_plot.png, report.html of its own" in " ".join(r.output.split()), r.output
    assert snapshot(tmp_path) == before


def test_a_run_beside_a_users_files_never_touches_them_through_reruns_and_reports(world, tmp_path):
    mine = tmp_path / "shared"
    (mine / "figures").mkdir(parents=True)
    (mine / "experiment.csv").write_bytes(b"the user's own")
    (mine / "figures" / "my_plot.jpg").write_bytes(b"a plot")
    (mine / "notes.txt").write_text("do not lose")
    foreign = {name: (mine / name).read_bytes() for name in ("experiment.csv", "figures/my_plot.jpg", "notes.txt")}
    assert invoke("run", world["study"], "--out", mine, "--quiet", "--share-folder").exit_code == 0
    manifest = json.loads((mine / "manifest.json").read_text())
    assert "report.html" in manifest["files"] and "results.parquet" in manifest["files"] and "experiment.csv" not in manifest["files"]
    assert "figures/my_plot.jpg" not in manifest["files"] and all(f.startswith("figures/") for f in manifest["files"] if f.endswith(".png"))
    first_figures = {f for f in manifest["files"] if f.startswith("figures/")}
    r = invoke("run", world["study"], "--out", mine, "--quiet", "--set", "probe=input")  # another grid: other figures
    assert r.exit_code == 0, r.output
    assert invoke("report", mine).exit_code == 0
    now = json.loads((mine / "manifest.json").read_text())["files"]
    gone = first_figures - set(now)
    assert gone and not any((mine / f).exists() for f in gone)  # gradlab's own figures of the state before: removed
    assert {name: (mine / name).read_bytes() for name in foreign} == foreign  # the user's: untouched
    assert invoke("report", mine).exit_code == 0 and (mine / "notes.txt").read_text() == "do not lose"


@pytest.mark.parametrize("name", ["results.parquet", "summary.parquet", "figures/rates.png", "figures/anything.svg"])
def test_a_shared_folder_holding_a_name_a_run_may_write_is_refused_before_any_work(world, tmp_path, name):
    mine = tmp_path / "shared"
    (mine / name).parent.mkdir(parents=True, exist_ok=True)
    (mine / name).write_bytes(b"the user's own")
    before = snapshot(tmp_path)
    r = invoke("run", world["study"], "--out", mine, "--quiet", "--share-folder")
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and f"holds {name} of its own" in said and "before" not in said.split("holds")[0], r.output
    assert snapshot(tmp_path) == before  # checked first: no point computed, no lock, no plan
    (mine / name).rename(tmp_path / "moved")
    assert invoke("run", world["study"], "--out", mine, "--quiet").exit_code == 0


def test_a_file_of_someone_elses_in_the_way_of_a_table_is_refused_and_kept(world):
    run = world["run"]
    (run / "summary.parquet").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"].remove("summary.parquet")
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "summary.parquet").write_bytes(b"the user's summary")  # a user's file of a name the run writes, in the run's folder
    r = invoke("run", world["study"], "--out", run, "--quiet")
    assert r.exit_code == 2 and f"{run / 'summary.parquet'} is not gradlab's" in " ".join(r.output.split()), r.output
    assert (run / "summary.parquet").read_bytes() == b"the user's summary"
    (run / "summary.parquet").unlink()
    r = invoke("run", world["study"], "--out", run, "--quiet")  # its points were saved: nothing is computed again
    assert r.exit_code == 0 and "2 cached, 0 computed" in r.output, r.output


def test_files_a_user_adds_to_a_run_folder_outlive_every_rerun_and_report(world):
    run = world["run"]
    (run / "notes.txt").write_text("mine")
    (run / "figures" / "mine.png").write_bytes(b"mine")
    (run / "extra.parquet").write_bytes(b"mine too")
    assert invoke("run", world["study"], "--out", run, "--quiet", "--set", "seq_len=12").exit_code == 0
    assert invoke("report", run).exit_code == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "figures" / "mine.png").read_bytes() == b"mine"
    assert (run / "extra.parquet").read_bytes() == b"mine too"
    from gradlab.report import check_finished, load_tables

    assert "extra" not in load_tables(run, check_finished(run))  # a parquet file beside the tables is not read as one


def test_a_folder_from_before_manifests_listed_their_files_rerenders_and_keeps_foreign_files(world):
    run = world["run"]
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "notes.txt").write_text("mine")
    assert invoke("report", run).exit_code == 0
    assert "files" in json.loads((run / "manifest.json").read_text()) and (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_out_is_an_error_not_the_current_directory(world, out):
    before = snapshot(world["root"])
    r = invoke("run", world["study"], "--out", out, "--quiet")
    assert r.exit_code == 2 and "--out" in r.output and "empty folder name" in r.output, r.output
    assert snapshot(world["root"]) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_start_that_fails_leaves_a_finished_run_as_it_was(world):
    """Study B into finished study A's folder on a scheduler that is not there: A's folder does not change,
    and its next report is A's, not B's '0 of 4 points'."""
    pytest.importorskip("distributed")
    run = world["run"]
    assert invoke("report", run).exit_code == 0
    before = snapshot(world["root"])
    address = f"tcp://127.0.0.1:{_closed_port()}"
    r = invoke("run", world["study"], "--out", run, "--quiet", "--set", "cell=rnn,gru", "--set", "seq_len=11", "--scheduler", address)
    assert r.exit_code == 2 and f"could not reach the Dask scheduler at {address}" in r.output and "Traceback" not in r.output, r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1
    assert snapshot(world["root"]) == before
    assert invoke("report", run).exit_code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["points_saved"] == 2 and manifest["resolved"]["seq_len"] == [10]
    new = world["root"] / "new-run"
    r = invoke("run", world["study"], "--out", new, "--quiet", "--scheduler", address)
    assert r.exit_code == 2 and not new.exists()  # a folder made for a run that did not start is taken away again


@pytest.mark.parametrize("args, said", [
    (["--scheduler", "nonsense"], "is not a scheduler address: give tcp://HOST:PORT"),
    (["--scheduler", "tcp://host:99999"], "is not a scheduler address"),
    (["--scheduler", "tls://127.0.0.1:8786"], "a tls:// scheduler needs the client's certificates"),
    (["--executor", "processes", "--scheduler", "tcp://127.0.0.1:8786"], "--executor processes runs the points on this machine"),
    (["--executor", "inline", "--scheduler", "tcp://127.0.0.1:8786"], "--executor inline runs the points on this machine"),
])
def test_an_executor_that_does_not_fit_is_refused_before_the_folder_changes(world, args, said):
    before = snapshot(world["root"])
    r = invoke("run", world["study"], "--out", world["run"], "--quiet", "--set", "seq_len=11", *args)
    assert r.exit_code == 2 and said in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("name", ["../../x", "/abs", "", "a/b", ".hidden", "x" * 81])
def test_a_study_or_profile_name_that_is_not_a_name_is_refused(tmp_path, monkeypatch, name):
    from gradlab.study import StudyError, parse_study

    with pytest.raises(StudyError, match="is not a name: letters, digits"):
        parse_study({"name": name, "measure": "gradient_decay"}, "s.toml")
    with pytest.raises(StudyError, match="profile .* is not a name"):
        parse_study({"name": "ok", "measure": "gradient_decay", "profiles": {name: {}}}, "s.toml")
    work = tmp_path / "here" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # the default folder would be runs/NAME-default, below here
    Path("bad.toml").write_text(STUDY.replace('name = "small"', f"name = {json.dumps(name)}"))
    before = snapshot(tmp_path)
    r = invoke("run", "bad.toml", "--quiet")
    assert r.exit_code == 2 and "is not a name" in r.output, r.output
    assert snapshot(tmp_path) == before


def test_a_report_on_a_read_only_or_full_disk_says_so_and_keeps_the_folder(world, monkeypatch):
    import errno

    from gradlab import store

    run = world["run"]
    assert invoke("report", run).exit_code == 0
    before = snapshot(world["root"])
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    r = invoke("report", run)
    monkeypatch.undo()
    assert r.exit_code == 1 and "Read-only file system" in r.output and "keeps its previous state" in r.output, r.output
    assert "Traceback" not in r.output and snapshot(world["root"]) == before

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_atomic", full)
    r = invoke("report", run)
    monkeypatch.undo()
    assert r.exit_code == 1 and "No space left on device" in r.output and "keeps its previous state" in r.output, r.output
    assert snapshot(world["root"], skip=run / folder.STAGING) == before
    assert invoke("report", run).exit_code == 0


def test_report_and_compare_of_a_folder_that_holds_no_run_are_clear_errors(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = invoke("compare", empty, world["run"])
    assert r.exit_code == 2 and "not a gradlab run folder" in r.output and "Traceback" not in r.output, r.output
    r = invoke("report", empty)
    assert r.exit_code == 2 and "holds no gradlab run" in r.output and "changes nothing in it" in r.output, r.output
    assert snapshot(tmp_path) == before
