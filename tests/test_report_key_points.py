"""What a page says first: the sentences it opens with, read off its tables, and how its numbers are written."""

import pandas as pd

from gradlab.report.train import _who_solved

SETTINGS = ["cell", "forget_bias", "seq_len", "lr", "seed"]


def _final(rows: list[tuple]) -> pd.DataFrame:
    cols = ["cell", "forget_bias", "seq_len", "lr", "seed", "solved", "steps_to_solve", "step", "loss_over_baseline", "diverged_step"]
    return pd.DataFrame(rows, columns=cols)


def test_who_solved_names_each_run_its_step_or_how_far_it_ended():
    final = _final([
        ("gru", 0.0, 100, 0.003, 0, True, 1000, 1000, 0.079, None),
        ("lstm", 1.0, 100, 0.003, 0, True, 4750, 4750, 0.099, None),
        ("rnn", 0.0, 200, 0.003, 0, False, None, 6000, 1.074, None),
        ("rnn", 0.0, 100, 0.003, 0, False, None, 12, float("inf"), 12),
    ])
    said = _who_solved(final, SETTINGS)
    assert said.startswith("Solved: gru at T 100 at step 1,000; lstm, forget bias 1 at T 100 at step 4,750.")  # by the rule said beside
    assert said.endswith("Not solved: rnn at T 200 (1.07 x the baseline after 6,000 steps); rnn at T 100 (diverged at step 12).")
    left = final.assign(left_baseline=[True, True, True, False], error_rate=[0.0, 0.0, 0.12, float("nan")])
    assert "rnn at T 200 (1.07 x the baseline, 12.0% of answers wrong after 6,000 steps) (left the baseline)" in _who_solved(left, SETTINGS)


def test_who_solved_names_the_settings_that_vary_and_counts_when_runs_are_many():
    two_lrs = _final([("gru", 0.0, 50, lr, 0, False, None, 300, 0.5, None) for lr in (0.1, 0.3)])
    assert _who_solved(two_lrs, SETTINGS) == ("No run solved its lag. Not solved: gru, lr 0.1 at T 50 (0.50 x the baseline after 300 "
                                              "steps); gru, lr 0.3 at T 50 (0.50 x the baseline after 300 steps).")
    many = _final([("gru", 0.0, 50, 0.1, seed, seed < 3, 200, 300, 0.05, None) for seed in range(9)])
    assert _who_solved(many, SETTINGS) == "3 of 9 runs solved their lag (the final-evaluation table says which)."
    assert _who_solved(many.assign(solved=False), SETTINGS) == "None of the 9 runs solved its lag."


def test_throughput_ratios_are_said_shape_by_shape_or_as_a_range():
    from gradlab.report.throughput import _ratio_sentence, _shape

    few = pd.DataFrame({"impl": "scratch", "cell": "gru", "seq_len": [100, 35], "batch_size": [64, 32], "hidden_size": [512, 256],
                        "ratio_to_fused": [1.02, 0.95]})
    assert _ratio_sentence(few.assign(shape=_shape(few))) == ("Time over the fused kernel's (below 1: faster than it): scratch gru 0.95 "
                                                              "at T 35, B 32, H 256 and 1.02 at T 100, B 64, H 512.")
    many = pd.DataFrame({"impl": "scratch-graph", "cell": "lstm", "seq_len": 25, "batch_size": [1, 16, 64, 128], "hidden_size": 512,
                         "ratio_to_fused": [0.43, 0.59, 0.71, 1.09]})
    assert _ratio_sentence(many.assign(shape=_shape(many))).endswith("scratch-graph lstm 0.43 to 1.09 over 4 shapes.")


def test_table_numbers_stay_short_however_large():
    from gradlab.report.page import fmt

    assert [fmt(v) for v in (0.012345, 156.0, 5095.437, 123456.7, 2.372922e23, float("inf"), float("nan"))] == [
        "0.01235", "156", "5095", "123,457", "2.37e+23", "inf", ""]


def test_the_longest_lag_table_names_every_setting_a_study_varies_beside_the_cell():
    """long-range-critical varies the init: without it in each row's name, the table showed every cell twice."""
    from gradlab.derived.train import longest_lag
    from gradlab.report.page import Section
    from gradlab.report.train import longest

    final = pd.DataFrame([{"task": "adding", "cell": c, "impl": "scratch", "forget_bias": 0.0, "init": i, "steps": 6000, "seq_len": T, "seed": 0,
                           "solved": c == "gru" or (i == "critical" and T == 100)}
                          for c in ("rnn", "gru") for i in ("uniform", "critical") for T in (100, 200)])
    settings = ["task", "cell", "impl", "forget_bias", "init", "steps", "seq_len", "seed"]
    sec = Section()
    longest(sec, longest_lag(final, settings), settings)
    title, table = sec.summaries[0]
    assert "6,000 steps" in title
    assert table["model"].is_unique, table
    assert dict(zip(table["model"], table["longest_lag_solved"].fillna(0))) == {
        "rnn, init uniform": 0, "rnn, init critical": 100, "gru, init uniform": 200, "gru, init critical": 200}


def test_a_decay_run_older_than_the_total_cell_state_gradient_says_so_on_its_page():
    """The GPU decay run (made before gradlab measured the total dL/dc_t) says its c rows are the carried part only;
    a run made since does not."""
    from pathlib import Path

    from gradlab.report import check_finished, load_tables, view_of

    def points(name):
        out = Path(__file__).resolve().parent.parent / "reports" / name
        manifest = check_finished(out)
        return " ".join(view_of("gradient_decay")(load_tables(out, manifest), manifest).key_points)

    assert "older than gradlab's total dL/dc_t" in points("gradient-decay-gpu")
    assert "older than" not in points("gradient-decay-quick")


def test_a_figures_title_names_a_feature_off_by_default_only_when_it_is_on():
    from gradlab.report.views import fixed_settings

    off = pd.DataFrame([{"cell": "gru", "embedding": 0, "tie": False, "weight_drop": 0.0, "lr_schedule": "constant", "lr": 0.003}])
    assert fixed_settings(off, list(off.columns), set()) == {"cell": "gru", "lr": "0.003"}
    on = off.assign(embedding=256, tie=True, weight_drop=0.3, lr_schedule="plateau")
    assert fixed_settings(on, list(on.columns), set()) == {"cell": "gru", "embedding": 256, "tie": True, "weight_drop": "0.3",
                                                           "lr_schedule": "plateau", "lr": "0.003"}
