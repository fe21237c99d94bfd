"""Summaries against exact answers on fixture frames and independent arithmetic: each test fails when the
quantity it guards is computed another way (the mutations named in each docstring)."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pandas as pd
import pytest

from gradlab.derived.train import by_setting, clipping, longest_lag


def _final(solved_by_lag: dict[int, list[bool]]) -> pd.DataFrame:
    rows = [{"task": "adding", "cell": "lstm", "seq_len": lag, "seed": seed, "point": f"{lag}-{seed}", "solved": s}
            for lag, per_seed in solved_by_lag.items() for seed, s in enumerate(per_seed)]
    return pd.DataFrame(rows)


COLUMNS = ["task", "cell", "seq_len", "seed", "point"]


def test_longest_lag_is_the_largest_lag_most_seeds_solved():
    """Not the smallest solved lag (50), nor the largest any seed solved (200)."""
    final = _final({50: [True, True, True], 100: [True, True, False], 200: [True, False, False], 400: [False, False, False]})
    row = longest_lag(final, COLUMNS).iloc[0]
    assert row["longest_lag_solved"] == 100 and row["solved_above_failure"] == ""
    assert row["lags_tried"] == "50 100 200 400" and row["seeds_solved"] == "3/3 2/3 1/3 0/3"


def test_a_lag_solved_above_a_failed_one_is_shown_not_counted():
    final = _final({50: [True, True, False], 100: [False, False, True], 200: [True, True, True], 400: [False, True, True]})
    row = longest_lag(final, COLUMNS).iloc[0]
    assert row["longest_lag_solved"] == 50 and row["solved_above_failure"] == "200 400"


def test_longest_lag_is_empty_when_the_shortest_lag_fails():
    final = _final({50: [True, False, False], 100: [True, True, True]})
    row = longest_lag(final, COLUMNS).iloc[0]
    assert math.isnan(row["longest_lag_solved"]) and row["solved_above_failure"] == "100"


def test_by_setting_summarises_the_seeds_of_each_setting():
    """Five seeds at T 100: 3 solved at steps 500, 2,000, 800 and two did not (censored: beyond the budget), so the
    median over all five is 2,000 (not 800, the median of the three that solved: survivorship); loss over baseline
    0.05, 0.08, 0.02, 0.9, and one diverged seed (NaN), left out of the quantiles, counted apart."""
    final = _final({100: [True, True, True, False, False]}).assign(
        steps_to_solve=[500.0, 2000.0, 800.0, float("nan"), float("nan")],
        loss_over_baseline=[0.05, 0.08, 0.02, 0.9, float("nan")], diverged_step=[None, None, None, None, 12.0])
    row = by_setting(final, COLUMNS).iloc[0]
    assert (row["seeds"], row["seeds_solved_of"], row["solved_rate"], row["seeds_diverged"]) == (5, "3/5", 0.6, 1)
    assert (row["steps_to_solve_median"], row["steps_to_solve_min"], row["steps_to_solve_max"]) == (2000, 500, 2000)
    assert row["seeds_censored"] == 2
    assert row["loss_over_baseline_median"] == pytest.approx(0.065)  # of 0.02, 0.05, 0.08, 0.9
    assert row["loss_over_baseline_q25"] == pytest.approx(0.0425) and row["loss_over_baseline_q75"] == pytest.approx(0.285)


def test_by_setting_with_no_solved_seed_has_no_steps():
    final = _final({200: [False, False, False]}).assign(steps_to_solve=float("nan"), loss_over_baseline=[1.0, 0.99, 1.01],
                                                        diverged_step=None)
    row = by_setting(final, COLUMNS).iloc[0]
    assert row["solved_rate"] == 0 and math.isinf(row["steps_to_solve_median"]) and row["loss_over_baseline_median"] == 1.0
    assert row["seeds_censored"] == 3 and math.isnan(row["steps_to_solve_min"])


@pytest.mark.parametrize("steps, solved, median", [
    ([100, 300, 200], [True, True, True], 200),
    ([100, 300, None, None], [True, True, False, False], math.inf),  # two of four: the upper middle is censored
    ([100, 300, 200, None], [True, True, True, False], 250),
    ([100, None, None], [True, False, False], math.inf),
])
def test_the_median_steps_to_solve_counts_runs_that_did_not_solve_as_beyond_the_budget(steps, solved, median):
    from gradlab.derived.train import censored_median

    assert censored_median(pd.Series(steps, dtype=float), pd.Series(solved)) == median


def _steps(n: int = 100, clipped_at=(), spikes_at=(), loss: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame([{"clip": "norm:1", "point": "p", "step": s, "loss": 5.0 * loss if s in spikes_at else loss,
                          "clipped": s in clipped_at, "grad_norm_pre": float(s), "clip_threshold": 1.0,
                          "clip_cosine": 0.5 if s in clipped_at else 1.0, "update_norm": 0.1} for s in range(1, n + 1)])


def test_the_clipping_table_counts_clipped_steps_and_spikes():
    """fraction_clipped: 7 of 100 steps; loss_spikes: a loss above 3 x the median of the 50 before it, at steps
    60 and 80 (the one at step 30 has no full window before it)."""
    row = clipping(_steps(clipped_at={3, 9, 27, 41, 55, 70, 99}, spikes_at={30, 60, 80}), ["clip"]).iloc[0]
    assert row["fraction_clipped"] == pytest.approx(0.07)
    assert row["loss_spikes"] == 2
    assert row["steps_run"] == 100 and row["median_grad_norm"] == 50.5 and row["min_cosine"] == 0.5
    calm = clipping(_steps(), ["clip"]).iloc[0]
    assert calm["fraction_clipped"] == 0 and calm["loss_spikes"] == 0 and calm["min_cosine"] == 1.0


def test_the_history_row_takes_the_median_norm_and_the_share_clipped():
    """grad_norm is the median of the window's norms before clipping (not its max or mean); clip_rate the share
    of its steps that clipped (not 1.0), on a run where clipping fires on some steps and not on others."""
    from gradlab.measures.train import Config
    from gradlab.training import train

    r = train(Config(task="adding", cell="rnn", hidden_size=16, seq_len=10, batch_size=16, optimizer="sgd", lr=0.1, clip="norm:0.3",
                     steps=90, eval_every=30, eval_size=50))
    rates = []
    for h in r.history:
        window = [s for s in r.steps if h["step"] - 30 < s["step"] <= h["step"]]
        norms = [s["grad_norm_pre"] for s in window]
        assert h["grad_norm"] == statistics.median(norms) and h["grad_norm"] != max(norms)
        assert h["clip_rate"] == sum(s["clipped"] for s in window) / len(window)
        rates.append(h["clip_rate"])
    assert any(0 < rate < 1 for rate in rates), rates  # the run discriminates: some steps clipped, some not


def test_the_lyrics_baseline_is_the_training_texts_unigram_entropy():
    """Computed here from character counts of the training text; the held-out text's entropy differs."""
    from gradlab.tasks.lyrics import Lyrics

    text = "\n".join(["分开 想你 不分开", "我想你 你想我", "天天 想你", "你不分开 我不走", "想你 想我 天天"] * 4 + ["全新的 一行 歌词 么"])
    task = Lyrics.from_text(text, setting="full", val_fraction=0.05, prefixes=("分",))

    def entropy(s: str) -> float:
        counts = Counter(s)
        return -sum(c / len(s) * math.log(c / len(s)) for c in counts.values())

    assert task.baseline(35) == pytest.approx(entropy(task.data.train_text), abs=1e-12)
    assert abs(entropy(task.data.train_text) - entropy(task.data.val_text)) > 0.05
    counts = Counter(task.data.train_text)
    scored = [c for c in task.data.val_text[1:] if c in counts]
    assert task.data.stats["val_unigram_loss"] == pytest.approx(sum(-math.log(counts[c] / len(task.data.train_text)) for c in scored) / len(scored))


