"""Ensembles: each member follows its solo run (every cell and clip strategy, members differing in seed, lr
and clip), a member that diverges or solves leaves the others' numbers alone, the batched BPTT's gradients
are the solo BPTT's, and the runner groups points, records the groups and resumes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from gradlab.cells.bptt import GRUSequence, LSTMSequence, RNNSequence
from gradlab.grouping import Mode, groups, parse_mode
from gradlab.measures import train as train_measure
from gradlab.runner import run_study
from gradlab.training import train
from gradlab.training.ensemble import check_members, solo_reason, train_ensemble

Config = train_measure.Config
SMALL = dict(task="adding", seq_len=8, hidden_size=8, batch_size=4, steps=200, eval_every=100, eval_size=8)
MEMBERS = [(0, 1e-3, "none"), (1, 3e-3, "norm:0.5"), (2, 2e-3, "value:0.05"), (3, 2e-3, "adaptive:50"), (4, 1e-3, "mean:2")]  # seed, lr, clip
STEP_FIELDS = ("loss", "grad_norm_pre", "grad_norm_post", "clip_threshold", "clip_cosine", "update_norm")


def assert_follows(ensemble, solo, rtol: float) -> None:
    """Per-step losses, norms and clipping decisions, and every evaluation, equal to rtol."""
    assert len(ensemble.steps) == len(solo.steps)
    for a, b in zip(ensemble.steps, solo.steps):
        assert a["clipped"] == b["clipped"], a["step"]
        for f in STEP_FIELDS:
            assert a[f] == pytest.approx(b[f], rel=rtol, abs=1e-300, nan_ok=True), (f, a["step"], a[f], b[f])
    for a, b in zip(ensemble.history, solo.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=rtol, nan_ok=True)
    for k in ("diverged_step", "solved_step", "steps_done", "stopped_early_step"):
        assert ensemble.run[k] == solo.run[k], k


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_each_member_follows_its_solo_run_in_float64(cell):
    cfgs = [Config(cell=cell, seed=s, lr=lr, clip=c, dtype="float64", **SMALL) for s, lr, c in MEMBERS]
    members = train_ensemble(cfgs)
    for ens, cfg in zip(members, cfgs):
        assert_follows(ens, train(cfg), rtol=1e-10)
        assert ens.run["ensemble_size"] == len(cfgs)
    clipped = [sum(r["clipped"] for r in m.steps) for m in members]
    assert clipped[0] == 0 and all(clipped[1:4]), clipped  # the decisions compared were not all False


@pytest.mark.parametrize("task", ["recall"])
def test_float32_members_follow_their_solo_runs_on_token_tasks(task):
    """Token ids take the batched row lookup; float32 to 1e-5 relative (on this CPU at one thread it is bitwise)."""
    cfgs = [Config(cell="lstm", seed=s, lr=lr, clip=c, **(SMALL | {"task": task})) for s, lr, c in MEMBERS[:3]]
    for ens, cfg in zip(train_ensemble(cfgs), cfgs):
        assert_follows(ens, train(cfg), rtol=1e-5)


def test_a_member_that_diverges_or_solves_leaves_the_others_alone():
    steady = Config(cell="gru", seed=0, lr=3e-3, **SMALL)
    blows_up = Config(cell="gru", seed=1, lr=50.0, clip="none", **SMALL)  # RMSProp at 50: diverges within steps
    solves = Config(cell="gru", seed=2, lr=3e-2, solve_fraction=1.0, stop_when_solved=True, **(SMALL | {"eval_every": 20}))  # under the baseline: solved
    together = train_ensemble([steady, blows_up, solves])
    alone = train_ensemble([steady])[0]
    assert_follows(together[0], alone, rtol=0)  # bit for bit: the others' exits changed nothing
    assert_follows(together[0], train(steady), rtol=1e-5)
    diverged, solved = together[1], together[2]
    assert diverged.run["diverged"] and diverged.run["steps_done"] < 200
    assert_follows(diverged, train(blows_up), rtol=1e-5)  # its rows end where its solo run's end
    assert solved.run["solved_step"] is not None and solved.run["steps_done"] == solved.run["solved_step"] < 200
    assert_follows(solved, train(solves), rtol=1e-5)


def test_the_same_ensemble_gives_the_same_numbers_on_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfgs = [Config(cell="lstm", seed=s, **(SMALL | {"steps": 60})) for s in (0, 1)]
        first, again = train_ensemble(cfgs), train_ensemble(cfgs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, again):
        assert [r["loss"] for r in a.steps] == [r["loss"] for r in b.steps]


@pytest.mark.parametrize("fn,gates,lstm", [(RNNSequence, 1, False), (GRUSequence, 3, False), (LSTMSequence, 4, True)])
def test_batched_bptt_passes_gradcheck_and_equals_each_models_own_pass(fn, gates, lstm):
    T, E, B, H = 4, 3, 2, 3
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    args = [r(T, E, B, gates * H), r(E, B, H)] + ([r(E, B, H)] if lstm else []) + [r(E, H, gates * H) * 0.5] + ([r(E, 3 * H)] if fn is GRUSequence else [])
    leaves = [a.clone().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(fn.apply, tuple(leaves))
    out = fn.apply(*leaves)
    out = out[0] if lstm else out
    grad_out = r(*out.shape)
    out.backward(grad_out)
    for e in range(E):
        own = [(a[:, e] if a.dim() == 4 else a[e]).clone().requires_grad_() for a in args]
        solo = fn.apply(*own)
        solo = solo[0] if lstm else solo
        solo.backward(grad_out[:, e])
        torch.testing.assert_close(solo, out[:, e], rtol=1e-12, atol=0)
        for mine, batched in zip(own, leaves):
            torch.testing.assert_close(mine.grad, batched.grad[:, e] if batched.dim() == 4 else batched.grad[e], rtol=1e-12, atol=1e-15)


def test_members_that_differ_only_in_lr_train_as_one_batched_pass_each_its_solo_run(monkeypatch):
    """A learning-rate sweep of one setting (the tuned profile's four rates, one seed) is one ensemble: every step one
    forward and backward over all four members (ensemble_outputs called once per step with the four models), each
    member bit for bit its solo run at one thread in float64, each judged on the test set as its solo run is; and the
    runner's grouping puts them in one group."""
    from gradlab.training import ensemble as engine

    rates = (3e-4, 1e-3, 3e-3, 1e-2)
    cfgs = [Config(cell="gru", seed=0, lr=lr, dtype="float64", test_size=300, **SMALL) for lr in rates]
    widths = []
    batched = engine.ensemble_outputs
    monkeypatch.setattr(engine, "ensemble_outputs", lambda models, x, mask: widths.append(len(models)) or batched(models, x, mask))
    members = train_ensemble(cfgs)
    assert widths == [4] * SMALL["steps"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for ens, cfg in zip(members, cfgs):
            solo = train(cfg)
            assert_follows(ens, solo, rtol=0)
            assert ens.run["ensemble_size"] == 4 and ens.run["test_loss"] == solo.run["test_loss"]
    finally:
        torch.set_num_threads(threads)
    assert len({m.steps[-1]["loss"] for m in members}) == 4  # the rates made four different runs
    items = [(f"k{i}", None) for i in range(4)]
    (group, why), = groups(items, cfgs, train_measure, parse_mode("auto"))
    assert [k for k, _ in group] == ["k0", "k1", "k2", "k3"] and why is None


def test_what_cannot_join_an_ensemble_says_why():
    assert "impl 'cudnn'" in solo_reason(Config(impl="cudnn", **SMALL))
    assert "no written-out BPTT" in solo_reason(Config(cell="linear", **SMALL)) and "(reset_before)" in solo_reason(Config(cell="gru", variant="reset_before", **SMALL))
    assert "reset_before" in solo_reason(Config(cell="gru", variant="reset_before", **SMALL))
    assert "dropout" in solo_reason(Config(dropout=0.1, **SMALL))
    assert solo_reason(Config(**SMALL)) is None
    assert "consecutive text batches" in solo_reason(Config(**(SMALL | {"task": "lyrics"})))  # the book's sampling, by default
    assert solo_reason(Config(**(SMALL | {"task": "lyrics", "sampling": "random"}))) is None
    with pytest.raises(ValueError, match="differ in hidden_size"):
        check_members([Config(**SMALL), Config(**(SMALL | {"hidden_size": 16}))])
    with pytest.raises(ValueError, match="differ in a task parameter"):
        check_members([Config(**SMALL), Config(**(SMALL | {"eval_size": 16}))])


def test_the_ensemble_mode_parses_and_refuses_what_it_cannot_mean():
    assert parse_mode("auto").auto and parse_mode("off").off and parse_mode("1").off and parse_mode("12").largest == 12
    for bad in ("0", "-3", "many", "2.5"):
        with pytest.raises(ValueError, match="auto, off or a whole number"):
            parse_mode(bad)


def test_groups_split_by_shape_and_size_and_keep_grid_order():
    cfgs = [Config(seed=s, cell=c, **SMALL) for c in ("gru", "lstm") for s in range(5)] + [Config(impl="cudnn", **SMALL)]
    items = [(f"k{i}", None) for i in range(len(cfgs))]
    got = groups(items, cfgs, train_measure, Mode(4))
    assert [[k for k, _ in g] for g, _ in got] == [["k0", "k1", "k2", "k3"], ["k4"], ["k5", "k6", "k7", "k8"], ["k9"], ["k10"]]
    assert [why for _, why in got] == [None, "no other runnable point of its shape", None, "no other runnable point of its shape",
                                       solo_reason(cfgs[-1])]
    auto = groups(items, cfgs, train_measure, parse_mode("auto"), workers=2)  # each shape shared out over the two workers
    assert [len(g) for g, _ in auto] == [3, 2, 3, 2, 1]
    three = groups(items[:3], cfgs[:3], train_measure, parse_mode("auto"), workers=2)
    assert [(len(g), why) for g, why in three] == [(2, None), (1, "its shape's 3 points shared out over 2 workers")]
    rest = groups(items[3:5], cfgs[3:5], train_measure, parse_mode("auto"), workers=2, counts={train_measure.ensemble_key(cfgs[0]): 5})
    assert [len(g) for g, _ in rest] == [2]  # the last two of five, as the run began: sized by the whole shape, not re-split
    assert [len(g) for g, _ in groups(items, cfgs, train_measure, parse_mode("auto"))] == [5, 5, 1]
    assert all(len(g) == 1 for g, _ in groups(items, cfgs, train_measure, parse_mode("off")))


STUDY = """
name = "tiny-train"
measure = "train"
[grid]
cell = ["gru", "lstm"]
seed = [0, 1, 2]
[settings]
task = "adding"
seq_len = 8
hidden_size = 8
batch_size = 4
steps = 40
eval_every = 20
eval_size = 8
"""


def test_the_runner_groups_points_records_the_groups_and_gives_the_solo_numbers(tmp_path):
    study = tmp_path / "tiny-train.toml"
    study.write_text(STUDY)
    said: list[str] = []
    on = run_study(study, out=tmp_path / "on", device="cpu", progress=False, echo=said.append)
    off = run_study(study, out=tmp_path / "off", device="cpu", progress=False, ensemble="off")
    assert on.computed == off.computed == 6 and not on.failed
    assert any("ensembles auto: 6 of 6 points can train batched, in 2 shapes" in line for line in said)
    m = json.loads((tmp_path / "on" / "manifest.json").read_text())
    sizes = {(p["cell"], p["seed"]): p["ensemble"]["size"] for p in m["points"]}
    assert set(sizes.values()) == {3} and m["ensemble"] == "auto"
    assert len({p["ensemble"]["group"] for p in m["points"]}) == 2
    solo = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert {p["ensemble"]["solo"] for p in solo["points"]} == {"--ensemble off"}
    key = ["cell", "seed", "step"]
    a = pd.read_parquet(tmp_path / "on" / "steps.parquet").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "off" / "steps.parquet").sort_values(key).reset_index(drop=True)
    for col in ("loss", "grad_norm_pre", "update_norm"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-5)
    runs = pd.read_parquet(tmp_path / "on" / "runs.parquet")
    assert set(runs["ensemble_size"]) == {3} and not any(math.isnan(s) for s in runs["train_seconds"])


def test_the_cli_refuses_a_bad_ensemble_and_a_dry_run_says_how_points_group(tmp_path):
    from click.testing import CliRunner

    from gradlab.cli import main

    study = tmp_path / "tiny-train.toml"
    study.write_text(STUDY)
    bad = CliRunner().invoke(main, ["run", str(study), "--ensemble", "many", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--ensemble takes auto, off or a whole number N >= 1" in bad.output
    dry = CliRunner().invoke(main, ["run", str(study), "--set", "impl=scratch,cudnn", "--dry-run", "--device", "cpu", "--out", str(tmp_path / "y")])
    assert dry.exit_code == 0, dry.output
    assert "ensembles auto: 6 of 12 points can train batched, in 2 shapes; solo: 6 because impl 'cudnn'" in dry.output


def test_the_page_says_how_the_points_trained():
    from gradlab.report import ensemble_note

    points = [{"ensemble": {"size": 3, "group": "a", "index": i}} for i in range(3)] + [{"ensemble": {"size": 1, "solo": "impl 'cudnn': ..."}}]
    assert ensemble_note({"points": points}) == "3 points trained in 1 ensemble (models per batched step: 3); solo: 1 (impl 'cudnn': ...)."
    assert ensemble_note({"points": [{"ensemble": {"size": 1, "solo": "--ensemble off"}}]}) is None
