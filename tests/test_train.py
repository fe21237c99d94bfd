"""Clipping, the trainer (telemetry, divergence, reproducibility), generation, and the book-style baseline."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab import bookstyle
from gradlab.clipping import clip
from gradlab.lm import build_lm, generate, perplexity
from gradlab.tasks.lyrics import prepare
from gradlab.timing import lm_epoch_flops
from gradlab.train import LyricsConfig, train_lyrics

TEXT = "\n".join(["abcd efgh abcd efgh"] * 40 + ["efgh efgh abcd abcd hg"] * 5)  # held out: an unseen line


def _params(*grads):
    ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return ps


def test_norm_clipping_rescales_the_global_norm_keeping_direction():
    ps = _params(torch.tensor([3.0]), torch.tensor([[4.0]]))
    r = clip(ps, "norm", 1.0)
    assert r.clipped and r.norm_before == pytest.approx(5.0) and r.norm_after == pytest.approx(1.0)
    assert ps[0].grad.item() == pytest.approx(0.6) and ps[1].grad.item() == pytest.approx(0.8)
    r = clip(ps, "norm", 2.0)
    assert not r.clipped and ps[0].grad.item() == pytest.approx(0.6)


def test_value_and_none_clipping():
    ps = _params(torch.tensor([3.0, -0.5]))
    r = clip(ps, "value", 1.0)
    assert r.clipped and ps[0].grad.tolist() == [1.0, -0.5] and r.norm_after == pytest.approx(math.hypot(1, 0.5))
    ps = _params(torch.tensor([3.0]))
    assert not clip(ps, "none", 1.0).clipped and ps[0].grad.item() == 3.0
    with pytest.raises(ValueError, match="Unknown clipping method 'nrom'"):
        clip(ps, "nrom", 1.0)


def test_non_finite_gradient_is_reported_not_scaled():
    ps = _params(torch.tensor([float("inf"), 1.0]))
    r = clip(ps, "norm", 1.0)
    assert math.isinf(r.norm_before) and not r.clipped and ps[0].grad[1].item() == 1.0


def _tiny(**kw) -> LyricsConfig:
    base = dict(hidden_size=16, epochs=6, num_steps=8, batch_size=4, eval_every=3, prefixes=("ab",), pred_len=6)
    return LyricsConfig(**(base | kw))


@pytest.fixture(scope="module")
def data():
    return prepare(TEXT, "full", 0.1)


def test_trainer_learns_and_records_every_step(data):
    cfg = _tiny(cell="gru", optimizer="adam", lr=3e-2, clip="norm", clip_threshold=1.0, epochs=12)
    r = train_lyrics(cfg, data, progress=False)
    first, last = r.history[0], r.history[-1]
    assert [h["epoch"] for h in r.history] == [3, 6, 9, 12]
    assert last["train_ppl"] < first["train_ppl"] and last["train_ppl"] < 1.5
    assert len(r.steps) == 12 * r.meta["batches_per_epoch"]
    assert all(s["grad_norm_clipped"] <= 1.0 + 1e-6 for s in r.steps)
    assert all(s["clipped"] == (s["grad_norm"] > 1.0) for s in r.steps)
    assert {"epoch", "train_ppl", "val_ppl", "seconds", "grad_norm"} <= set(last)
    assert math.isfinite(last["val_ppl"]) and not r.meta["diverged"]
    assert {(s["prefix"], s["temperature"]) for s in r.samples if s["epoch"] == 12} == {("ab", 0.0), ("ab", 1.0)}


def test_book_clipping_fires_on_early_steps(data):
    """At the book's lr 1e2 and threshold 1e-2 clipping fires from the start (normalised GD, step 1)."""
    r = train_lyrics(_tiny(hidden_size=256, epochs=1, eval_every=1), data, progress=False)
    assert all(s["clipped"] for s in r.steps) and r.history[0]["clip_rate"] == 1.0


def test_divergence_is_a_result(data):
    r = train_lyrics(_tiny(cell="linear", lr=1e30, clip="none", epochs=5, eval_every=5), data, progress=False)
    assert r.meta["diverged"] and r.history[-1]["diverged"]
    assert r.history[-1]["epoch"] < 5 or not math.isfinite(r.history[-1]["train_ppl"])