def test_matmul_peak_is_two_flops_per_multiply_add(monkeypatch):
    """2 n^3 / t, with t the measured median (fixed here): n^3 / t would halve it."""
    from gradlab import timing

    monkeypatch.setattr(timing, "median_seconds", lambda fn, device="cpu", repeats=5, warmup=1: 0.25)
    assert timing.matmul_peak("cpu", n=64) == 2 * 64**3 / 0.25


def test_the_page_says_how_many_seeds_and_draws_success_against_the_lag():
    from gradlab.report import figures
    from gradlab.report.page import Section
    from gradlab.report.train import success

    final = pd.concat([_final({50: [True, True, True], 100: [True, False, False]}).assign(cell=cell) for cell in ("gru", "lstm")])
    final = final.assign(steps_to_solve=1000.0, loss_over_baseline=0.05, diverged_step=None, forget_bias=0.0, variant=None)
    rates = by_setting(final, COLUMNS)
    sec = Section()
    success(sec, rates, COLUMNS)
    assert sec.key_points[0].startswith("Seeds behind each setting: 3 (4 settings)")
    (title, table), = sec.tables
    assert list(table["seeds_solved_of"]) == ["3/3", "1/3", "3/3", "1/3"]
    (stem, caption, draw), = sec.figures
    fig = draw()
    assert stem == "success-rate" and [ax.get_title() for ax in fig.axes] == ["adding"]
    assert sorted(line.get_ydata()[-1] for line in fig.axes[0].lines if len(line.get_ydata()) == 2) == [1 / 3, 1 / 3]
    figures.close(fig)


