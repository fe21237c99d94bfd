"""Long context on held-out text (gradlab.evaluation): the neural cache against its formula written out in float64,
dynamic evaluation scoring each target before any step that saw it (and at rate 0 the plain one-stream loss),
the distance bands against a scan, and the modes wired into a run's row and tables, off unless asked for."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gradlab import evaluation as E
from gradlab.context import stream_losses
from gradlab.tasks.base import Spec
from gradlab.training.model import build_model

V, H = 6, 5
SPEC = Spec(input="tokens", input_size=V, output_size=V, loss="cross_entropy", metric="perplexity")
UNKNOWN = V  # read as no character, never scored


def _model(seed: int = 0, **kw) -> torch.nn.Module:
    model = build_model(SPEC, "gru", "scratch", H, seed=seed, dtype=torch.float64, init="uniform", **kw)
    with torch.no_grad():  # weights large enough that the states differ and the cache's weights matter
        for p in model.parameters():
            p.mul_(3)
    return model.eval()


def _training_text(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def _text(n: int = 70, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n,), generator=gen)
    ids[[5, 17, 18, 40]] = UNKNOWN  # targets outside the vocabulary: context only
    return ids


def _states_one_by_one(model, ids: torch.Tensor) -> torch.Tensor:
    """(len - 1, H): the cell's output at every step, the model fed one character at a time (no chunks)."""
    out, state = [], None
    with torch.no_grad():
        for t in range(len(ids) - 1):
            h, state = model.cell(model.cell_inputs(ids[t : t + 1, None]), state)
            out.append(h[0, 0])
    return torch.stack(out)


