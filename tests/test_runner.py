"""The runner: tables and manifest, cache and resume after a kill, failures recorded, workers, determinism."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest

from gradlab.report import render
from gradlab.runner import InlineExecutor, run_study

TINY = """
name = "tiny"
measure = "gradient_decay"
description = "a tiny <b>study</b>"
exclude = [{ cell = "linear", impl = "cudnn" }]
[grid]
cell = ["linear", "rnn", "lstm"]
impl = ["scratch", "cudnn"]
init_scale = [0.9, 1.1]
probe = ["hidden", "jacobian"]
[settings]
seq_len = 12
hidden_size = 4
input_size = 2
batch_size = 2
"""
N_POINTS = 5 * 2 * 2


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["point", "wrt", "t"]).reset_index(drop=True)


def test_run_writes_tidy_tables_and_a_manifest(tiny, tmp_path):
    out = tmp_path / "run"
    s = run_study(tiny, out=out, device="cpu", progress=False, argv=["gradlab", "run", "tiny"])
    assert (s.points, s.cached, s.computed, s.failed) == (N_POINTS, 0, N_POINTS, [])
    res = pd.read_parquet(out / "results.parquet")
    from gradlab.measures.gradient_decay import Config

    settings = [f.name for f in dataclasses.fields(Config)]
    assert list(res.columns[: len(settings)]) == settings  # every setting, fixed or not: two runs' tables stack
    assert {"t", "distance", "grad_norm", "wrt"} <= set(res.columns)
    assert (res["seq_len"] == 12).all()
    assert len(res) == s.rows and res["point"].nunique() == N_POINTS
    rates = pd.read_parquet(out / "decay_rates.parquet")
    assert {"factor_per_step", "vanish_distance", "r2"} <= set(rates.columns)
    m = json.loads((out / "manifest.json").read_text())
    for key in ["study", "resolved", "argv", "seeds", "environment", "backends", "started", "ended", "row_count", "points", "column_dictionary"]:
        assert key in m, key
    described = m["column_dictionary"]
    for name in ("results", "decay_rates", "summary", "impl_agreement"):
        assert all(described.get(c) for c in pd.read_parquet(out / f"{name}.parquet").columns), name  # every column has a meaning
    assert m["row_count"] == len(res) and m["argv"] == ["gradlab", "run", "tiny"]
    assert {"gradlab", "torch", "cuda", "cudnn", "device", "git"} <= set(m["environment"])
    assert set(m["backends"]) >= {"python-loop"}


def test_rerun_recomputes_nothing(tiny, tmp_path):
    out = tmp_path / "run"
    first = run_study(tiny, out=out, device="cpu", progress=False)
    again = run_study(tiny, out=out, device="cpu", progress=False)
    assert (again.cached, again.computed) == (N_POINTS, 0)
    assert first.rows == again.rows


class DiesAfter(cf.Executor):
    """Runs points inline and is 'killed' (KeyboardInterrupt) when asked for point n+1."""

    def __init__(self, n: int):
        self.n, self.inner = n, InlineExecutor()

    def submit(self, fn, /, *args, **kwargs):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.inner.submit(fn, *args, **kwargs)


def test_interrupted_run_resumes_without_losing_or_recomputing(tiny, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny, out=tmp_path / "a", device="cpu", progress=False, executor=DiesAfter(7))
    assert len(list((tmp_path / "a" / "points").glob("*.json"))) == 7
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())  # the folder shows what it holds, and says it is unfinished
    assert (m["complete"], m["points_saved"], m["points_total"]) == (False, 7, N_POINTS)
    assert pd.read_parquet(tmp_path / "a" / "results.parquet")["point"].nunique() == 7
    resumed = run_study(tiny, out=tmp_path / "a", device="cpu", progress=False)
    assert (resumed.cached, resumed.computed) == (7, N_POINTS - 7)
    run_study(tiny, out=tmp_path / "b", device="cpu", progress=False)
    a, b = _stable(pd.read_parquet(tmp_path / "a" / "results.parquet")), _stable(pd.read_parquet(tmp_path / "b" / "results.parquet"))
    pd.testing.assert_frame_equal(a, b)  # same numbers: each point seeded from its config


def test_a_failing_point_is_recorded_and_the_study_goes_on(tmp_path, failing_study):
    s = run_study(failing_study, out=tmp_path / "run", progress=False)
    assert s.computed == 3 and len(s.failed) == 1 and "x=2 blows up" in s.failed[0]["error"]
    assert pd.read_parquet(tmp_path / "run" / "results.parquet")["value"].tolist() == [10, 30]
    failures = pd.read_parquet(tmp_path / "run" / "failures.parquet")
    assert failures["x"].tolist() == [2] and "RuntimeError" in failures["error"][0]
    page = render(tmp_path / "run").read_text()
    assert "1 failed" in page and "x=2 blows up" in page
    again = run_study(failing_study, out=tmp_path / "run", progress=False)  # failed points are retried, finished ones not
    assert (again.cached, again.computed) == (2, 1)


def test_workers_give_the_same_numbers(tiny, tmp_path):
    run_study(tiny, out=tmp_path / "serial", device="cpu", progress=False)
    run_study(tiny, out=tmp_path / "pool", device="cpu", workers=2, progress=False)
    a = _stable(pd.read_parquet(tmp_path / "serial" / "results.parquet"))
    b = _stable(pd.read_parquet(tmp_path / "pool" / "results.parquet"))
    pd.testing.assert_frame_equal(a, b)


def test_report_reads_tables_only_and_is_self_contained(tiny, tmp_path):
    out = tmp_path / "run"
    run_study(tiny, out=out, device="cpu", progress=False)
    page = render(out)
    text = page.read_text()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs and text.count("data:image/png;base64,") == len(pngs)
    assert "src=\"http" not in text and "<script" not in text.lower()
    assert "a tiny &lt;b&gt;study&lt;/b&gt;" in text  # every string escaped
    assert text.index("<h2>Summary") < text.index("<h2>Figures") < text.index("<h2>Tables") < text.index("<summary>Manifest")  # pictures first
    assert "<details><summary>Column dictionary" in text and "<details><summary>Manifest" in text  # folded
    for p in (out / "figures").glob("*.png"):
        p.unlink()
    (out / "points").rename(tmp_path / "moved")  # no recomputation possible: the tables alone
    render(out)
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == pngs


def test_report_never_imports_torch():
    code = "import sys, gradlab.report, gradlab.report.compare, gradlab.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_half_written_points_count_as_unfinished(tmp_path):
    from gradlab.runner import PointOutcome
    from gradlab.store import PointStore

    store = PointStore(tmp_path)
    store.write(PointOutcome("k1", {"x": 1}, {"results": [{"v": 1}], "extra": [{"w": 2}]}, None, 0.1))
    assert store.done("k1")
    (store.dir / "k1.extra.parquet").unlink()  # killed between a table and the marker of a rewrite
    assert not store.done("k1")
    (store.dir / "k2.results.parquet").write_bytes(b"partial")  # tables without a marker
    assert not store.done("k2")
    (store.dir / "k3.json").write_text("{not json")  # a torn marker
    assert not store.done("k3")
    store.write(PointOutcome("k4", {"x": 4}, None, "boom", 0.1))
    assert not store.done("k4") and store.read_meta("k4")["error"] == "boom"


class BreaksOnSecond(cf.Executor):
    """Inline, except that the second point's process 'dies' (as a broken process pool reports it)."""

    def __init__(self):
        self.inner, self.count = InlineExecutor(), 0

    def submit(self, fn, /, *args, **kwargs):
        self.count += 1
        if self.count == 2:
            future: cf.Future = cf.Future()
            future.set_exception(cf.process.BrokenProcessPool("a child process terminated abruptly"))
            return future
        return self.inner.submit(fn, *args, **kwargs)