def test_the_steps_to_solve_figure_draws_every_seed_and_the_censored_ones_above_the_budget():
    from gradlab.report import figures

    final = pd.DataFrame({"task": "adding", "model": ["gru"] * 6, "seq_len": [10, 10, 10, 20, 20, 20], "steps": 2000,
                          "solved": [True, True, False, True, False, False], "steps_to_solve": [300, 500, None, 900, None, None]})
    fig = figures.steps_to_solve(final, "task", "t", ["gru"])
    ax = fig.axes[0]
    solved_pts, censored_pts = [c.get_offsets() for c in ax.collections]
    assert sorted(solved_pts[:, 1]) == [300, 500, 900] and len(censored_pts) == 3 and (censored_pts[:, 1] > 2000).all()
    median_line = [ln for ln in ax.lines if len(ln.get_xdata()) == 2][0]
    assert median_line.get_ydata()[0] == 500 and median_line.get_ydata()[1] > 2000  # T 20: 1 of 3 solved, its median beyond the budget
    figures.close(fig)


def _swept(val: dict, test: dict, steps: dict | None = None) -> pd.DataFrame:
    """A final table over learning rates: per (lr, lag), each seed's validation and test verdicts."""
    rows = []
    for (lr, lag), per_seed in val.items():
        for seed, v in enumerate(per_seed):
            t = test[(lr, lag)][seed]
            rows.append({"task": "adding", "cell": "gru", "lr": lr, "seq_len": lag, "seed": seed, "point": f"{lr}-{lag}-{seed}",
                         "val_solved": v, "val_steps_to_solve": (steps or {}).get((lr, lag), 500.0) if v else float("nan"),
                         "kept_val_loss_ratio": 0.05 if v else 0.5, "solved": t, "steps_to_solve": 700.0 if t else float("nan"),
                         "test_loss_ratio": 0.05 if t else 0.5, "test_solved": t})
    return pd.DataFrame(rows)


SWEPT = ["task", "cell", "lr", "seq_len", "seed", "point"]


def test_the_learning_rate_is_chosen_on_validation_and_never_by_the_test_set():
    """Validation says 1e-3 reaches lag 40 and 1e-2 lag 10; the test set says the reverse. The choice is 1e-3, and it
    stays 1e-3 whatever the test columns hold (removed, or made to favour either rate): selection reads no test column.
    Fails if select_lr read solved / test_solved / test_loss_ratio."""
    from gradlab.derived.train import select_lr

    val = {(1e-3, 10): [True] * 3, (1e-3, 20): [True] * 3, (1e-3, 40): [True, True, False],
           (1e-2, 10): [True] * 3, (1e-2, 20): [False] * 3, (1e-2, 40): [False] * 3}
    test = {(1e-3, 10): [True] * 3, (1e-3, 20): [False] * 3, (1e-3, 40): [False] * 3,
            (1e-2, 10): [True] * 3, (1e-2, 20): [True] * 3, (1e-2, 40): [True] * 3}
    final = _swept(val, test)
    chosen = select_lr(final, SWEPT)
    assert chosen.loc[chosen["lr_selected"], "lr"].tolist() == [1e-3] and chosen["rank"].tolist() == [1, 2]
    assert chosen.loc[chosen["lr_selected"], "val_longest_lag_solved"].tolist() == [40]
    test_columns = ["solved", "steps_to_solve", "test_loss_ratio", "test_solved"]
    for other in (final.drop(columns=test_columns), final.assign(solved=True, test_solved=True, test_loss_ratio=0.0),
                  final.assign(solved=final["lr"] == 1e-2, test_solved=final["lr"] == 1e-2)):
        pd.testing.assert_frame_equal(select_lr(other, SWEPT), chosen)