def test_same_config_same_numbers(data):
    cfg = _tiny(sampling="random")
    a, b = train_lyrics(cfg, data, progress=False), train_lyrics(cfg, data, progress=False)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(a.history) == strip(b.history) and a.samples == b.samples


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_scratch_and_cudnn_start_from_the_same_function(data, cell):
    """Same first loss; the fused module's global gradient norm also counts its redundant bias
    (b_ih and b_hh get the same gradient), so its squared norm exceeds scratch's by exactly that."""
    a = train_lyrics(_tiny(cell=cell, dtype="float64", epochs=1, eval_every=1), data, progress=False)
    b = train_lyrics(_tiny(cell=cell, impl="cudnn", dtype="float64", epochs=1, eval_every=1), data, progress=False)
    assert a.steps[0]["loss"] == pytest.approx(b.steps[0]["loss"], rel=1e-12)
    model = build_lm(cell, "cudnn", len(data.vocab), 16, seed=0, dtype=torch.float64)
    x, y = next(iter(__import__("gradlab.tasks.lyrics", fromlist=["consecutive"]).consecutive(data.train_ids, 4, 8)))
    logits, _ = model(x)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    g = model.cell.rnn.bias_hh_l0.grad
    redundant = g[: 2 * 16] if cell == "gru" else g  # the GRU candidate's b_hh is a parameter of its own
    extra = float(redundant.double().pow(2).sum())
    assert b.steps[0]["grad_norm"] ** 2 == pytest.approx(a.steps[0]["grad_norm"] ** 2 + extra, rel=1e-9)


def test_prefix_outside_vocabulary_fails_before_training(data):
    with pytest.raises(ValueError, match="prefix '分开' has characters outside the vocabulary"):
        train_lyrics(_tiny(prefixes=("分开",)), data, progress=False)


def test_generation_greedy_and_sampled(data):
    model = build_lm("gru", "scratch", len(data.vocab), 8, seed=0)
    greedy = generate(model, data.vocab, "ab", 10)
    assert greedy.startswith("ab") and len(greedy) == 12 and greedy == generate(model, data.vocab, "ab", 10)
    s1 = generate(model, data.vocab, "ab", 30, 1.0, torch.Generator().manual_seed(1))
    s2 = generate(model, data.vocab, "ab", 30, 1.0, torch.Generator().manual_seed(1))
    assert s1 == s2 and set(s1) <= set(data.vocab.idx_to_char)


def test_untrained_perplexity_is_near_uniform(data):
    model = build_lm("lstm", "scratch", len(data.vocab), 8, seed=0)
    assert perplexity(model, data.val_ids, 4, 8) == pytest.approx(len(data.vocab), rel=0.01)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_book_style_code_computes_the_same_step(data, cell):
    """The seed's per-gate one-hot code and gradlab's scratch LM: same loss, same gradients, same update."""
    model = build_lm(cell, "scratch", len(data.vocab), 12, seed=3, init="xavier", dtype=torch.float32)
    book = bookstyle.params_from(model)
    x, y = data.train_ids[:40].view(4, 10).T, data.train_ids[1:41].view(4, 10).T  # (T, B)
    logits, _ = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    before = [p.detach().clone() for p in book]
    book_loss, _ = bookstyle.train_step(cell, book, x, y, bookstyle.init_state(cell, 4, 12, "cpu"), lr=1.0, theta=1e9)
    assert book_loss == pytest.approx(loss.item(), rel=1e-6)
    names = dict(model.cell.named_parameters()) | {"W_hq": model.W_hq, "b_q": model.b_q}
    order = [n for n in names if n != "b_hh"]
    for name, b0, b1 in zip(order, before, book):
        torch.testing.assert_close(b0 - b1, names[name].grad, rtol=1e-4, atol=1e-7)  # lr 1: update == gradient


def test_flop_counts():
    ours = lm_epoch_flops("gradlab", "gru", 8, 35, 32, 1027, 256)
    book = lm_epoch_flops("book", "gru", 8, 35, 32, 1027, 256)
    assert ours == 280 * 3 * (2 * 32 * 256 * 768 + 2 * 32 * 256 * 1027)
    assert book - ours == 280 * 2 * (2 * 32 * 1027 * 768)