def test_a_dead_worker_is_a_failed_point_not_a_dead_study(tiny, tmp_path):
    s = run_study(tiny, out=tmp_path / "run", device="cpu", progress=False, executor=BreaksOnSecond())
    assert s.computed == N_POINTS and len(s.failed) == 1
    assert "BrokenProcessPool" in s.failed[0]["error"] and "died" in s.failed[0]["error"]
    again = run_study(tiny, out=tmp_path / "run", device="cpu", progress=False)
    assert (again.cached, again.computed, again.failed) == (N_POINTS - 1, 1, [])


def test_a_rerun_after_a_code_change_recomputes_what_it_must(tiny, tmp_path, monkeypatch):
    from gradlab import env

    out = tmp_path / "run"
    first = run_study(tiny, out=out, device="cpu", progress=False)
    made_by = json.loads((out / "manifest.json").read_text())["points"][0]["computed_by"]
    assert made_by["source"] == env.source_digest() and made_by["torch"] == __import__("torch").__version__
    assert first.stale == 0
    monkeypatch.setattr(env, "source_digest", lambda root=None: "0" * 16)  # gradlab's code changed
    again = run_study(tiny, out=out, device="cpu", progress=False)
    assert (again.cached, again.computed, again.stale) == (0, N_POINTS, N_POINTS)
    assert {p["computed_by"]["source"] for p in json.loads((out / "manifest.json").read_text())["points"]} == {"0" * 16}
    assert run_study(tiny, out=out, device="cpu", progress=False).cached == N_POINTS  # then reused
    from gradlab import runner

    monkeypatch.setattr(runner, "code_identity", lambda real=env.code_identity: real() | {"torch": "9.9"})  # another torch
    assert run_study(tiny, out=out, device="cpu", progress=False).stale == N_POINTS