@pytest.mark.parametrize("val, steps, ratio_at, chosen", [
    ({10: ([True] * 3, [True, True, False])}, {}, None, 1e-3),  # the same longest lag, more seeds solved over the lags: 1e-3
    ({10: ([True] * 3, [True] * 3)}, {(1e-3, 10): 900.0, (1e-2, 10): 300.0}, None, 1e-2),  # then fewer steps to solve
    ({10: ([False] * 3, [False] * 3)}, {}, 1e-2, 1e-2),  # nothing solved: the lower validation loss ratio at the shortest lag
    ({10: ([True] * 3, [True] * 3)}, {}, None, 1e-3),  # a tie in everything: the lower rate
])
def test_the_rule_that_chooses_a_learning_rate_breaks_ties_in_its_stated_order(val, steps, ratio_at, chosen):
    from gradlab.derived.train import select_lr

    v = {(lr, lag): per[i] for lag, per in val.items() for i, lr in enumerate((1e-3, 1e-2))}
    final = _swept(v, {k: [False] * 3 for k in v}, steps)
    if ratio_at:
        final.loc[final["lr"] == ratio_at, "kept_val_loss_ratio"] = 0.3
    sel = select_lr(final, SWEPT)
    assert sel.loc[sel["lr_selected"], "lr"].tolist() == [chosen]


def test_every_table_of_a_sweep_names_the_learning_rate_and_the_chosen_one():
    """longest_lag and by_setting have a row per rate with lr and lr_selected; the tuned table gives each setting's chosen
    rate, the longest lag at it (test) beside the one at 3e-3 and at every rate; the page's tables name the rate too."""
    from gradlab.derived.train import by_setting, marked, select_lr, tuned
    from gradlab.report.page import Section
    from gradlab.report.train import longest, own_rates, success

    val = {(lr, lag): [lr == 1e-2 or lag == 10] * 3 for lr in (3e-3, 1e-2) for lag in (10, 20)}
    test = {(lr, lag): [lr == 3e-3 or lag == 10] * 3 for lr in (3e-3, 1e-2) for lag in (10, 20)}
    final = _swept(val, test).assign(diverged_step=None, loss_over_baseline=0.5, forget_bias=0.0, variant=None, steps=2000)
    cols = ["task", "cell", "forget_bias", "variant", "lr", "seq_len", "seed", "point"]
    sel = select_lr(final, cols)
    lag = marked(longest_lag(final, cols), sel, cols)
    rates = marked(by_setting(final, cols), sel, cols)
    assert lag[["lr", "lr_selected", "longest_lag_solved", "val_longest_lag_solved"]].values.tolist() == [[3e-3, False, 20, 10], [1e-2, True, 10, 20]]
    assert rates.loc[rates["lr_selected"], "lr"].tolist() == [1e-2, 1e-2]
    row = tuned(lag, sel, cols).iloc[0]
    assert (row["lr"], row["longest_lag_solved"], row["reference_lr"], row["longest_lag_at_reference_lr"]) == (1e-2, 10, 3e-3, 20)
    assert row["longest_lag_by_lr"] == "0.003: 20; 0.01: 10" and row["val_longest_lag_by_lr"] == "0.003: 10; 0.01: 20"
    sec = Section()
    longest(sec, lag, cols, tuned=True)  # in the page's order (report.train.view)
    success(sec, rates, cols, marked(final, sel, cols))
    own_rates(sec, tuned(lag, sel, cols), cols)
    (_, summary), = sec.summaries
    assert summary["lr (chosen on validation)"].tolist() == ["0.01"] and summary["longest lag at 0.003"].tolist() == ["20"]
    assert all("lr" in table for _, table in sec.tables)
    assert sec.key_points[0].startswith("Each model at its own learning rate, chosen on validation per task and model (1 settings, rates 0.003 0.01): "
                                        "adding: gru 0.01. Against the one rate 0.003, the longest lag solved on the test set changes in 1 of 1 settings")


def test_a_sweep_whose_rows_differ_by_more_than_the_model_names_that_setting_in_every_row_and_sentence():
    """clipping-modern chooses a rate per cell and clipping strategy: its tuned table has four rows per cell. The page's
    table and sentence name the strategy in each (without it they read 'rnn 0.1' four times), and say nothing of 3e-3,
    a rate the SGD grid never tried (it used to say '(0.003, the one rate every cell trained at before, was not tried.)')."""
    import json
    from pathlib import Path

    from gradlab.report.page import Section
    from gradlab.report.train import own_rates

    run = Path(__file__).resolve().parents[1] / "reports" / "clipping-modern"
    table = pd.read_parquet(run / "tuned.parquet")
    settings = json.loads((run / "manifest.json").read_text())["columns"]
    sec = Section()
    own_rates(sec, table, settings)
    (title, shown), = sec.summaries
    assert "clip" in shown and "per task and model and clip" in title
    assert len(shown) == len(shown[["model", "clip"]].drop_duplicates()) == 24  # every row its own model and strategy
    assert "0.003" not in title and not any("0.003" in c for c in shown.columns)
    said = sec.key_points[0]
    assert "rnn none 0.1, rnn norm:1 0.1" in said and "lru value:0.1 0.03" in said and "not tried" not in said
