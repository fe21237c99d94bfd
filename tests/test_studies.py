"""The shipped studies end to end: what they must show, measured on small grids."""

from __future__ import annotations

import pandas as pd
import pytest

from gradlab.report import render
from gradlab.runner import run_study


def test_gradient_decay_shows_what_theory_predicts(tmp_path):
    out = tmp_path / "gd"
    run_study("gradient-decay", "quick", ["cell=linear,rnn", "impl=scratch", "probe=hidden,jacobian", "seq_len=80", "forget_bias=0"],
              out=out, device="cpu", progress=False)
    rates = pd.read_parquet(out / "decay_rates.parquet").set_index(["cell", "probe", "init_scale"])
    for probe in ("hidden", "jacobian"):
        for scale in (0.8, 1.0, 1.2):
            lin = rates.loc[("linear", probe, scale)]
            assert lin["factor_per_step"] == pytest.approx(scale, rel=1e-9)  # exactly rho per step
            assert lin["r2"] > 0.999 or scale == 1.0  # flat line: r2 is undefined-ish at slope 0
        rnn = rates.xs(("rnn", probe), level=["cell", "probe"])["factor_per_step"]
        assert rnn.is_monotonic_increasing and (rnn < 1).all()  # steeper for smaller init_scale; tanh never explodes here
        assert (rates.xs(("rnn", probe), level=["cell", "probe"])["r2"] > 0.98).all()  # near-straight on the log axis


def test_lyrics_study_quick(tmp_path, corpus_zip):
    out = tmp_path / "ly"
    s = run_study("lyrics", "quick", ["steps=16", "eval_every=8", f"corpus={corpus_zip}", "cell=gru", "pred_len=4"],
                  out=out, device="cpu", progress=False)
    assert s.failed == [] and s.points == 2  # impl scratch and cudnn
    res = pd.read_parquet(out / "results.parquet")
    assert {"task", "cell", "impl", "sampling", "step", "epoch", "train_ppl", "val_ppl", "val_loss", "baseline", "seconds", "grad_norm"} <= set(res.columns)
    assert set(pd.read_parquet(out / "runs.parquet")["backend"]) == {"python-loop", "aten-cpu"}
    final = pd.read_parquet(out / "final.parquet")
    assert len(final) == 2 and (final["epoch"] == 2).all() and (final["step"] == 16).all()
    assert len(pd.read_parquet(out / "samples.parquet")) == 2 * 2 * 2 * 2  # points x evaluations x prefixes x temperatures
    assert len(pd.read_parquet(out / "steps.parquet")) == 2 * 16
    assert "Final" in render(out).read_text()


def test_lyrics_study_without_a_corpus_fails_before_any_work(tmp_path, monkeypatch):
    from gradlab.tasks import corpus

    monkeypatch.delenv(corpus.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "_download_to_cache", lambda: corpus.download(tmp_path / "z.zip", urls=((tmp_path / "nowhere.zip").as_uri(),)))
    with pytest.raises(corpus.CorpusError, match="could not download the corpus"):
        run_study("lyrics", "quick", out=tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
