"""The one training loop: clipping, optimisers, telemetry, evaluation, divergence, early stop, determinism,
the lyrics model's behaviour, and the book-style baseline computing the same step."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.baselines import book
from gradlab.cells import convert, create
from gradlab.tasks import build
from gradlab.tasks.base import Batch, loss_of
from gradlab.tasks.lyrics import Lyrics, generate
from gradlab.timing import lm_epoch_flops
from gradlab.training import TrainConfig, build_model, evaluate, train
from gradlab.training.clipping import parse_clip
from gradlab.training.optimizers import make_optimizer

TEXT = "\n".join(["abcd efgh abcd efgh"] * 40 + ["efgh efgh abcd abcd hg"] * 5)  # held out: an unseen line


def _grads(*values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def test_norm_clipping_rescales_the_global_norm_keeping_direction():
    g = _grads([3.0], [[4.0]])
    r = parse_clip("norm:1")(g)
    assert r.clipped and r.norm_before == pytest.approx(5.0) and r.norm_after == pytest.approx(1.0)
    assert g[0].item() == pytest.approx(0.6) and g[1].item() == pytest.approx(0.8)
    r = parse_clip("norm:2")(g)
    assert not r.clipped and g[0].item() == pytest.approx(0.6)


def test_value_and_none_clipping():
    g = _grads([3.0, -0.5])
    r = parse_clip("value:1")(g)
    assert r.clipped and g[0].tolist() == [1.0, -0.5] and r.norm_after == pytest.approx(math.hypot(1, 0.5))
    g = _grads([3.0])
    assert not parse_clip("none")(g).clipped and g[0].item() == 3.0


def test_non_finite_gradient_is_reported_not_scaled():
    g = _grads([float("inf"), 1.0])
    r = parse_clip("norm:1")(g)
    assert math.isinf(r.norm_before) and not r.clipped and g[0][1].item() == 1.0


@pytest.mark.parametrize("spec,message", [
    ("nrom:1", "Unknown clipping strategy 'nrom'.*Did you mean 'norm'"),
    ("norm", "needs a positive number, written 'norm:THETA'"),
    ("norm:-1", "needs a positive number"),
    ("value:abc", "needs a positive number"),
    ("none:3", "'none' takes no threshold"),
])
def test_bad_clip_specs_say_what_is_allowed(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_clip(spec)


def test_rmsprop_uses_decay_0_9():
    """One RMSProp step from a zero average: v = (1 - alpha) g^2, p -= lr g / (sqrt(v) + eps), alpha 0.9."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    p.grad = torch.tensor([0.5, 4.0], dtype=torch.float64)
    make_optimizer("rmsprop", [p], 0.01).step()
    g = torch.tensor([0.5, 4.0], dtype=torch.float64)
    want = torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.01 * g / ((0.1 * g**2).sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="Unknown optimizer 'adan'.*Did you mean 'adam'"):
        make_optimizer("adan", [p], 0.01)


def test_adamw_decays_the_weights_apart_from_the_gradient_step():
    """AdamW's first step: p -= lr (g / (|g| + eps) + wd p): the decay is not fed through the moments (Adam's L2 would be)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    p.grad = torch.tensor([0.5, 4.0], dtype=torch.float64)
    make_optimizer("adamw", [p], 0.01, weight_decay=0.1).step()
    g, p0 = torch.tensor([0.5, 4.0], dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64)
    want = p0 * (1 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=0)


def _lyrics(**params) -> Lyrics:
    return Lyrics.from_text(TEXT, setting="full", val_fraction=0.1, prefixes=("ab",), pred_len=6, **params)


def _cfg(task: Lyrics, epochs: int = 6, eval_epochs: int = 3, **kw) -> TrainConfig:
    """The book's trainer (SGD, norm clipping) on the tiny text, counted in epochs of the task."""
    per = task.steps_per_epoch(4, 8)
    base = dict(task="lyrics", hidden_size=16, seq_len=8, batch_size=4, steps=epochs * per, eval_every=eval_epochs * per,
                optimizer="sgd", lr=100.0, clip="norm:0.01", init="normal")
    return TrainConfig(**(base | kw))


