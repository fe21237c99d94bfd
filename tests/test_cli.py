"""The command line: a thin shell whose errors say what was wrong and what is allowed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from gradlab.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_names_everything():
    r = invoke("list")
    assert r.exit_code == 0
    for word in ("gradient-decay", "lyrics", "quick", "book"):
        assert word in r.output
    from gradlab.names import TABLES

    for title, table in TABLES.items():  # every table of names, every name in it
        assert f"{title}:" in r.output and all(f"  {name} " in r.output for name in table), title


@pytest.mark.parametrize(
    "args,message",
    [
        (("run", "gradient-decy"), "Did you mean 'gradient-decay'"),
        (("run", "gradient-decay", "--set", "seqlen=3"), "Did you mean 'seq_len'"),
        (("run", "gradient-decay", "--set", "seq_len=x"), "is not a valid int value"),
        (("run", "gradient-decay", "--profile", "quik"), "Did you mean 'quick'"),
        (("run", "gradient-decay", "--set", "cell=lstn"), "Did you mean 'lstm'"),
        (("lyrics", "--set", "cell=lstn"), "Did you mean 'lstm'"),
        (("lyrics", "--set", "cell=linear", "--set", "impl=cudnn"), "cudnn exists for"),
        (("lyrics", "--set", "optimizer=adamx"), "Unknown optimizer 'adamx'. Known: adam, adamw, rmsprop, sgd. Did you mean 'adam'"),
        (("lyrics", "--set", "clip=norm"), "norm needs a positive number, written 'norm:THETA'"),
        (("lyrics", "--set", "n_symbols=3"), "n_symbols does not apply to task 'lyrics'"),
        (("run", "gradient-decay", "--executor", "dsak"), "Invalid value for '--executor'"),
    ],
)
def test_bad_input_is_a_usage_error(args, message):
    r = invoke(*args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_run_then_report(tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "gradient-decay", "--profile", "quick", "--set", "cell=linear,rnn", "--set", "seq_len=20",
               "--set", "probe=hidden", "--set", "forget_bias=0", "--device", "cpu", "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert "0 cached, 9 computed, 0 failed" in r.output
    res = pd.read_parquet(out / "results.parquet")
    assert set(res["cell"]) == {"linear", "rnn"} and res["distance"].max() == 19
    r = invoke("run", "gradient-decay", "--profile", "quick", "--set", "cell=linear,rnn", "--set", "seq_len=20",
               "--set", "probe=hidden", "--set", "forget_bias=0", "--device", "cpu", "--out", str(out), "--quiet")
    assert "9 cached, 0 computed" in r.output
    (out / "report.html").unlink()
    r = invoke("report", str(out))
    assert r.exit_code == 0 and (out / "report.html").exists()
    r = invoke("report", str(tmp_path))
    assert r.exit_code == 2 and "no manifest.json" in r.output


def test_failed_points_give_exit_status_1(tmp_path, failing_study):
    r = CliRunner().invoke(main, ["run", str(failing_study), "--out", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 1 and "1 failed" in r.output and "x=2 blows up" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_before_any_work(tmp_path):
    r = invoke("run", "gradient-decay", "--profile", "gpu", "--out", str(tmp_path / "run"))
    assert r.exit_code == 2 and "asks for device 'cuda', but torch sees no CUDA device" in r.output
    assert not (tmp_path / "run").exists()


def test_lyrics_command_runs_the_book_profile(tmp_path, corpus_zip):
    out = tmp_path / "ly"
    r = invoke("lyrics", "--set", f"corpus={corpus_zip}", "--set", "steps=16", "--set", "eval_every=8", "--set", "hidden_size=8",
               "--set", "pred_len=5", "--device", "cpu", "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert "1 points: 0 cached, 1 computed" in r.output and "val_ppl" in r.output and "[T=0] 分开" in r.output
    history = pd.read_parquet(out / "results.parquet")
    assert {"step", "epoch", "train_ppl", "val_ppl", "seconds", "grad_norm"} <= set(history.columns) and len(history) == 2
    assert (history["cell"] == "gru").all() and (history["impl"] == "scratch").all()
    samples = pd.read_parquet(out / "samples.parquet")
    assert {"epoch", "prefix", "temperature", "text"} <= set(samples.columns) and set(samples["prefix"]) == {"分开", "不分开"}
    steps = pd.read_parquet(out / "steps.parquet")
    assert {"grad_norm_pre", "grad_norm_post", "clipped"} <= set(steps.columns) and len(steps) == 16


def test_lyrics_prefix_outside_vocabulary(tmp_path, corpus_zip):
    r = invoke("lyrics", "--set", f"corpus={corpus_zip}", "--set", "prefixes=分开x", "--set", "steps=1", "--out", str(tmp_path / "x"), "--quiet")
    assert r.exit_code == 2 and "prefix '分开x' has characters outside the vocabulary: 'x'" in r.output
    assert not (tmp_path / "x").exists()  # before any work


def test_lyrics_missing_corpus_says_how_to_supply_it(tmp_path):
    r = invoke("lyrics", "--set", f"corpus={tmp_path / 'nope.zip'}", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "does not exist" in r.output


def _quick_args(out, *more):
    return ["run", "gradient-decay", "--set", "cell=linear,rnn", "--set", "seq_len=20", "--set", "probe=hidden",
            "--set", "forget_bias=0", "--device", "cpu", "--out", str(out), "--quiet", *more]


def test_show_names_axes_settings_rules_and_point_counts():
    r = invoke("show", "gradient-decay")
    assert r.exit_code == 0, r.output
    for text in ("measure gradient_decay", "grid:", "init_scale = [0.5, 0.9, 1.0, 1.1, 1.5]", "settings:", "hidden_size = 128",
                 "exclude:", "(torch.nn has no identity-activation RNN)", "quick (default): 81 points, 63 excluded",
                 "full: 495 points", "gpu: 486 points"):
        assert text in r.output, text
    r = invoke("show", "lyrics")
    assert "book (default): 1 points" in r.output and "full: 12 points" in r.output


def test_dry_run_says_what_it_would_compute_and_computes_nothing(tmp_path):
    out = tmp_path / "run"
    r = invoke(*_quick_args(out, "--dry-run"))
    assert r.exit_code == 0, r.output
    assert "profile 'quick' (the study's default)" in r.output and "9 points, 0 cached, 9 to compute" in r.output
    assert "rule {cell='linear', impl='cudnn'} (torch.nn has no identity-activation RNN) dropped 3 points" in r.output
    assert "points to compute:" in r.output and r.output.count("hidden") >= 9 and not out.exists()
    invoke(*_quick_args(out))
    r = invoke(*_quick_args(out, "--set", "seed=0,1", "--dry-run"))
    assert "18 points, 9 cached, 9 to compute" in r.output


def test_a_run_says_its_profile_and_points_before_it_starts(tmp_path):
    r = invoke(*_quick_args(tmp_path / "a"))
    first = r.output.splitlines()[0]
    assert first == "study 'gradient-decay', profile 'quick' (the study's default): 9 points, 0 cached, 9 to compute", r.output
    r = invoke(*_quick_args(tmp_path / "a", "--profile", "full", "--set", "seed=0", "--set", "init_scale=1"))
    assert "profile 'full' (asked for)" in r.output


def test_interrupted_run_says_how_much_is_saved_and_report_says_the_same(tmp_path, monkeypatch):
    from gradlab import runner

    out = tmp_path / "run"
    real, calls = runner.execute_point, []

    def dies_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "execute_point", dies_on_fourth)
    r = CliRunner().invoke(main, _quick_args(out))
    assert r.exit_code == 130 and "interrupted: 3 of 9 points saved" in r.output and "rerun the same command to resume" in r.output
    r = invoke("report", str(out))  # renders what the folder holds, and says it is unfinished
    assert r.exit_code == 0 and "Unfinished run: 3 of 9 points saved" in r.output and "Rerun to resume: gradlab" in r.output
    page = (out / "report.html").read_text()
    assert "Unfinished run: 3 of 9 points saved" in page and "from 3 points" in page
    assert json.loads((out / "manifest.json").read_text())["points_saved"] == 3
    monkeypatch.setattr(runner, "execute_point", real)
    assert "9 points, 3 cached, 6 to compute" in invoke(*_quick_args(out)).output


def test_reusing_out_for_another_grid_says_what_it_replaces(tmp_path):
    out = tmp_path / "run"
    invoke(*_quick_args(out))
    r = invoke(*_quick_args(out, "--set", "seq_len=30"))
    assert f"note: {out} held a run of study 'gradient-decay' (quick, 9 points" in r.output
    assert "its tables are replaced by this grid's 9 points, 0 of which it had computed" in r.output
    r = invoke(*_quick_args(out, "--set", "seq_len=30"))
    assert "note:" not in r.output  # the same grid again: nothing replaced


def test_every_file_a_run_writes_follows_the_umask(tmp_path):
    import os
    import stat

    from gradlab import store

    old = os.umask(0o027)
    store.file_mode.cache_clear()
    try:
        invoke(*_quick_args(tmp_path / "run"))
    finally:
        os.umask(old)
        store.file_mode.cache_clear()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 20 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}


def test_meaningless_values_are_errors():
    for setting, message in [("init_scale=-1", "init_scale must be in (0, 100]"), ("hidden_size=0", "hidden_size must be >= 1"),
                             ("input_std=-0.5", "input_std must be >= 0"), ("batch_size=-2", "batch_size must be >= 1")]:
        r = invoke("run", "gradient-decay", "--set", setting, "--dry-run")
        assert r.exit_code == 2 and message in r.output, (setting, r.output)
    r = invoke("run", "lyrics", "--set", "lr=0", "--dry-run")
    assert r.exit_code == 2 and "lr must be > 0" in r.output


def test_compare_puts_two_runs_side_by_side(tmp_path):
    invoke(*_quick_args(tmp_path / "a"))
    invoke(*_quick_args(tmp_path / "b", "--set", "seed=1"))
    r = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.csv"))
    assert r.exit_code == 0, r.output
    assert "seed: 0 in A, 1 in B" in r.output
    table = pd.read_csv(tmp_path / "c.csv")
    assert len(table) == 6 and (table["in"] == "both").all()  # (linear, rnn) x 3 init_scales: rnn's cudnn rates equal its scratch ones, given once
    linear = table[table["cell"] == "linear"]
    assert (linear["factor_per_step B-A"].abs() < 1e-12).all()  # exactly rho per step, whatever the seed
    assert (table[table["cell"] == "rnn"]["factor_per_step B-A"].abs() > 0).any()


def test_compare_of_two_runs_with_no_row_in_common_says_so_and_names_what_each_holds(tmp_path):
    invoke(*_quick_args(tmp_path / "a", "--set", "init_scale=0.8,1.0"))
    invoke(*_quick_args(tmp_path / "b", "--set", "init_scale=1.2,1.5"))
    r = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert r.exit_code == 0
    assert "A and B have no row at the same settings: nothing to subtract" in r.output
    assert "init_scale 0.8, 1.0" in r.output and "init_scale 1.2, 1.5" in r.output
