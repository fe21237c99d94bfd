"""A lyrics run keeps its trained model (each point's kept weights, in points/), so that its analyses can be made
again without training: the weights reload into the very model that was tested, and `gradlab report --reanalyse`
recomputes the context probe, input gradients and by-frequency table from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from gradlab.cli import main
from gradlab.tasks.corpus import CorpusError, locate

try:
    locate(None)
    HAVE_CORPUS = True
except (CorpusError, OSError):
    HAVE_CORPUS = False

needs_corpus = pytest.mark.skipif(not HAVE_CORPUS, reason="the lyrics corpus is not here: set GRADLAB_DATA to the zip or its folder")
SMALL = ["--set", "cell=gru", "--set", "seed=0", "--set", "hidden_size=16", "--set", "steps=6", "--set", "eval_every=3",
         "--set", "context_lengths=1,2,4", "--set", "context_positions=30", "--set", "pred_len=5", "--set", "eval_modes=cache,mix"]
ANALYSES = ("context", "context_grads", "by_frequency", "samples", "by_distance", "runs")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def lyrics_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "run"
    r = invoke("run", "lyrics", "--profile", "generalise", *SMALL, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@needs_corpus
def test_a_lyrics_run_keeps_its_model_in_its_points_not_in_its_tables(lyrics_run):
    kept = list((lyrics_run / "points").glob("*.weights.parquet"))
    assert len(kept) == 1
    manifest = json.loads((lyrics_run / "manifest.json").read_text())
    assert "weights" not in manifest["tables"] and not (lyrics_run / "weights.parquet").exists()
    assert set(pd.read_parquet(kept[0])["name"]) >= {"readout.weight"} or len(pd.read_parquet(kept[0])) > 3


@needs_corpus
def test_the_kept_weights_are_the_model_that_was_tested(lyrics_run):
    import torch

    from gradlab.measures.train import __getattr__ as train_attr, load_weights
    from gradlab.store import PointStore
    from gradlab.training.loop import evaluate, model_of

    store = PointStore(lyrics_run)
    key = next((lyrics_run / "points").glob("*.weights.parquet")).name.split(".")[0]
    meta, tables = store.read_meta(key), store.tables(key)
    cfg = train_attr("Config")(**meta["config"])
    task = cfg.validate()
    model = model_of(cfg, task, "cpu")
    load_weights(model, tables["weights"])
    tested = evaluate(model, task, task.test_set(cfg.batch_size, cfg.seq_len, torch.device("cpu")))
    assert tested["val_loss"] == pytest.approx(float(tables["runs"]["test_loss"].iloc[0]), rel=1e-12, abs=0)
    fresh = model_of(cfg, task, "cpu")  # the frame alone: another model (the weights, not the init, make the loss)
    assert evaluate(fresh, task, task.test_set(cfg.batch_size, cfg.seq_len, torch.device("cpu")))["val_loss"] != tested["val_loss"]


@needs_corpus
def test_report_reanalyse_makes_the_analyses_again_from_the_weights(lyrics_run, monkeypatch):
    import gradlab.context

    before = {name: pd.read_parquet(lyrics_run / f"{name}.parquet") for name in ANALYSES}
    r = invoke("report", lyrics_run, "--reanalyse")
    assert r.exit_code == 0 and "1 points of" in r.output and "reanalysed" in r.output, r.output
    timed = lambda df: df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])  # noqa: E731 - how long a mode took is no result
    for name in ANALYSES:  # today's code on the same weights: the same tables (the modes' losses in the runs row included)
        pd.testing.assert_frame_equal(timed(pd.read_parquet(lyrics_run / f"{name}.parquet")), timed(before[name]))
    assert "test_cache_loss" in before["runs"] and before["runs"]["test_cache_loss"].notna().all()
    real = gradlab.context.gap_interval
    monkeypatch.setattr(gradlab.context, "gap_interval", lambda *a, **k: (lambda g, lo, hi: (g, lo - 1, hi + 1))(*real(*a, **k)))  # an analysis changed
    steps = pd.read_parquet(lyrics_run / "steps.parquet")
    assert invoke("report", lyrics_run, "--reanalyse").exit_code == 0
    after = pd.read_parquet(lyrics_run / "context.parquet")
    pd.testing.assert_series_equal(after["gap_lo"], before["context"]["gap_lo"] - 1)  # its tables change, nothing is trained
    pd.testing.assert_series_equal(after["gap"], before["context"]["gap"])
    pd.testing.assert_frame_equal(pd.read_parquet(lyrics_run / "steps.parquet"), steps)


def test_a_synthetic_run_keeps_no_weights(tmp_path):
    out = tmp_path / "adding"
    r = invoke("run", "long-range", "--set", "cell=gru", "--set", "seq_len=10", "--set", "steps=4", "--set", "eval_every=2",
               "--set", "hidden_size=8", "--set", "forget_bias=0", "--set", "probe_steps=0", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert not list((out / "points").glob("*.weights.parquet"))