def test_loop_learns_and_records_every_step():
    task = _lyrics()
    r = train(_cfg(task, epochs=12, optimizer="adam", lr=3e-2, clip="norm:1"), task)
    first, last = r.history[0], r.history[-1]
    per = r.run["steps_per_epoch"]
    assert [h["epoch"] for h in r.history] == [3, 6, 9, 12] and [h["step"] for h in r.history] == [3 * per, 6 * per, 9 * per, 12 * per]
    assert last["train_ppl"] < first["train_ppl"] and last["train_ppl"] < 1.5
    assert len(r.steps) == 12 * per and [s["step"] for s in r.steps] == list(range(1, 12 * per + 1))
    assert all(s["grad_norm_post"] <= 1.0 + 1e-6 for s in r.steps)
    assert all(s["clipped"] == (s["grad_norm_pre"] > 1.0) for s in r.steps)
    assert {"step", "epoch", "train_loss", "val_loss", "val_metric", "baseline", "grad_norm", "seconds", "train_ppl", "val_ppl"} <= set(last)
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"])) and last["val_metric"] == last["val_ppl"]
    assert last["train_loss"] == pytest.approx(sum(s["loss"] for s in r.steps[-per:]) / per)  # the epoch just finished
    assert math.isfinite(last["val_ppl"]) and not r.run["diverged"]
    assert {(s["prefix"], s["temperature"]) for s in r.tables["samples"] if s["epoch"] == 12} == {("ab", 0.0), ("ab", 1.0)}


def test_book_clipping_fires_on_every_step():
    """At the book's lr 1e2 and threshold 1e-2 clipping fires from the start (normalised GD, step 1)."""
    task = _lyrics()
    r = train(_cfg(task, hidden_size=256, epochs=1, eval_epochs=1), task)
    assert all(s["clipped"] for s in r.steps) and r.history[0]["clip_rate"] == 1.0
    assert all(s["grad_norm_post"] == pytest.approx(0.01, rel=1e-5) for s in r.steps)


def test_divergence_is_a_result_with_its_step():
    task = _lyrics()
    r = train(_cfg(task, cell="linear", lr=1e30, clip="none", epochs=5, eval_epochs=5), task)
    assert r.run["diverged"] and r.history[-1]["diverged"] and r.run["diverged_step"] == r.steps[-1]["step"]
    assert r.history[-1]["step"] == r.run["diverged_step"] and math.isnan(r.history[-1]["val_loss"])
    assert not math.isfinite(r.steps[-1]["loss"]) or not math.isfinite(r.steps[-1]["grad_norm_pre"])


def test_same_config_same_numbers():
    cfg = _cfg(_lyrics(sampling="random"))
    a, b = train(cfg, _lyrics(sampling="random")), train(cfg, _lyrics(sampling="random"))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(a.history) == strip(b.history) and strip(a.steps) == strip(b.steps) and a.tables == b.tables


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_scratch_and_cudnn_start_from_the_same_function(cell):
    """Same first loss; the fused module's global gradient norm also counts its redundant bias
    (b_ih and b_hh get the same gradient), so its squared norm exceeds scratch's by exactly that."""
    task = _lyrics()
    a = train(_cfg(task, cell=cell, dtype="float64", epochs=1, eval_epochs=1), task)
    b = train(_cfg(task, cell=cell, impl="cudnn", dtype="float64", epochs=1, eval_epochs=1), task)
    assert a.steps[0]["loss"] == pytest.approx(b.steps[0]["loss"], rel=1e-12)
    model = build_model(task.spec, cell, "cudnn", 16, seed=0, dtype=torch.float64, init="normal")
    batch = next(task.stream(torch.Generator(), 4, 8, "cpu"))
    outputs, _ = model(batch.x)
    loss_of(task.spec, outputs, batch.targets()).backward()
    g = model.cell.rnn.bias_hh_l0.grad
    redundant = g[: 2 * 16] if cell == "gru" else g  # the GRU candidate's b_hh is a parameter of its own
    extra = float(redundant.double().pow(2).sum())
    assert b.steps[0]["grad_norm_pre"] ** 2 == pytest.approx(a.steps[0]["grad_norm_pre"] ** 2 + extra, rel=1e-9)


def test_prefix_outside_vocabulary_fails_before_training():
    task = Lyrics.from_text(TEXT, setting="full", prefixes=("分开",))
    with pytest.raises(ValueError, match="prefix '分开' has characters outside the vocabulary"):
        train(_cfg(task), task)


def test_generation_greedy_and_sampled():
    task = _lyrics()
    model = build_model(task.spec, "gru", "scratch", 8, seed=0)
    greedy = generate(model, task.vocab, "ab", 10)
    assert greedy.startswith("ab") and len(greedy) == 12 and greedy == generate(model, task.vocab, "ab", 10)
    s1 = generate(model, task.vocab, "ab", 30, 1.0, torch.Generator().manual_seed(1))
    s2 = generate(model, task.vocab, "ab", 30, 1.0, torch.Generator().manual_seed(1))
    assert s1 == s2 and set(s1) <= set(task.vocab.idx_to_char)


def test_untrained_perplexity_is_near_uniform():
    task = _lyrics()
    model = build_model(task.spec, "lstm", "scratch", 8, seed=0)
    scores = evaluate(model, task, task.held_out(4, 8, "cpu"))
    assert scores["val_metric"] == pytest.approx(len(task.vocab), rel=0.01)