@pytest.fixture
def package_copy(tmp_path):
    import shutil

    from gradlab import env

    copy = tmp_path / "gradlab"
    shutil.copytree(env.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "_build.json"))
    return copy


def _digest(root) -> str:
    from gradlab import env

    env.source_digest.cache_clear()
    return env.source_digest(root)


def _edit(path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# edits that move a point's rows: each must change the digest
MOVES = [
    ("training/loop.py", "DIVERGE_WINDOW = 50", "DIVERGE_WINDOW = 49"),
    ("measures/train.py", "tables = {\"results\": result.history", "tables = {\"results\": result.history[:1]"),
    ("measures/gradient_decay.py", "gen = torch.Generator().manual_seed(cfg.seed + 7)", "gen = torch.Generator().manual_seed(cfg.seed + 8)"),
    ("cells/scratch.py", "torch.tanh", "torch.sigmoid"),
    ("probes.py", "def ", "def _extra(): return 1\n\n\ndef "),
    ("tasks/adding.py", "return 1.0 / 6.0", "return 1.0 / 7.0"),
    ("timing.py", "return 2 * n**3 / seconds", "return n**3 / seconds"),
    ("theory.py", "def ", "def _extra(): return 1\n\n\ndef "),
]


@pytest.mark.parametrize("rel, old, new", MOVES)
def test_an_edit_that_can_move_a_number_changes_the_source_digest(package_copy, rel, old, new):
    base = _digest(package_copy)
    _edit(package_copy / rel, old, new)
    assert _digest(package_copy) != base


def test_prose_report_and_derived_edits_leave_the_source_digest(package_copy):
    from gradlab import env

    base = _digest(package_copy)
    assert base == _digest(env.PACKAGE)  # a copy of the same code
    loop = package_copy / "training" / "loop.py"
    _edit(loop, "DIVERGE_WINDOW = 50", "DIVERGE_WINDOW = 50  # a comment added\n# and a line of comment")
    _edit(loop, '"""The one training loop', '"""A docstring rewritten. The one training loop')
    _edit(package_copy / "cells" / "scratch.py", "    def step(", "\n    def step(")  # layout
    (package_copy / "report" / "figures.py").write_text("# drawing only\n", encoding="utf-8")
    (package_copy / "cli.py").write_text("# parsing only\n", encoding="utf-8")
    _edit(package_copy / "derived" / "train.py", "SPIKE = 3.0", "SPIKE = 4.0")  # a constant only a derived table reads
    assert _digest(package_copy) == base
    (package_copy / "tasks" / "new_task.py").write_text("X = 1\n", encoding="utf-8")  # a new file counts, committed or not
    assert _digest(package_copy) != base


def test_the_code_behind_every_row_is_in_the_digest_and_measures_never_run_derived_code():
    """Each folder or module that computes a point's rows is digested; a measure imports only derive() from derived/."""
    import ast

    from gradlab import env

    for part in ("training/", "measures/", "cells/", "tasks/", "probes.py", "timing.py", "theory.py", "runner.py"):
        assert not part.startswith(env.NOT_NUMBERS), part
    for path in (env.PACKAGE / "measures").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and "derived" in (node.module or ""):
                assert [a.name for a in node.names] == ["derive"], path
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "derive":
                raise AssertionError(f"{path} calls derive(): its rows would depend on code outside the digest")


def test_a_point_run_in_this_process_leaves_its_thread_count_as_it_found_it():
    """A point run inline on fewer threads (a study with --workers on the inline executor, a notebook) sets torch's
    thread count for itself only: the benchmarks timed after it in one test session ran on 1 thread otherwise."""
    import torch

    from gradlab.runner import execute_group, execute_point

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = {"cell": "rnn", "impl": "scratch", "seq_len": 4, "hidden_size": 3, "input_size": 2, "batch_size": 2}
        outcome = execute_point("gradient_decay", config, threads=1)
        assert outcome.error is None and outcome.env["torch_threads"] == 1  # it ran on the threads it was given
        assert torch.get_num_threads() == 2
        [outcome] = execute_group("gradient_decay", [config], threads=1)
        assert outcome.error is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
