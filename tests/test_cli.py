"""The command line: a thin shell whose errors say what was wrong and what is allowed."""

from __future__ import annotations

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
        (("lyrics", "--set", "optimizer=adamw"), "Unknown optimizer 'adamw'. Known: adam, rmsprop, sgd. Did you mean 'adam'"),
        (("lyrics", "--set", "clip=norm"), "needs a positive threshold"),
        (("lyrics", "--set", "n_symbols=3"), "n_symbols does not apply to task 'lyrics'"),
        (("run", "gradient-decay", "--executor", "dask"), "Invalid value for '--executor'"),
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