OOV_TEXT = "\n".join(["abcd efgh abcd efgh"] * 40 + ["efgh xefgh abcd", "abcd ab zz", "hgfe dcba q"])  # x, z, q unseen


@pytest.mark.parametrize("batch_size,length,eval_streams", [(4, 8, 0), (3, 5, 0), (1, 7, 0), (16, 3, 0), (16, 3, 1), (4, 3, 2)])
def test_evaluation_scores_every_held_out_target_once(batch_size, length, eval_streams):
    """Held-out perplexity by an independent oracle: one stream, one character at a time, state carried,
    each in-vocabulary target scored once and out-of-vocabulary characters read as the zero input. The text is
    cut into batch_size streams (eval_streams 0) or eval_streams (1: the whole text read from its start)."""
    task = Lyrics.from_text(OOV_TEXT, setting="full", val_fraction=0.1, eval_streams=eval_streams)
    ids, vocab = task.data.val_ids, task.vocab
    assert (ids == vocab.unknown_id).sum() == 4 and task.stats()["val_targets_oov"] == 4
    batches = task.held_out(batch_size, length, "cpu")
    targets = torch.cat([b.y.T.reshape(-1) for b in batches])
    assert int((targets != -100).sum()) == task.stats()["val_targets_scored"] == len(ids) - 1 - 4
    model = build_model(task.spec, "gru", "scratch", 8, seed=1, init="xavier", dtype=torch.float64)
    got = evaluate(model, task, batches)["val_loss"]
    p = {n: q.detach() for n, q in model.cell.named_parameters()}
    streams = max(1, min(eval_streams or batch_size, (len(ids) - 1) // length))
    assert len(batches[0].x.T) == streams
    per = -(-(len(ids) - 1) // streams)
    total, count = 0.0, 0
    for s in range(streams):  # stream s reads ids[s*per : (s+1)*per] from a zero state
        h = torch.zeros(8, dtype=torch.float64)
        for t in range(s * per, min((s + 1) * per, len(ids) - 1)):
            x = torch.zeros(len(vocab), dtype=torch.float64)
            if ids[t] < len(vocab):
                x[ids[t]] = 1.0
            z = torch.sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
            r = torch.sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
            h = z * h + (1 - z) * torch.tanh(x @ p["W_xh"] + p["b_h"] + r * (h @ p["W_hh"] + p["b_hh"]))
            if ids[t + 1] < len(vocab):
                total -= torch.log_softmax(h @ model.W_hq.detach() + model.b_q.detach(), 0)[ids[t + 1]].item()
                count += 1
    assert count == task.stats()["val_targets_scored"]
    assert got == pytest.approx(total / count, rel=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unknown_token_is_the_zero_input_in_both_impls(cell):
    a = create(cell, "scratch", 5, 4, seed=0, init="xavier", dtype=torch.float64)
    b = convert(a, "cudnn")
    ids = torch.tensor([[1, 5], [5, 0], [3, 5]])  # 5: one past the vocabulary
    one_hot = torch.nn.functional.one_hot(ids, 6)[..., :5].double()  # the unknown id has no bit set
    want, _ = a(one_hot)
    for m in (a, b):
        got, _ = m(ids)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_only_the_scored_steps_reach_the_loss():
    """The model's output at the scored steps equals its full output there, and targets elsewhere are never read."""
    task = build("recall", {})
    batch = task.sample(torch.Generator().manual_seed(0), 6, 7)
    model = build_model(task.spec, "gru", "scratch", 10, seed=0, dtype=torch.float64)
    full, _ = model(batch.x)
    scored, _ = model(batch.x, None, batch.mask)
    torch.testing.assert_close(scored, full[batch.mask], rtol=0, atol=0)
    noisy = Batch(batch.x, batch.y.clone(), batch.mask)
    noisy.y[:-1] = 3  # unscored steps
    assert loss_of(task.spec, scored, noisy.targets()).item() == loss_of(task.spec, scored, batch.targets()).item()


def test_synthetic_run_stops_once_solved_and_records_the_step():
    from gradlab.measures.train import Config

    cfg = Config(task="recall", cell="lstm", hidden_size=16, seq_len=3, batch_size=32, optimizer="adam", lr=0.03,
                 steps=400, eval_every=20, stop_when_solved=True, n_symbols=4, eval_size=200)
    r = train(cfg)
    solved = r.run["solved_step"]
    assert solved is not None and solved % 20 == 0 and r.history[-1]["step"] == solved == len(r.steps) < 400
    assert r.history[-1]["val_loss"] < 0.1 * math.log(4) == pytest.approx(r.run["baseline"] * 0.1)
    assert all(h["val_loss"] >= 0.1 * r.run["baseline"] for h in r.history[:-1])


RECALL = dict(task="recall", cell="lstm", hidden_size=16, seq_len=3, batch_size=32, optimizer="adam", lr=0.03, steps=400, eval_every=20,
              n_symbols=4, eval_size=200, test_size=2000)


def _tables(result, cfg) -> dict:
    """One run's tables as a run folder holds them (its settings in every row), for the derived tables."""
    import dataclasses

    import pandas as pd

    from gradlab.measures.train import tables_of

    config = dataclasses.asdict(cfg)
    return {name: pd.DataFrame([config | row | {"point": "p0"} for row in rows]) for name, rows in tables_of(result, cfg).items()
            if name in ("results", "runs", "steps")}


def test_a_run_solved_on_validation_but_not_on_the_test_set_reads_not_solved():
    """The verdict is the test set's: a run whose validation met the rule (and stopped it) but whose fresh test
    sequences say otherwise (here the test answers are another task's: shuffled) is not solved in final, by_setting
    or longest_lag, while val_solved keeps what validation said. Fails if the verdict read solved_step again."""
    from gradlab.derived.train import derive
    from gradlab.measures.train import Config

    cfg = Config(stop_when_solved=True, keep_best=True, **RECALL)
    task = cfg.make_task()
    honest = task.test_batches

    def shuffled(length, device):
        for b in honest(length, device):
            yield Batch(b.x, b.y[:, torch.randperm(b.y.shape[1], generator=torch.Generator().manual_seed(0))], b.mask)

    task.test_batches = shuffled
    r = train(cfg, task=task)
    run = r.run
    assert run["solved_step"] is not None and run["val_solved"] and run["verdict_from"] == "test"
    assert not run["test_solved"] and run["test_error_rate"] > 0.5 and run["test_sequences"] == 2000
    columns = list(Config.__dataclass_fields__)
    d = derive(_tables(r, cfg), columns)
    f = d["final"].iloc[0]
    assert f["val_solved"] and f["val_steps_to_solve"] == run["kept_step"]
    assert not f["solved"] and math.isnan(f["steps_to_solve"]) and f["verdict_from"] == "test"
    assert d["by_setting"].iloc[0]["seeds_solved_of"] == "0/1" and d["by_setting"].iloc[0]["val_seeds_solved_of"] == "1/1"
    assert math.isnan(d["longest_lag"].iloc[0]["longest_lag_solved"]) and d["longest_lag"].iloc[0]["val_longest_lag_solved"] == 3


def test_the_kept_model_is_judged_once_on_the_test_set_and_steps_to_solve_is_its_step():
    """The test columns are the kept (best-validation) model's scores on the fresh test set, against the memoryless
    loss of that set itself; steps to solve is the kept checkpoint's step, not the first evaluation under the rule."""
    from gradlab.derived.train import derive
    from gradlab.measures.train import Config
    from gradlab.training.loop import evaluating

    cfg = Config(keep_best=True, **(RECALL | {"steps": 200}))
    r = train(cfg)
    run = r.run
    assert run["kept"] == "best" and run["kept_step"] == run["best_step"] == min(r.history, key=lambda h: h["val_loss"])["step"]
    task = cfg.make_task()
    with evaluating(r.model):
        again = evaluate(r.model, task, list(task.test_batches(3, "cpu")))
    assert run["test_loss"] == pytest.approx(again["val_loss"], rel=1e-6) and run["test_error_rate"] == pytest.approx(1 - again["val_metric"])
    assert run["test_baseline"] == pytest.approx(math.log(4)) and run["test_loss_ratio"] == pytest.approx(run["test_loss"] / math.log(4))
    assert run["test_solved"] == (run["test_error_rate"] < 0.01)
    f = derive(_tables(r, cfg), list(Config.__dataclass_fields__))["final"].iloc[0]
    assert f["solved"] == run["test_solved"]
    if f["solved"]:
        assert f["steps_to_solve"] == run["kept_step"]
    adding = train(Config(task="adding", cell="gru", hidden_size=8, seq_len=6, batch_size=16, steps=20, eval_every=10, eval_size=100, test_size=500))
    assert adding.run["test_baseline"] != pytest.approx(1 / 6, rel=1e-3)  # the memoryless MSE of these 500 test sequences, not the theory's
    assert 0 <= adding.run["test_hs_error_rate"] <= 1 and "test_hs_solved" in adding.run and adding.run["kept"] == "last"


def test_a_solved_run_stops_once_validation_meets_the_rule_with_the_margin_to_spare():
    """stop_margin 0.5: the run goes on past its first solved evaluation until validation's error rate is under half the
    rule's 1% (0 of 200 wrong), the same run as with margin 1 up to where that one stopped."""
    from gradlab.measures.train import Config

    quick = RECALL | {"lr": 0.01, "eval_every": 5}  # seed 0: 1 of 200 wrong at step 25 (solved), 0 at step 30
    at_rule = train(Config(stop_when_solved=True, **quick))
    spare = train(Config(stop_when_solved=True, stop_margin=0.5, **quick))
    first = at_rule.run["solved_step"]
    assert at_rule.run["stopped_solved_step"] == first == at_rule.run["steps_done"]
    stop = spare.run["stopped_solved_step"]
    assert stop is not None and stop > first == spare.run["solved_step"] and spare.run["steps_done"] == stop
    assert [h["val_loss"] for h in spare.history[: len(at_rule.history)]] == [h["val_loss"] for h in at_rule.history]
    assert spare.history[-1]["error_rate"] < 0.005 and all(h["error_rate"] >= 0.005 for h in spare.history[:-1])
    with pytest.raises(ValueError, match="stop_margin must be in"):
        Config(stop_margin=0.0).validate()


def test_a_task_parameter_of_another_task_is_an_error():
    from gradlab.measures.train import Config

    with pytest.raises(ValueError, match="n_symbols does not apply to task 'adding'; it takes: eval_seed, eval_size"):
        Config(task="adding", n_symbols=4).validate()
    with pytest.raises(ValueError, match="task 'temporal_order' needs seq_len >= 4"):
        Config(task="temporal_order", seq_len=3).validate()
    with pytest.raises(ValueError, match="Unknown task 'adding2'.*Did you mean 'adding'"):
        Config(task="adding2").validate()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_book_style_code_computes_the_same_step(cell):
    """The seed's per-gate one-hot code and gradlab's scratch model: same loss, same gradients, same update."""
    task = _lyrics()
    model = build_model(task.spec, cell, "scratch", 12, seed=3, init="xavier", dtype=torch.float32)
    params = book.params_from(model)
    ids = task.data.train_ids
    x, y = ids[:40].view(4, 10).T, ids[1:41].view(4, 10).T  # (T, B)
    logits, _ = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    before = [p.detach().clone() for p in params]
    book_loss, _ = book.train_step(cell, params, x, y, book.init_state(cell, 4, 12, "cpu"), lr=1.0, theta=1e9)
    assert book_loss == pytest.approx(loss.item(), rel=1e-6)
    names = dict(model.cell.named_parameters()) | {"W_hq": model.W_hq, "b_q": model.b_q}
    order = [n for n in names if n != "b_hh"]
    for name, b0, b1 in zip(order, before, params):
        torch.testing.assert_close(b0 - b1, names[name].grad, rtol=1e-4, atol=1e-7)  # lr 1: update == gradient


@pytest.mark.parametrize("style,cell", [("gradlab", "rnn"), ("gradlab", "gru"), ("gradlab", "lstm"), ("book", "gru"), ("book", "lstm")])
def test_flop_formula_matches_torchs_flop_counter(style, cell):
    """lm_epoch_flops for one batch against FlopCounterMode counting a real training step (state carried
    in from the previous batch, as in an epoch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from gradlab.training.clipping import parse_clip
    from gradlab.training.loop import train_step

    task = _lyrics()
    B, T, H = 4, 6, 12
    batches = task.stream(torch.Generator(), B, T, "cpu")
    first, second = next(batches), next(batches)
    model = build_model(task.spec, cell, "scratch", H, seed=0, init="normal")
    if style == "gradlab":
        params = list(model.parameters())
        opt, clip = make_optimizer("sgd", params, 1.0), parse_clip("norm:0.01")
        _, _, state, _, _ = train_step(model, task.spec, first, None, opt, clip, params)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        with FlopCounterMode(display=False) as counter:
            train_step(model, task.spec, second, state, opt, clip, params)
    else:
        params = book.params_from(model)
        state = book.init_state(cell, B, H, "cpu")
        with FlopCounterMode(display=False) as counter:
            book.train_step(cell, params, second.x, second.y, state, 1.0, 0.01)
    assert counter.get_total_flops() == lm_epoch_flops(style, cell, 1, T, B, len(task.vocab), H)


def test_context_analysis_against_per_position_oracle():
    """The cut context's loss, the full-context and window losses, the replaced context's, and the input gradient
    k characters back, recomputed one position at a time from the text itself (token ids through the scratch twin)."""
    from gradlab.context import profile, stream_losses

    task = Lyrics.from_text(OOV_TEXT, setting="full", val_fraction=0.1)
    model = build_model(task.spec, "gru", "cudnn", 6, seed=2, init="xavier", dtype=torch.float64)
    items = task.context_items(model, [], 7, 6)
    ids = task.data.val_ids
    pos = task._positions(ids, 6, 7)
    assert len(pos) == 7 and (ids[pos] != task.vocab.unknown_id).all() and (pos >= 6).all()
    scratch = convert(model.cell, "scratch")

    def loss_at(p: int, inputs: torch.Tensor) -> float:
        out, _ = scratch(inputs[:, None])
        return -torch.log_softmax(model.readout(out[-1:])[0, 0], 0)[ids[p]].item()

    full = [loss_at(p, ids[:p]) for p in pos.tolist()]  # the whole text before p: the full context
    item = items["held out"][0]
    torch.testing.assert_close(stream_losses(model, item.text, item.positions), torch.tensor(full, dtype=torch.float64), rtol=1e-10, atol=0)
    window = [loss_at(p, ids[p - 6 : p]) for p in pos.tolist()]
    rows = profile(model, task.spec, items["held out"], [1, 3, 6])
    for row in [r for r in rows if r["probe"] == "truncate"]:
        want = sum(loss_at(p, ids[p - row["k"] : p]) for p in pos.tolist()) / len(pos)  # the k characters before position p
        assert row["loss"] == pytest.approx(want, rel=1e-10) and row["loss_full"] == pytest.approx(sum(full) / len(full), rel=1e-12)
        assert row["gap"] == pytest.approx(want * len(pos) / sum(full) - 1, rel=1e-9) and row["gap_lo"] <= row["gap"] <= row["gap_hi"]
    span = len(ids) - 6  # positions 6 .. len - 1 have a whole window: the donor is the one half of them on, wrapping round
    donor = [6 + (p - 6 + span // 2) % span for p in pos.tolist()]
    assert all(abs(q - p) >= 6 + 6 for p, q in zip(pos.tolist(), donor))  # far from the item's window, never the next position's
    for row in [r for r in rows if r["probe"] == "replace"]:  # the 6 - k characters before the last k from the donor's window
        k, following = row["k"], donor
        want = sum(loss_at(p, torch.cat([ids[q - 6 : q - k], ids[p - k : p]])) for p, q in zip(pos.tolist(), following)) / len(pos)
        assert row["loss"] == pytest.approx(want, rel=1e-10) and row["loss_ref"] == pytest.approx(sum(window) / len(window), rel=1e-12)
    tables = task.analyse(model, (1, 3, 6), 7)
    want = torch.zeros(6, dtype=torch.float64)
    for p in pos.tolist():
        proj = scratch.project(ids[p - 6 : p][:, None]).detach().requires_grad_()
        h = scratch.init_state(1)
        for inp in scratch.per_step(proj):
            h = scratch.step(inp, h, scratch.recurrent())
        loss = -torch.log_softmax(model.readout(h[None])[0, 0], 0)[ids[p]]
        (g,) = torch.autograd.grad(loss, proj)
        want += g[:, 0].pow(2).sum(-1)
    got = torch.tensor([r["input_grad_norm"] for r in tables["context_grads"]], dtype=torch.float64)
    assert [r["distance"] for r in tables["context_grads"]] == [6, 5, 4, 3, 2, 1]
    torch.testing.assert_close(got, (want / len(pos)).sqrt(), rtol=1e-8, atol=0)


def test_adaptive_and_mean_clipping_follow_the_norms_seen_so_far():
    """adaptive:P clips at the P-th percentile (numpy's, linear) of earlier norms; mean:K at K times the mean
    of the earlier norms it did not clip; neither clips at the first step (nothing seen yet)."""
    import numpy as np

    norms = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    adaptive, mean = parse_clip("adaptive:50"), parse_clip("mean:1.5")
    kept: list[float] = []  # the norms mean:K has not clipped: 3, 1, 1.5, 2.6 (4, 9 and 5 are clipped)
    for k, n in enumerate(norms):
        mean_theta = 1.5 * np.mean(kept) if kept else np.inf
        for clipper, theta in ((adaptive, np.percentile(norms[:k], 50) if k else np.inf), (mean, mean_theta)):
            g = _grads([n * 0.6], [n * 0.8])
            r = clipper(g)
            assert r.threshold == pytest.approx(theta) and r.clipped == (n > theta)
            assert r.norm_after == pytest.approx(min(n, theta)) and r.cosine == pytest.approx(1.0, abs=1e-15)
        if n <= mean_theta:
            kept.append(n)
    assert kept == [3.0, 1.0, 1.5, 2.6]
    with pytest.raises(ValueError, match="adaptive needs a percentile in \\(0, 100\\]"):
        parse_clip("adaptive:150")


def test_value_clipping_turns_the_gradient_and_says_by_how_much():
    g = _grads([3.0, 0.5], [[-4.0]])
    r = parse_clip("value:1")(g)
    unclipped, clipped = torch.tensor([3.0, 0.5, -4.0], dtype=torch.float64), torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)
    assert r.cosine == pytest.approx(float(unclipped @ clipped / unclipped.norm() / clipped.norm()), rel=1e-12) and r.cosine < 0.99


def test_cosine_of_a_rescaled_float32_gradient_is_one_to_float64_precision():
    """A norm-clipped float32 gradient points the same way: every sum in float64 (float32 norms put it 8e-6 above 1)."""
    from gradlab.training.clipping import cosine

    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(512, 1024, generator=gen) * 37.0 for _ in range(3)]  # (512, 1024) float32, norm ~ 4.6e4
    assert abs(cosine(a, [x * 0.013 for x in a]) - 1.0) < 1e-12
    assert cosine(a, [-x for x in a]) == pytest.approx(-1.0, abs=1e-12)


def test_every_step_records_the_update_it_made():
    """Plain SGD moves the weights by exactly lr times the clipped gradient: ||update|| = lr x grad_norm_post."""
    task = _lyrics()
    r = train(_cfg(task, epochs=1, eval_epochs=1, lr=2.0, clip="norm:0.05", dtype="float64"), task)
    for s in r.steps:
        assert s["update_norm"] == pytest.approx(2.0 * s["grad_norm_post"], rel=1e-9)
        assert s["clip_threshold"] == 0.05 and (not s["clipped"] or s["clip_cosine"] == pytest.approx(1.0, abs=1e-12))


@pytest.mark.parametrize("factor,last,spike_steps,rule", [
    (1000, 144, 400, "median loss of the last 50 steps"),  # the 25th high step in a row: now the window's median is high
    (1000, None, 24, None),  # 24 high steps in 50 leave the median where it was: clipped runs recover from spikes
    (1e6, None, 1, None),  # one spike, however high, is no divergence
])
def test_a_median_loss_far_above_guessing_is_a_divergence(factor, last, spike_steps, rule):
    """Reported losses from step 120 on multiplied (for spike_steps steps; gradients untouched): the run diverges
    at the first step where the median of the last 50 losses is above 3 x the loss of guessing (7/6 on adding,
    predicting 0), recorded with its rule, before any NaN; fewer high steps than half the window never do."""
    from gradlab.measures.train import Config
    from gradlab.training import loop

    cfg = Config(task="adding", cell="rnn", hidden_size=16, seq_len=10, batch_size=16, optimizer="sgd", lr=0.05, clip="none",
                 steps=400, eval_every=400, eval_size=50)
    calm = train(cfg)
    assert not calm.run["diverged"]
    losses = [s["loss"] for s in calm.steps]
    real, calls = loop.loss_of, []

    def spiky(spec, outputs, targets, reduction="mean"):
        value = real(spec, outputs, targets, reduction)
        if outputs.requires_grad:  # a training step (evaluation runs without grad)
            calls.append(1)
            if 120 <= len(calls) < 120 + spike_steps:
                return value + (factor - 1) * value.detach()  # the loss reported, not the gradient it gives
        return value

    loop.loss_of = spiky
    try:
        r = train(cfg)
    finally:
        loop.loss_of = real
    assert [s["loss"] for s in r.steps[:119]] == losses[:119]
    if last is None:
        assert not r.run["diverged"] and len(r.steps) == 400
    else:
        assert r.run["diverged"] and r.run["diverged_step"] == last == len(r.steps)
        assert r.run["diverged_reason"].startswith(rule) and r.run["diverged_reason"].endswith("above 3 x the loss of guessing (1.167)")


def test_the_divergence_rule_in_numbers():
    """At ln 1,027 (lyrics' uniform guess) a median of 53.8 nats (perplexity 2.4e23) is a divergence; the old ceiling of
    100 x the 5.6-nat baseline (560 nats) let it pass. Just under 3 x the guess, or a short window, is not."""
    from collections import deque

    from gradlab.training.loop import divergence

    guess = math.log(1027)
    assert divergence(deque([53.8] * 50), guess).startswith("median loss of the last 50 steps 53.8 above 3 x")
    assert divergence(deque([53.8] * 49), guess) is None  # fewer than 50 steps: the median is not yet defined by the rule
    assert divergence(deque([3 * guess * 0.999] * 50), guess) is None
    assert divergence(deque([3 * guess * 1.001] * 50), guess) is not None
    assert divergence(deque([5.0] * 26 + [1e30] * 24), guess) is None  # 24 spikes: the median stays at 5


def test_guessing_losses_are_exact():
    from gradlab.tasks import build

    assert build("adding", {}).guess_loss(100) == pytest.approx(7 / 6)
    gen = torch.Generator().manual_seed(0)
    y = build("adding", {}).sample(gen, 200_000, 10).targets()
    assert float((y ** 2).mean()) == pytest.approx(7 / 6, rel=0.01)  # predicting 0, measured
    assert build("copy", {}).guess_loss(50) == pytest.approx(math.log(9))
    assert build("temporal_order", {}).guess_loss(50) == pytest.approx(math.log(4))


def test_the_lyrics_run_that_ended_at_perplexity_2e23_is_a_divergence(corpus_zip):
    """The clipping study's lyrics point with mean:2 clipping at lr 100 ended at training perplexity 2.4e23 and was 'not
    diverged' under the old rule: under this one it diverges, with the median rule's reason."""
    import dataclasses

    from gradlab.runner import plan

    (cfg,) = plan("clipping", "quick", ["task=lyrics", "clip=mean:2", "lr=100", f"corpus={corpus_zip}"], "cpu").points
    r = train(dataclasses.replace(cfg, pred_len=0))
    assert r.run["diverged"] and r.run["diverged_reason"].startswith("median loss of the last 50 steps")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("task", ["adding", "copy"])
def test_every_probe_and_measure_of_a_training_runs_in_both_precisions_solo_and_in_an_ensemble(dtype, task):
    """The flow probe, the context analysis and the evaluations on a task with real-valued inputs (adding) and
    one with token ids (copy), float32 and float64: a float64 run of adding failed at its first probe (the
    task's float32 inputs into a float64 cell). Solo and ensemble give the same tables."""
    from gradlab.training.ensemble import train_ensemble

    Config = __import__("gradlab.measures.train", fromlist=["Config"]).Config
    extra = {"copy_len": 2} if task == "copy" else {}
    cfgs = [Config(task=task, cell=cell, seq_len=6, hidden_size=5, batch_size=4, steps=4, eval_every=2, eval_size=8, dtype=dtype,
                   probe_steps=(0, 2), probe_size=3, context_lengths=(1, 3), context_positions=5, seed=1, **extra)
            for cell in ("lstm",)] * 1
    cfgs += [Config(**{**cfgs[0].__dict__, "seed": 2})]
    solo = [train(c) for c in cfgs]
    together = train_ensemble(cfgs)
    for a, b in zip(solo, together):
        flow = a.tables["flow"]
        assert {r["wrt"] for r in flow} == {"h", "c"} and {r["step"] for r in flow} == {0, 2}
        assert all(math.isfinite(r["state_grad_norm"]) for r in flow) and a.tables["context"]
        assert [r["state_grad_norm"] for r in flow] == pytest.approx([r["state_grad_norm"] for r in b.tables["flow"]], rel=1e-5)
        assert [r["val_loss"] for r in a.history] == pytest.approx([r["val_loss"] for r in b.history], rel=1e-5)


def test_by_frequency_bands_add_up_to_the_one_stream_loss_and_the_ngram_loss():
    """The bands cover every scored target once: their shares sum to 1, share-weighted losses give the network's
    loss on the held-out text read as one stream (evaluate with eval_streams 1) and the modified 5-gram's loss
    the data reports (val_mkn5_loss), and the gap parts add up to the difference."""
    task = Lyrics.from_text(OOV_TEXT, setting="full", val_fraction=0.1, eval_streams=1)
    model = build_model(task.spec, "gru", "scratch", 8, seed=1, init="xavier", dtype=torch.float64)
    rows = task.by_frequency(model)
    assert {r["split"] for r in rows} == {"validation"} and sum(r["targets"] for r in rows) == task.stats()["val_targets_scored"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, rel=1e-12)
    net = sum(r["share"] * r["net_loss"] for r in rows if r["targets"])
    gram = sum(r["share"] * r["ngram_loss"] for r in rows if r["targets"])
    assert net == pytest.approx(evaluate(model, task, task.held_out(4, 5, "cpu"))["val_loss"], rel=1e-9)
    assert gram == pytest.approx(task.stats()["val_mkn5_loss"], rel=1e-12)
    assert sum(r["gap_part"] for r in rows) == pytest.approx(net - gram, rel=1e-9)
    counts = {c: task.data.train_text.count(c) for c in set(task.data.train_text)}
    seen = [counts[task.vocab.idx_to_char[i]] for i in task.data.val_ids.tolist()[1:] if i != task.vocab.unknown_id]
    lows = [r["count_from"] for r in rows] + [float("inf")]
    assert [r["targets"] for r in rows] == [sum(lo <= c < hi for c in seen) for lo, hi in zip(lows, lows[1:])]
    assert sum(r["targets"] > 0 for r in rows) >= 2  # the text spans bands
