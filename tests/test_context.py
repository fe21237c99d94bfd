"""The context measure (Khandelwal et al. 2018, with intervals and its warm-up apart): models built so that the
answer is known (a constant warm-up offset is no context; pure noise is no context; a model that reads exactly
12 inputs back reads 12, not 16), the interval arithmetic, the probes, and trained models whose context is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradlab.context import _replaced, _shuffled, effective_context, gap_interval, profile, used_context
from gradlab.derived.train import effective_context as derive_effective
from gradlab.tasks import build
from gradlab.tasks.base import Items, Spec
from gradlab.training import TrainConfig, build_model, train, with_task_params

F64 = torch.float64
V = 8
SPEC = Spec(input="tokens", input_size=V, output_size=V, loss="cross_entropy", metric="accuracy")
DENSE = list(range(1, 17)) + [32]  # every k up to 16, then doubling: gradlab's grid


class Built(nn.Module):
    """A model as the context measure calls it: model(windows (L, N), None, last_step) -> (logits (1, N, V), None)."""

    def __init__(self, logits_of):
        super().__init__()
        self.logits_of = logits_of

    def forward(self, windows, state, steps):
        return self.logits_of(windows)[None], None


def _items(n: int = 600, length: int = 32, seed: int = 0, targets=None) -> Items:
    gen = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, V, (length, n), generator=gen)
    return Items(windows, targets(windows, gen) if targets else torch.randint(0, V, (n,), generator=gen))


def _measure(model, items: Items, ks=DENSE) -> pd.DataFrame:
    rows = pd.DataFrame(profile(model, SPEC, [items], ks)).assign(split="held out")
    return rows, derive_effective(rows, []).iloc[0]


def test_a_constant_warm_up_offset_is_not_context():
    """Logits that grow with the number of inputs read, whatever they are (a state warming up): the cut reads a
    long 'effective context', the replaced context (as many inputs read, the earlier ones unrelated) reads none,
    and the difference is reported as warm-up."""
    def logits(w):  # content-independent: only the window's length counts
        out = torch.zeros(w.shape[1], V, dtype=F64)
        out[:, 0] = 3 * (1 - 0.7 ** w.shape[0])
        return out

    rows, eff = _measure(Built(logits), _items(targets=lambda w, g: torch.zeros(w.shape[1], dtype=torch.long)))
    assert eff["replace_context"] == 1 and eff["replace_upper"] == 1  # no content used: exactly, at every k
    assert eff["effective_context"] >= 12  # Khandelwal's cut reads the warm-up as context
    assert eff["warmup"] > 0
    replaced = rows[rows.probe == "replace"]
    assert (replaced["gap"] == 0).all()


def test_pure_noise_is_not_context():
    """Logits that are a random function of every input, for targets that no input predicts: the context changes
    each prediction but helps none on average. No k shows evidence of a cost, so the context used is the
    shortest; the point rule reads the noise as context."""
    table = torch.randn(32, V, V, generator=torch.Generator().manual_seed(5), dtype=F64) * 1.5

    def logits(w):
        L = w.shape[0]
        return table[torch.arange(32 - L, 32)[:, None], w].sum(0)  # (N, V): every position's own random row

    rows, eff = _measure(Built(logits), _items(n=300, seed=1))
    assert eff["replace_context"] == 1 and eff["replace_upper"] >= eff["replace_context"]
    replaced = rows[rows.probe == "replace"].sort_values("k")
    assert effective_context(replaced["k"].tolist(), replaced["loss"].tolist(), float(replaced["loss_ref"].iloc[0])) > 1


@pytest.mark.parametrize("ks, reads", [(DENSE, 12), ([1, 2, 4, 8, 16, 32], 16)])
def test_a_model_that_reads_exactly_12_inputs_back_reads_12_on_a_dense_grid(ks, reads):
    """The answer is the input 12 steps back (inclusive) for 70% of the targets; the model bets on it. Replacing
    the inputs before k < 12 loses the answer; from k = 12 nothing changes. A doubling grid can only say 16."""
    def targets(w, gen):
        keep = torch.rand(w.shape[1], generator=gen) < 0.7
        return torch.where(keep, w[-12], torch.randint(0, V, (w.shape[1],), generator=gen))

    def logits(w):
        out = torch.zeros(w.shape[1], V, dtype=F64)
        if w.shape[0] >= 12:
            out[torch.arange(w.shape[1]), w[-12]] = 2.0
        return out

    rows, eff = _measure(Built(logits), _items(targets=targets), ks)
    assert eff["replace_context"] == reads and eff["replace_upper"] == reads
    assert eff["effective_context"] == reads  # no warm-up in this model: the cut says the same


def test_the_gap_and_its_interval():
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 3, 1000)
    gap, lo, hi = gap_interval(ref * 1.05, ref)
    assert gap == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)  # no noise: no width
    noisy = ref + rng.normal(0, 0.3, 1000)
    gap, lo, hi = gap_interval(noisy, ref)
    assert gap == pytest.approx((noisy - ref).sum() / ref.sum()) and lo < gap < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 0.3 / np.sqrt(1000) / ref.mean(), rel=0.25)  # the standard error's width
    gap4, lo4, hi4 = gap_interval(np.tile(noisy, 4), np.tile(ref, 4))
    assert (hi4 - lo4) < (hi - lo) * 0.6


def test_used_context_decides_on_the_intervals():
    ks = [1, 2, 4, 8]
    # k 1: surely costs; k 2: maybe (interval across the line); k 4, 8: surely within
    assert used_context(ks, [0.05, -0.01, -0.002, -0.001], [0.09, 0.03, 0.004, 0.002], reference=3.0) == (2, 4)
    assert used_context(ks, [0.05, 0.02, 0.015, 0.02], [0.09, 0.03, 0.02, 0.03], reference=3.0) == (math.inf, math.inf)
    assert used_context(ks, [-0.2, -0.1, 0, 0], [-0.1, -0.05, 0, 0], reference=3.0) == (1, 1)  # doing better than the reference costs nothing
    assert used_context(ks, [0.5, 0.0, 0, 0], [0.9, 0.0002, 0, 0], reference=0.01) == (2, 2)  # near 0: the absolute floor


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
        assert rows[("shuffle", k)]["loss"] == pytest.approx(rows[("shuffle", k)]["loss_ref"], rel=1e-9)
        assert abs(rows[("truncate", k)]["loss"] - rows[("truncate", k)]["loss_full"]) > 1e-3
    assert rows[("truncate", 12)]["loss"] == rows[("truncate", 12)]["loss_full"]  # the whole sequence is the full context


def test_the_point_rule_of_tables_without_intervals():
    ks, losses = [1, 2, 4, 8, 16], [3.00, 3.20, 3.50, 3.59, 3.60]
    assert effective_context(ks, losses, full=3.60) == 8  # two-sided: 3.59 is within 1% of 3.60; 3.50 is not
    assert math.isnan(effective_context([1, 2], [2.0, 1.5], full=1.0))
    assert effective_context([1, 2, 4], [2.0, 0.0008, 0.0001], full=0.0) == 2  # a solved copy: within 0.001 of nothing


Config = with_task_params(TrainConfig)
KS = tuple(range(1, 13))


def _trained(**kw) -> tuple:
    torch.manual_seed(0)
    r = train(Config(impl="cudnn", eval_every=100, eval_size=500, stop_when_solved=True, context_lengths=KS, context_positions=500, **kw))
    eff = derive_effective(pd.DataFrame(r.tables["context"]).assign(split="held out"), []).iloc[0]
    return r, eff


def test_a_copy_model_looks_back_exactly_as_far_as_its_task_needs():
    """Copy with T 5 and 3 symbols (11 steps): the answer at step T + 3 + j is the input at step j, T + 3 + 1 = 9
    inputs back, inclusive, so a model that solved it cannot use a context under 9; it may need all 11 (it files
    the symbols by their order: without the first, the others shift)."""
    r, eff = _trained(task="copy", cell="gru", seq_len=5, copy_len=3, n_symbols=4, lr=1e-2, hidden_size=32, steps=1500)
    assert r.run["solved_step"] is not None
    assert 5 + 3 + 1 <= eff["replace_context"] <= 11 and 5 + 3 + 1 <= eff["effective_context"] <= 11


def test_a_tanh_rnn_that_fails_adding_at_t_100_looks_back_only_a_little():
    r, eff = _trained(task="adding", cell="rnn", seq_len=100, lr=3e-3, hidden_size=64, steps=300)
    assert r.run["solved_step"] is None
    assert eff["replace_context"] < 20  # the marked numbers lie anywhere in the first half: a model that used them would need > 50


def test_derived_context_over_seeds_counts_a_run_beyond_the_longest_k_as_beyond_not_as_missing():
    from gradlab.derived.train import context_over_seeds

    rows = []
    for seed, tail in ((0, 5.0), (1, 5.2), (2, 5.0)):  # seed 1: even k = 16 is 4% off its full loss 5.0
        for k, loss in ((1, 7.0), (8, 5.01), (16, tail)):
            rows.append({"cell": "gru", "seed": seed, "split": "held out", "probe": "truncate", "k": k, "loss": loss, "loss_full": 5.0})
            rows.append({"cell": "gru", "seed": seed, "split": "held out", "probe": "shuffle", "k": k, "loss": 5.0, "loss_full": 5.0})
            rows.append({"cell": "gru", "seed": seed, "split": "training", "probe": "truncate", "k": k, "loss": loss - 1, "loss_full": 4.0})
    eff = derive_effective(pd.DataFrame(rows), ["cell", "seed"])  # a table from before the intervals: the point rule
    held = eff[eff["split"] == "held out"].set_index("seed")
    assert list(held["effective_context"]) == [8, math.inf, 8] and list(held["shuffle_context"]) == [1, 1, 1]
    assert eff[eff["split"] == "training"]["shuffle_context"].isna().all()  # not run on training text
    over = context_over_seeds(eff, ["cell", "seed"]).set_index("split")
    assert (over.loc["held out", "effective_context_median"], over.loc["held out", "effective_context_max"]) == (8, math.inf)
    assert over.loc["held out", "seeds"] == 3