def test_a_stream_read_is_the_context_measures_one_stream_loss():
    model, ids = _model(), _text()
    r = E.read(model, ids, UNKNOWN, chunk=16)
    assert r.positions.tolist() == [p for p in range(1, len(ids)) if ids[p] != UNKNOWN]
    assert torch.equal(r.losses, stream_losses(model, ids, r.positions, chunk=16))
    torch.testing.assert_close(r.hidden, _states_one_by_one(model, ids)[r.positions - 1], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("theta, window", [(0.3, 1), (0.3, 6), (2.0, 1000), (1.0, 25)])
def test_the_neural_cache_is_its_formula_written_out(theta, window):
    """p_cache(w) = sum over earlier scored targets x_{i+1} = w within the window of exp(theta h_t . h_i), over the
    same sum for every w: written as loops in float64 over states from a step-by-step read; a distribution; empty
    (NaN, the model's alone) before any target has been scored."""
    model, ids = _model(1), _text(seed=1)
    states = _states_one_by_one(model, ids)  # states[t]: read ids[t], predicts ids[t + 1]
    r = E.read(model, ids, UNKNOWN)
    got = E.neural_cache_probs(r.hidden, r.targets, r.positions, (theta,), (window,), rows=7)[0, 0]
    scored = [p for p in range(1, len(ids)) if ids[p] != UNKNOWN]
    for n, p in enumerate(scored):
        earlier = [q for q in scored if p - window <= q < p]  # targets already scored, within the window
        if not earlier:
            assert math.isnan(got[n])
            continue
        weights = {q: math.exp(theta * float(states[p - 1] @ states[q - 1])) for q in earlier}
        dist = [sum(v for q, v in weights.items() if ids[q] == w) / sum(weights.values()) for w in range(V)]
        assert sum(dist) == pytest.approx(1.0, abs=1e-12)
        assert float(got[n]) == pytest.approx(dist[int(ids[p])], rel=1e-12, abs=1e-300)
    assert math.isnan(got[0])
    lam = 0.3
    mixed = E.cache_losses(r, theta, window, lam)
    p_net = torch.exp(-r.losses)
    want = [-math.log(float(p_net[n]) if math.isnan(got[n]) else (1 - lam) * float(p_net[n]) + lam * float(got[n])) for n in range(len(scored))]
    assert mixed.tolist() == pytest.approx(want, rel=1e-12)


def test_the_cache_settings_are_the_best_of_their_grid_on_the_text_they_are_chosen_on():
    model, ids = _model(2), _text(120, seed=2)
    r = E.read(model, ids, UNKNOWN)
    chosen = E.choose_cache(r, (0.5, 2.0), (10, 100), (0.0, 0.2, 0.5))
    for theta in (0.5, 2.0):
        for window in (10, 100):
            for lam in (0.0, 0.2, 0.5):
                assert chosen["loss"] <= float(E.cache_losses(r, theta, window, lam).mean()) + 1e-15
    assert chosen["loss"] == pytest.approx(float(E.cache_losses(r, chosen["theta"], chosen["window"], chosen["lambda"]).mean()), rel=1e-14)


def _dynamic_by_hand(model, ids, lr, decay, segment, peek=False, rms=None, clip=None):
    """Dynamic evaluation written plainly through the model's own forward: per segment, score with the current
    weights (or, peek=True, after the step on the segment: what must not happen), then one step."""
    adapted = __import__("copy").deepcopy(model)
    start = [p.detach().clone() for p in adapted.parameters()]
    losses, state = [], None
    for i in range(0, len(ids) - 1, segment):
        x, y = ids[i : min(i + segment, len(ids) - 1)], ids[i + 1 : min(i + segment, len(ids) - 1) + 1]
        keep = y != UNKNOWN
        logits, new_state = adapted(x[:, None], state)
        loss = F.cross_entropy(logits[:, 0][keep], y[keep], reduction="none")
        if not peek:
            losses.append(loss.detach())
        adapted.zero_grad()
        loss.mean().backward()
        with torch.no_grad():
            norm = math.sqrt(sum(float((p.grad**2).sum()) for p in adapted.parameters()))
            for p in adapted.parameters():
                p.grad *= min(1.0, clip / norm) if clip else 1.0
            if rms is None:  # theta - lr g + decay (theta_0 - theta)
                for p, p0 in zip(adapted.parameters(), start):
                    p.copy_(p - lr * p.grad + decay * (p0 - p))
            else:  # theta - lr g / (rms + eps) + min(decay rms / mean rms, 1) (theta_0 - theta)
                scale = sum(float(r.mean()) for r in rms) / len(rms)
                for p, p0, r in zip(adapted.parameters(), start, rms):
                    p.copy_(p - lr * p.grad / (r + E.RMS_EPSILON) + torch.clamp(decay * r / scale, max=1.0) * (p0 - p))
        if peek:
            with torch.no_grad():
                logits, _ = adapted(x[:, None], state)
            losses.append(F.cross_entropy(logits[:, 0][keep], y[keep], reduction="none"))
        state = new_state.detach()
    return torch.cat(losses)


@pytest.mark.parametrize("rule, clip", [("sgd", None), ("rms", None), ("sgd", 0.05), ("rms", 0.05)])
def test_dynamic_evaluation_scores_each_segment_before_the_step_that_sees_it(rule, clip):
    model, ids = _model(3), _text(43, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rms = E.gradient_rms(model, _training_text(200, 9), 4, streams=3) if rule == "rms" else None
    lr = (0.5 if rule == "sgd" else 2e-3) * (20 if clip else 1)
    got = E.dynamic_losses(model, ids, UNKNOWN, lr, 0.1, segment=4, rms=rms, clip=clip)
    want = _dynamic_by_hand(model, ids, lr, 0.1, 4, rms=rms, clip=clip)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if clip:  # clipping acts here: the unclipped steps would score otherwise
        assert (got - _dynamic_by_hand(model, ids, lr, 0.1, 4, rms=rms)).abs().max() > 1e-3
    peeked = _dynamic_by_hand(model, ids, lr, 0.1, 4, peek=True, rms=rms, clip=clip)
    assert (got - peeked).abs().max() > 1e-3  # the case tells the two apart: scoring after the step would change the losses
    plain = stream_losses(model, ids, E.scored_positions(ids, UNKNOWN), chunk=4)
    first = int((ids[1:5] != UNKNOWN).sum())
    assert torch.equal(got[:first], plain[:first]) and not torch.allclose(got[first:], plain[first:])  # the first segment: the trained model's own
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # a copy adapted; the model untouched


@pytest.mark.parametrize("decay, rule", [(0.0, "sgd"), (0.3, "sgd"), (0.3, "rms")])
def test_dynamic_evaluation_at_rate_0_is_the_plain_one_stream_loss(decay, rule):
    """Exactly, segment by segment read as stream_losses reads its chunks; to the last rounding with its default chunks."""
    model, ids = _model(4, embedding=H, tie=True), _text(61, seed=4)
    rms = E.gradient_rms(model, _training_text(200, 8), 5, streams=2) if rule == "rms" else None
    got = E.dynamic_losses(model, ids, UNKNOWN, 0.0, decay, segment=7, rms=rms)
    positions = E.scored_positions(ids, UNKNOWN)
    assert torch.equal(got, stream_losses(model, ids, positions, chunk=7))
    torch.testing.assert_close(got, stream_losses(model, ids, positions), rtol=1e-13, atol=0)


def test_the_rms_prior_is_the_root_mean_square_of_the_training_segments_gradients():
    model, train = _model(5), _training_text(61, 5)
    got = E.gradient_rms(model, train, segment=4, streams=3)
    length = 60 // 3
    x, y = train[:60].view(3, length).T, train[1:61].view(3, length).T
    squares, state, count = [torch.zeros_like(p) for p in model.parameters()], None, 0
    for i in range(0, length, 4):
        logits, new_state = model(x[i : i + 4], state)
        model.zero_grad()
        F.cross_entropy(logits.reshape(-1, V), y[i : i + 4].reshape(-1)).backward()
        squares = [s + p.grad**2 for s, p in zip(squares, model.parameters())]
        state, count = new_state.detach(), count + 1
    for g, s in zip(got, squares):
        torch.testing.assert_close(g, (s / count).sqrt(), rtol=1e-12, atol=1e-15)


def test_the_distance_bands_are_a_scan_back_for_the_context():
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 3, (3000,), generator=gen)
    ids[100:160] = ids[20:80]  # a repeat 80 back; the random rest repeats 4-grams from a few characters back
    positions = torch.arange(1, len(ids))
    got = E.last_occurrence_distance(ids, positions, 4)
    seq = ids.tolist()
    for n, p in enumerate(positions.tolist()):
        want = next((p - q for q in range(p - 1, 3, -1) if seq[q - 4 : q] == seq[p - 4 : p]), 0) if p >= 4 else 0
        assert got[n] == want
    losses = np.arange(len(positions), dtype=float)
    rows = E.by_distance(ids, positions, {"net_loss": losses}, "test", 4)
    assert [r["band"] for r in rows] == ["never", "1-10", "11-100", "101-1000", "1001+"]
    assert sum(r["targets"] for r in rows) == len(positions) and sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["net_loss"] * r["targets"] for r in rows if r["targets"]) == pytest.approx(losses.sum())
    assert rows[2]["targets"] > 0 and rows[0]["targets"] > 0


