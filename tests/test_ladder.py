"""The ladder rule: longer lags of a setting are not run once every seed failed at two shorter ones in a row."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
import types
from dataclasses import dataclass

import pandas as pd
import pytest

from gradlab.ladder import RUN, SKIP, WAIT, Ladder, decide
from gradlab.runner import InlineExecutor, run_study
from gradlab.study import StudyError, load_study, parse_study, resolve

LADDER = Ladder("seq_len", 2)


def _grid(settings=("a",), lags=(10, 20, 40, 80), seeds=(0, 1, 2)) -> list[dict]:
    return [{"cell": c, "seq_len": t, "seed": s} for c in settings for t in lags for s in seeds]


def _verdicts(coords, solved: dict) -> dict:
    """solved: (cell, seq_len) -> per-seed outcome (True, False, or None: not finished)."""
    out = decide(coords, lambda i: solved.get((coords[i]["cell"], coords[i]["seq_len"]), [None] * 3)[coords[i]["seed"]], LADDER)
    return {(c["cell"], c["seq_len"]): v for c, v in zip(coords, out)}


def test_two_lags_failed_by_every_seed_stop_the_longer_ones_with_the_reason():
    v = _verdicts(_grid(lags=(10, 20, 40, 80, 160)), {("a", 10): [True] * 3, ("a", 20): [False] * 3, ("a", 40): [False] * 3})
    assert [v[("a", t)][0] for t in (10, 20, 40)] == [RUN, RUN, RUN]
    assert v[("a", 80)] == v[("a", 160)] == (SKIP, "every seed failed at seq_len = 20, 40")


def test_one_seed_that_solves_breaks_the_streak():
    v = _verdicts(_grid(), {("a", 10): [False] * 3, ("a", 20): [False, False, True], ("a", 40): [False] * 3})
    assert v[("a", 80)] == (RUN, "")  # 10 and 40 failed, but not in a row: 20 was solved by one seed


def test_a_lag_waits_while_shorter_unfinished_ones_could_make_a_streak():
    v = _verdicts(_grid(), {("a", 10): [False] * 3, ("a", 20): [False, None, False]})
    assert v[("a", 40)] == v[("a", 80)] == (WAIT, "")
    v = _verdicts(_grid(), {("a", 10): [False] * 3, ("a", 20): [True, None, None]})  # one solved: no streak can form
    assert v[("a", 40)] == (RUN, "")


def test_settings_are_laddered_apart_and_stop_after_zero_is_off():
    coords = _grid(settings=("a", "b"))
    v = _verdicts(coords, {("a", 10): [False] * 3, ("a", 20): [False] * 3, ("b", 10): [True] * 3, ("b", 20): [True] * 3})
    assert v[("a", 40)][0] == SKIP and v[("b", 40)] == (RUN, "")
    assert {d for d in decide(coords, lambda i: False, Ladder("seq_len", 0))} == {(RUN, "")}
    assert {d for d in decide(coords, lambda i: False, None)} == {(RUN, "")}


def test_the_grid_order_does_not_change_the_verdicts():
    coords = _grid(lags=(80, 10, 40, 20))  # lags walked by value, not by position
    v = _verdicts(coords, {("a", 10): [False] * 3, ("a", 20): [False] * 3})
    assert v[("a", 40)][0] == v[("a", 80)][0] == SKIP


STUDY = """
name = "lad"
measure = "laddered"
[ladder]
axis = "seq_len"
stop_after = 2
[grid]
task = ["a", "b"]
seq_len = [1, 2, 4, 8, 16]
seed = [0, 1, 2]
"""


@dataclass
class _LagConfig:
    task: str = "a"
    seq_len: int = 1
    seed: int = 0

    def validate(self) -> None:
        pass


def _solves(cfg: _LagConfig) -> bool:
    """a: solved up to 2; b: up to 1, then only seed 0 at 8 (above two failures: never reached)."""
    return cfg.seq_len <= (2 if cfg.task == "a" else 1) or (cfg.task == "b" and cfg.seq_len == 8 and cfg.seed == 0)


@pytest.fixture
def laddered(tmp_path, monkeypatch):
    from gradlab import measures

    ran = []

    def run(cfg, progress=False):
        ran.append((cfg.task, cfg.seq_len, cfg.seed))
        time.sleep(0.02 * cfg.seed)  # in a pool, seeds of one lag finish one by one: a longer lag could be started early
        return {"results": [{"value": 1.0}], "runs": [{"solved": _solves(cfg)}]}

    fake = types.SimpleNamespace(Config=_LagConfig, run=run, derive=lambda tables, axes: {},
                                 succeeded=lambda tables: bool(tables["runs"]["solved"].iloc[0]))
    real_load = measures.load
    monkeypatch.setattr(measures, "load", lambda name: fake if name == "laddered" else real_load(name))
    path = tmp_path / "lad.toml"
    path.write_text(STUDY)
    return path, ran


def test_a_run_computes_only_what_the_ladder_lets_through_and_says_what_it_left_out(laddered, tmp_path):
    path, ran = laddered
    out = tmp_path / "run"
    s = run_study(path, out=out, progress=False, executor=InlineExecutor())
    assert sorted({(t, lag) for t, lag, _ in ran}) == [("a", 1), ("a", 2), ("a", 4), ("a", 8), ("b", 1), ("b", 2), ("b", 4)]
    assert (s.points, s.computed, s.skipped) == (30, 21, 9)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["points_skipped"] == 9 and manifest["ladder"]["stop_after"] == 2
    left = pd.read_parquet(out / "skipped.parquet")
    assert sorted(set(zip(left["task"], left["seq_len"]))) == [("a", 16), ("b", 8), ("b", 16)]
    assert set(left.loc[left["task"] == "b", "because"]) == {"every seed failed at seq_len = 2, 4"}
    ran.clear()
    again = run_study(path, out=out, progress=False, executor=InlineExecutor())  # resume: nothing to compute, the same skips
    assert ran == [] and (again.cached, again.computed, again.skipped) == (21, 0, 9)


def test_in_a_pool_a_longer_lag_waits_for_the_shorter_ones(laddered, tmp_path):
    path, ran = laddered
    with cf.ThreadPoolExecutor(2) as pool:
        s = run_study(path, out=tmp_path / "run", progress=False, executor=pool)
    assert sorted({(t, lag) for t, lag, _ in ran}) == [("a", 1), ("a", 2), ("a", 4), ("a", 8), ("b", 1), ("b", 2), ("b", 4)]
    assert (s.computed, s.skipped) == (21, 9)


def test_an_interrupted_laddered_run_is_not_complete_until_the_rest_is_known(laddered, tmp_path):
    path, ran = laddered

    class StopsAfter(InlineExecutor):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def submit(self, *a, **k):
            self.n -= 1
            if self.n < 0:
                raise KeyboardInterrupt
            return super().submit(*a, **k)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_study(path, out=out, progress=False, executor=StopsAfter(10))
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["points_saved"] == 10
    s = run_study(path, out=out, progress=False, executor=InlineExecutor())
    assert (s.cached, s.computed, s.skipped) == (10, 11, 9)


def test_ladder_errors_say_what_is_wrong(tmp_path):
    base = "name = 'x'\nmeasure = 'train'\n"
    for text, message in [
        ("[ladder]\naxis = 'seq_len'\nstop_after = -1", "stop_after must be a whole number >= 0"),
        ("[ladder]\naxis = 'seq_len'\nstop_after = 2\nstop = 1", "unknown key 'stop'"),
        ("[ladder]\nstop_after = 2", "axis .* are setting names"),
    ]:
        with pytest.raises(StudyError, match=message):
            parse_study(__import__("tomllib").loads(base + text), "x.toml")
    from gradlab import measures

    study = parse_study(__import__("tomllib").loads(base + "[ladder]\naxis = 'seq_lne'\nstop_after = 2"), "x.toml")
    with pytest.raises(StudyError, match="ladder names unknown key 'seq_lne'.*seq_len"):
        resolve(study, measures.load("train").Config)


def test_a_ladder_needs_a_measure_that_says_what_succeeded(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("name = 'g'\nmeasure = 'gradient_decay'\n[ladder]\naxis = 'seq_len'\nstop_after = 2\n[grid]\nseq_len = [4, 8]\n")
    with pytest.raises(StudyError, match="measure 'gradient_decay' says of no point whether it succeeded"):
        run_study(path, out=tmp_path / "run", progress=False)


def test_a_profile_ladder_replaces_the_studys_and_long_range_walks_its_lags():
    from gradlab import measures

    study = load_study("long-range")
    config = measures.load("train").Config
    assert resolve(study, config, "lags").ladder == Ladder("seq_len", 2, "seed")
    study.profiles["off"] = {"ladder": {"axis": "seq_len", "stop_after": 0}}
    assert resolve(study, config, "off").ladder.stop_after == 0


def test_train_succeeds_when_its_run_solved():
    from gradlab.measures import train

    assert train.succeeded({"runs": pd.DataFrame({"solved_step": [750.0]})})
    assert not train.succeeded({"runs": pd.DataFrame({"solved_step": [float("nan")]})})


def test_the_page_lists_what_the_ladder_left_out_per_setting():
    from gradlab.report.page import Section
    from gradlab.report.train import left_out

    why = "every seed failed at seq_len = 20, 40"
    skipped = pd.DataFrame([{"key": f"k{t}{s}", "task": "adding", "cell": "lstm", "forget_bias": 1.0, "seq_len": t, "seed": s, "because": why}
                            for t in (160, 80) for s in (0, 1, 2)])
    sec = Section()
    left_out(sec, skipped, {"axis": "seq_len", "stop_after": 2, "over": "seed"})
    assert sec.key_points == ["The ladder left 6 points of 1 setting out: once every seed of a setting had failed at 2 seq_len values in a "
                              "row, its longer ones were not run (table 'Not run')."]
    (title, table), = sec.tables
    assert table.to_dict("records") == [{"task": "adding", "model": "lstm, forget bias 1", "because": why, "seq_len_not_run": "80 160", "points": 6}]
    empty = Section()
    left_out(empty, skipped.iloc[:0], {"axis": "seq_len", "stop_after": 2})
    assert empty.key_points == [] and empty.tables == []
