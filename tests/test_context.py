"""The context measure (Khandelwal et al. 2018): two-sided effective context, the shuffle and replace probes,
and trained models whose context is known: a copy model needs its whole lag, a tanh RNN that fails adding does not."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.context import Items, _replaced, _shuffled, effective_context, profile
from gradlab.tasks import build
from gradlab.training import TrainConfig, build_model, train, with_task_params

F64 = torch.float64


def test_a_loss_that_rises_with_k_is_not_within_at_k_1():
    """A memorising model: more context only misleads it. One-sided (loss <= full + tol) would say k = 1."""
    ks, losses = [1, 2, 4, 8, 16], [3.00, 3.20, 3.50, 3.59, 3.60]
    assert effective_context(ks, losses, full=3.60) == 8  # 3.59 is within 1% of 3.60; 3.50 is not


def test_a_curve_that_dips_below_the_full_loss_reports_where_it_settles_not_the_dip():
    ks, losses = [1, 2, 4, 8, 16], [5.0, 3.0, 3.28, 3.31, 3.30]
    assert effective_context(ks, losses, full=3.30) == 4  # k = 2 is 9% below the full loss: outside, on the other side


def test_never_within_is_nan_and_near_zero_losses_use_the_floor():
    assert math.isnan(effective_context([1, 2], [2.0, 1.5], full=1.0))
    assert effective_context([1, 2, 4], [2.0, 0.0008, 0.0001], full=0.0) == 2  # a solved copy: within 0.001 of nothing


def test_shuffle_keeps_the_last_k_and_permutes_each_items_earlier_inputs():
    windows = torch.arange(40).view(8, 5)  # (L, N): every input distinct
    out = _shuffled(windows, 3, torch.Generator().manual_seed(0))
    assert torch.equal(out[-3:], windows[-3:])
    for n in range(5):
        assert sorted(out[:5, n].tolist()) == sorted(windows[:5, n].tolist())
    assert not torch.equal(out[:5], windows[:5])
    replaced = _replaced(windows, 3)
    assert torch.equal(replaced[-3:], windows[-3:]) and torch.equal(replaced[:5, 0], windows[:5, 1]) and torch.equal(replaced[:5, 4], windows[:5, 0])


def test_an_order_blind_model_loses_nothing_to_the_shuffle_and_all_to_the_cut():
    """A linear cell with W_h = I sums its input projections: shuffling what comes before the last k
    changes nothing (up to rounding), cutting it changes the sum."""
    task = build("adding", {})
    model = build_model(task.spec, "linear", "scratch", 4, seed=0, dtype=F64, init="xavier")
    with torch.no_grad():
        model.cell.W_hh.copy_(torch.eye(4, dtype=F64))
    batch = task.sample(torch.Generator().manual_seed(3), 64, 12)
    rows = {(r["probe"], r["k"]): r for r in profile(model, task.spec, [Items(batch.x.to(F64), batch.y[-1].to(F64))], [2, 6, 12])}
    for k in (2, 6):
        assert rows[("shuffle", k)]["loss"] == pytest.approx(rows[("shuffle", k)]["loss_full"], rel=1e-9)
        assert abs(rows[("truncate", k)]["loss"] - rows[("truncate", k)]["loss_full"]) > 1e-3
    assert rows[("truncate", 12)]["loss"] == rows[("truncate", 12)]["loss_full"]  # the whole sequence is the full context


Config = with_task_params(TrainConfig)
KS = tuple(range(1, 13))


def _trained(**kw) -> tuple:
    torch.manual_seed(0)
    r = train(Config(impl="cudnn", eval_every=100, eval_size=500, stop_when_solved=True, context_lengths=KS, context_positions=500, **kw))
    cut = sorted((x["k"], x["loss"]) for x in r.tables["context"] if x["probe"] == "truncate")
    return r, effective_context([k for k, _ in cut], [v for _, v in cut], r.tables["context"][0]["loss_full"])


def test_a_copy_model_looks_back_exactly_as_far_as_its_task_needs():
    """Copy with T 5 and 3 symbols (11 steps): the answer at step T + 3 + j is the input at step j, T + 3 + 1 = 9
    inputs back, inclusive, so a model that solved it cannot have an effective context under 9; it may need
    all 11 (it files the symbols by their order: without the first, the others shift)."""
    r, eff = _trained(task="copy", cell="gru", seq_len=5, copy_len=3, n_symbols=4, lr=1e-2, hidden_size=32, steps=1500)
    assert r.run["solved_step"] is not None
    assert 5 + 3 + 1 <= eff <= 11


def test_a_tanh_rnn_that_fails_adding_at_t_100_looks_back_only_a_little():
    r, eff = _trained(task="adding", cell="rnn", seq_len=100, lr=3e-3, hidden_size=64, steps=300)
    assert r.run["solved_step"] is None
    assert eff < 20  # the marked numbers lie anywhere in the first half: a model that used them would need > 50


def test_derived_context_over_seeds_counts_a_run_beyond_the_longest_k_as_beyond_not_as_missing():
    import pandas as pd

    from gradlab.derived.train import context_over_seeds, effective_context as derive_effective

    rows = []
    for seed, tail in ((0, 5.0), (1, 5.2), (2, 5.0)):  # seed 1: even k = 16 is 4% off its full loss 5.0
        for k, loss in ((1, 7.0), (8, 5.01), (16, tail)):
            rows.append({"cell": "gru", "seed": seed, "split": "held out", "probe": "truncate", "k": k, "loss": loss, "loss_full": 5.0})
            rows.append({"cell": "gru", "seed": seed, "split": "held out", "probe": "shuffle", "k": k, "loss": 5.0, "loss_full": 5.0})
            rows.append({"cell": "gru", "seed": seed, "split": "training", "probe": "truncate", "k": k, "loss": loss - 1, "loss_full": 4.0})
    eff = derive_effective(pd.DataFrame(rows), ["cell", "seed"])
    held = eff[eff["split"] == "held out"].set_index("seed")
    assert list(held["effective_context"]) == [8, math.inf, 8] and list(held["shuffle_context"]) == [1, 1, 1]
    assert eff[eff["split"] == "training"]["shuffle_context"].isna().all()  # not run on training text
    over = context_over_seeds(eff, ["cell", "seed"]).set_index("split")
    assert (over.loc["held out", "effective_context_median"], over.loc["held out", "effective_context_max"]) == (8, math.inf)
    assert over.loc["held out", "seeds"] == 3