CHORUS = "\n".join(f"line {i} " + ("la di da" if i % 3 else "unique words here") for i in range(200))


def _run(**settings):
    from gradlab.measures.train import Config
    from gradlab.tasks.lyrics import Lyrics
    from gradlab.training import train

    task = Lyrics.from_text(CHORUS, setting="full", val_fraction=0.2, text_split="blocks", block_lines=10, prefixes=("l",), pred_len=2)
    cfg = Config(task="lyrics", setting="full", val_fraction=0.2, text_split="blocks", block_lines=10, prefixes=("l",), pred_len=2,
                 hidden_size=8, seq_len=16, batch_size=4, steps=6, eval_every=3, optimizer="adam", lr=0.01, **settings)
    return train(cfg, task), task


@pytest.fixture(scope="module")
def runs():
    """A tiny lyrics run with every mode (small grids) and its twin without any."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(E, "DYNAMIC_GRIDS", {"sgd": ((0.1,), (0.0,)), "rms": ((1e-4,), (0.01,))})
        patch.setattr(E, "CACHE_THETAS", (0.5, 1.0))
        return _run(eval_modes=("cache", "dynamic", "mix")), _run()


def test_the_modes_fill_the_runs_row_and_the_by_distance_table_and_every_new_column_is_described(runs):
    from gradlab.measures.train import COLUMNS

    (result, task), (plain, _) = runs
    run = result.run
    for split in ("val", "test"):
        for mode in ("stream", "cache", "dynamic", "dynamic_cache", "mix", "best"):
            assert math.isfinite(run[f"{split}_{mode}_loss"]), (split, mode)
        assert run[f"{split}_mkn5cache_loss"] < run[f"{split}_mkn5_loss"]  # the chorus repeats
    assert run["val_cache_loss"] <= run["val_stream_loss"] + 1e-12  # lambda 0 is in the grid
    assert run["val_mix_loss"] <= min(run["val_stream_loss"], run["val_mkn5_loss"], run["val_mkn5cache_loss"]) + 1e-9  # each alone is a mixture
    assert run["mix_net"] + run["mix_ngram"] + run["mix_ngram_cache"] == pytest.approx(1.0)
    assert run["eval_best_mode"] in ("plain", "cache", "dynamic", "dynamic_cache")
    assert run["val_best_loss"] == min(run["val_stream_loss"], run["val_cache_loss"], run["val_dynamic_loss"], run["val_dynamic_cache_loss"])
    assert run[f"test_{run['eval_best_mode']}_loss".replace("plain", "stream")] == run["test_best_loss"]
    rows = result.tables["by_distance"]
    assert [r["band"] for r in rows] == ["never", "1-10", "11-100", "101-1000", "1001+"]
    assert sum(r["targets"] for r in rows) == task.data.stats["test_targets_scored"]
    for name, column in (("net_loss", "test_stream_loss"), ("ngram_cache_loss", "test_mkn5cache_loss"), ("mix_loss", "test_mix_loss")):
        mean = sum(r[name] * r["targets"] for r in rows if r["targets"]) / sum(r["targets"] for r in rows)
        assert mean == pytest.approx(run[column], rel=1e-12), name
    new = (set(run) - set(plain.run)) | {k for k in run if "cache" in k} | {k for r in rows for k in r} | {"eval_modes"}
    assert new - set(COLUMNS) == set()


def test_the_modes_are_off_unless_asked_for_and_in_none_of_the_books_profiles(runs):
    from gradlab.measures.train import Config
    from gradlab.study import expand, load_study, resolve

    (result, _), (plain, _) = runs
    assert "by_distance" not in plain.tables and "by_distance" in result.tables
    assert not any(k.endswith(("_cache_loss", "_dynamic_loss", "_mix_loss", "_stream_loss")) and "kn" not in k for k in plain.run)
    assert "test_mkn5cache_loss" in plain.run  # counting with a cache is a baseline: always there
    assert plain.run["test_loss"] == result.run["test_loss"]  # the modes change nothing else
    study = load_study("lyrics")
    for profile in ("book", "context", "quick", "full", "gpu", "generalise"):  # the book's regime and the generalise reference: as they were
        points, _ = expand(resolve(study, Config, profile), Config)
        assert all(p.eval_modes == () for p in points), profile


@pytest.mark.parametrize("bad, said", [
    ({"eval_modes": ("cash",)}, "eval_modes takes distinct modes among cache, dynamic, mix"),
    ({"eval_modes": ("cache", "cache")}, "eval_modes takes distinct modes"),
    ({"task": "adding", "eval_modes": ("cache",)}, "task 'adding' has none"),
])
def test_modes_that_cannot_run_are_refused(bad, said):
    from gradlab.measures.train import Config

    with pytest.raises(ValueError, match=said):
        Config(**({"task": "lyrics", "seq_len": 35} | bad)).validate()
