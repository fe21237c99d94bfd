"""What lets a lyrics model generalise, each part against an exact answer: held-out blocks that never leak,
dropout that only trains, early stopping that keeps the best model, and clear errors."""

from __future__ import annotations

import pytest
import torch

from gradlab.study import StudyError, load_study, resolve
from gradlab.tasks.lyrics import Lyrics
from gradlab.tasks.text import prepare, split_blocks
from gradlab.training import TrainConfig, build_model, evaluate, train, with_task_params

Config = with_task_params(TrainConfig)
LINES = "\n".join(f"unique {i} {'ab' * (i % 5)}" for i in range(200))  # no line repeats


def test_blocks_come_from_the_whole_corpus_alternate_validation_and_test_and_keep_their_order():
    lines = [f"l{i}" for i in range(100)]
    train_lines, val, test = split_blocks("\n".join(lines), 0.2, 10)
    assert val == lines[20:30] and test == lines[70:80]  # every 5th block of 10, from the third: blocks 2 and 7
    assert train_lines == lines[:20] + lines[30:70] + lines[80:]


def test_a_held_out_line_the_training_text_holds_is_dropped():
    lines = [f"line {i:02d}" for i in range(20)]
    lines[2] = lines[0]  # a chorus: block 2 (validation) repeats a training line
    data = prepare("\n".join(lines), setting="full", val_fraction=0.2, split="blocks", block_lines=1)
    # blocks of one line, every 5th held out from the third: 2 (val), 7 (test), 12 (val), 17 (test)
    assert data.val_text == "line 12" and data.test_text == "line 07 line 17"
    assert data.stats["val_lines"] == 1 and data.stats["val_lines_dropped_as_seen"] == 1 and data.stats["test_lines"] == 2
    assert data.train_text == " ".join(lines[i] for i in range(20) if i not in (2, 7, 12, 17))


def test_only_the_blocks_split_has_a_test_set():
    tail = Lyrics.from_text(LINES, setting="full", val_fraction=0.2)
    blocks = Lyrics.from_text(LINES, setting="full", val_fraction=0.2, text_split="blocks", block_lines=10)
    assert tail.test_set(4, 8, "cpu") is None
    test = blocks.test_set(4, 8, "cpu")
    scored = sum(int((b.y != -100).sum()) for b in test)
    assert scored == blocks.data.stats["test_targets_scored"]


def test_a_held_out_text_with_nothing_unseen_is_refused_before_training():
    chorus = "\n".join(["la la la"] * 50)
    with pytest.raises(ValueError, match="no held-out line the training text lacks"):
        Lyrics.from_text(chorus, setting="full", val_fraction=0.2, prefixes=("la",)).ready(4, 8)


def test_dropout_acts_in_training_mode_only_and_evaluation_is_in_eval_mode():
    task = Lyrics.from_text(LINES, setting="full", val_fraction=0.2)
    plain = build_model(task.spec, "gru", "scratch", 8, seed=1, dtype=torch.float64)
    dropped = build_model(task.spec, "gru", "scratch", 8, seed=1, dtype=torch.float64, dropout=0.5)
    x = task.data.train_ids[:20, None]
    dropped.eval()
    assert torch.equal(dropped(x)[0], plain(x)[0])
    dropped.train()
    assert not torch.equal(dropped(x)[0], plain(x)[0])
    held = task.held_out(4, 8, "cpu")
    assert evaluate(dropped, task, held) == evaluate(plain, task, held) and dropped.training  # eval mode inside, back after


def test_patience_stops_the_run_and_keep_best_ends_with_the_best_evaluations_model():
    task = Lyrics.from_text(LINES, setting="full", val_fraction=0.2, prefixes=("uni",), pred_len=2)
    cfg = Config(task="lyrics", cell="gru", impl="scratch", hidden_size=16, optimizer="adam", lr=0.05, seq_len=8, batch_size=4,
                 steps=400, eval_every=5, patience=3, keep_best=True, pred_len=2, prefixes=("uni",), dtype="float64")
    r = train(cfg, task=task)
    vals = [h["val_loss"] for h in r.history]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert r.run["stopped_early_step"] == r.history[-1]["step"] < 400  # stopped, by patience
    assert len(vals) - 1 - best == 3 and all(v >= vals[best] for v in vals[best + 1 :])  # three evaluations without a new best
    assert r.run["best_step"] == r.history[best]["step"] and r.run["kept"] == "best"
    assert evaluate(r.model, task, task.held_out(4, 8, "cpu"))["val_loss"] == pytest.approx(vals[best], rel=1e-12)  # the best's parameters


@pytest.mark.parametrize("setting,message", [
    ("dropout=1.0", "dropout must be in \\[0, 1\\)"),
    ("patience=-1", "patience must be >= 0"),
    ("text_split=block", "Unknown text_split 'block'.*blocks"),
])
def test_bad_generalisation_settings_are_refused_before_any_work(setting, message, tmp_path):
    from gradlab.runner import plan

    with pytest.raises((StudyError, ValueError), match=message):
        plan("lyrics", "quick", [setting, "corpus=" + str(tmp_path / "none.zip")], "cpu")


def test_the_generalise_profile_keeps_the_books_regime_untouched():
    from gradlab import measures

    config = measures.load("train").Config
    study = load_study("lyrics")
    book, gen = resolve(study, config, "book").values, resolve(study, config, "generalise").values
    assert "dropout" not in resolve(study, config, "book").overridden and book.get("dropout", [0.0]) == [0.0]
    assert gen["text_split"] == ["blocks"] and gen["dropout"] == [0.3] and gen["keep_best"] == [True] and gen["seed"] == [0, 1, 2]
    assert Config().dropout == 0.0 and Config().patience == 0 and not Config().keep_best


def test_the_page_opens_with_test_perplexity_over_seeds_against_the_unigram_baseline():
    import math

    import pandas as pd

    from gradlab.report.page import Section
    from gradlab.report.train import tested

    final = pd.DataFrame({"cell": ["gru"] * 3 + ["rnn"], "forget_bias": 0.0, "test_ppl": [170.0, 160.0, 166.0, 280.0]})
    runs = pd.DataFrame({"test_unigram_loss": [math.log(382.0)] * 4})
    sec = Section()
    tested(sec, final, runs, "")
    assert sec.key_points == ["Test perplexity of the kept (best-validation) model, median (range) over seeds: gru 166 (160-170, 3 seeds); "
                              "rnn 280. The unigram baseline scores 382 on the same test text."]
    tested(sec, final.drop(columns="test_ppl"), runs, "")  # no test set: nothing said
    assert len(sec.key_points) == 1
