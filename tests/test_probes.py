"""The gradient-flow instruments against exact answers: rho^k oracles, autograd's Jacobian, impl parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gradlab.cells import create, parameters_in_scratch_layout
from oracles import run_seed, seed_unroll
from gradlab.derived.gradient_decay import decay_rates
from gradlab.measures.gradient_decay import Config, run
from gradlab.probes import hidden_grad_norms, input_grad_norms, jacobian_norms

F64 = torch.float64


def _data(T, B, I, H, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, I, generator=gen, dtype=F64), torch.randn(B, H, generator=gen, dtype=F64)


@pytest.mark.parametrize("rho", [0.9, 1.0, 1.1])
def test_linear_orthogonal_cell_gives_rho_to_the_k(rho):
    T, B, I, H = 60, 3, 4, 8
    cell = create("linear", "scratch", I, H, init="orthogonal", init_scale=rho, seed=1, dtype=F64)
    x, g = _data(T, B, I, H)
    k = torch.arange(T - 1, -1, -1, dtype=F64)  # distance of step t from the loss
    hidden = hidden_grad_norms(cell, x, g)["h"]
    torch.testing.assert_close(hidden / hidden[-1], rho**k, rtol=1e-10, atol=0)
    torch.testing.assert_close(jacobian_norms(cell, x), rho**k, rtol=1e-10, atol=0)  # every singular value is rho^k


def _step_from(cell, x, t, state):
    """Steps t+1 .. T-1 of the cell from a given state handed out by step t."""
    inputs, ctx = cell.prepare(x)
    for inp in list(inputs)[t + 1 :]:
        state = cell.step(inp, state, ctx)
    return state


def _split(v, cell):
    return (v[..., : cell.hidden_size], v[..., cell.hidden_size :]) if cell.cell == "lstm" else v


def _join(s):
    return torch.cat(s, dim=-1) if isinstance(s, tuple) else s


def _states(cell, x):
    inputs, ctx = cell.prepare(x)
    state, out = cell.init_state(x.shape[1]), []
    for inp in inputs:
        state = cell.step(inp, state, ctx)
        out.append(state)
    return out


CASES = [("rnn", "scratch", None), ("gru", "scratch", "reset_after"), ("gru", "scratch", "reset_before"), ("lstm", "scratch", None),
         ("rnn", "cudnn", None), ("gru", "cudnn", None), ("lstm", "cudnn", None)]


@pytest.mark.parametrize("cell_name,impl,variant", CASES)
def test_jacobian_probe_matches_autograd_functional_jacobian(cell_name, impl, variant):
    T, B, I, H = 7, 2, 3, 4
    cell = create(cell_name, impl, I, H, variant=variant, init="xavier", init_scale=1.3, seed=2, dtype=F64)
    x, _ = _data(T, B, I, H)
    states = _states(cell, x)
    expected = []
    for t in range(T):
        s_t = _join(states[t]).detach()
        jac = torch.autograd.functional.jacobian(lambda s: _join(_step_from(cell, x, t, _split(s, cell))), s_t)  # (B, D, B, D)
        blocks = torch.stack([jac[b, :, b, :] for b in range(B)])  # sequences do not mix
        expected.append(torch.linalg.matrix_norm(blocks, ord=2).pow(2).mean().sqrt())
    torch.testing.assert_close(jacobian_norms(cell, x), torch.stack(expected), rtol=1e-10, atol=1e-14)


def _seed_grads(cell, x, loss_of_hs):
    """Per step, dL/dh_t and (LSTM) the total dL/dc_t by autograd through the seed's equations written out
    (tests/oracles.py: no code shared with the cells), from the cell's parameters in the scratch layout."""
    params = {k: v.detach().requires_grad_() for k, v in parameters_in_scratch_layout(cell).items()}
    hs, cs = seed_unroll(cell.cell, cell.variant, params, x)
    loss_of_hs(hs).backward()
    zero = lambda v: torch.zeros_like(v) if v.grad is None else v.grad  # noqa: E731
    return {"h": [zero(h) for h in hs], **({"c": [zero(c) for c in cs]} if cs else {})}


def _rms(grad):
    return grad.pow(2).sum(-1).mean().sqrt()


@pytest.mark.parametrize("cell_name,impl,variant", CASES)
def test_hidden_probe_matches_autograd_on_each_step(cell_name, impl, variant):
    """||dL/dh_t|| and the LSTM's total ||dL/dc_t|| against autograd through the seed's equations, loss on the last step."""
    T, B, I, H = 6, 3, 3, 5
    cell = create(cell_name, impl, I, H, variant=variant, init="xavier", seed=4, dtype=F64)
    x, g = _data(T, B, I, H, seed=1)
    got = hidden_grad_norms(cell, x, g)
    want = _seed_grads(cell, x, lambda hs: (hs[-1] * g).sum())
    assert set(got) == set(want)
    for name, grads in want.items():
        torch.testing.assert_close(got[name], torch.stack([_rms(v) for v in grads]), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("impl", ["scratch", "cudnn"])
def test_the_cell_states_gradient_is_the_total_derivative_by_finite_differences(impl):
    """dL/dc_t by central differences on c_t (shifted before h_t is formed from it), for a loss on the last
    step: at the last step it is o tanh'(c) g, not 0 (the carried part alone would read 0 there)."""
    T, B, I, H = 5, 2, 3, 4
    cell = create("lstm", impl, I, H, init="xavier", seed=7, dtype=F64)
    x, g = _data(T, B, I, H, seed=2)
    params = {k: v.detach() for k, v in parameters_in_scratch_layout(cell).items()}
    loss = lambda shift: float((seed_unroll("lstm", None, params, x, shift)[0][-1] * g).sum())  # noqa: E731
    eps, fd = 1e-6, torch.zeros(T, B, H, dtype=F64)
    for t in range(T):
        for b in range(B):
            for j in range(H):
                e = torch.zeros(B, H, dtype=F64)
                e[b, j] = eps
                fd[t, b, j] = (loss({t: e}) - loss({t: -e})) / (2 * eps)
    got = hidden_grad_norms(cell, x, g)["c"]
    torch.testing.assert_close(got, fd.pow(2).sum(-1).mean(-1).sqrt(), rtol=1e-7, atol=1e-12)
    assert got[-1] > 0.05  # the path through h_T-1 alone


@pytest.mark.parametrize("cell_name", ["rnn", "gru", "lstm"])
def test_scratch_and_cudnn_give_the_same_curves(cell_name, device):
    x, g = (t.to(device) for t in _data(40, 3, 4, 6, seed=3))
    a = create(cell_name, "scratch", 4, 6, init="orthogonal", init_scale=1.1, seed=5, dtype=F64, device=device)
    b = create(cell_name, "cudnn", 4, 6, init="orthogonal", init_scale=1.1, seed=5, dtype=F64, device=device)
    for name, va in hidden_grad_norms(a, x, g).items():
        torch.testing.assert_close(va, hidden_grad_norms(b, x, g)[name], rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(input_grad_norms(a, x, g), input_grad_norms(b, x, g), rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(jacobian_norms(a, x), jacobian_norms(b, x), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("cell_name,impl,variant", CASES)
def test_input_probe_matches_the_seed_equations(cell_name, impl, variant):
    """||dL/dx_t|| against autograd through the seed's equations written per gate (tests/oracles.py),
    which share no code with the cells; non-zero biases exercise every path."""
    x, g = _data(9, 2, 3, 4)
    cell = create(cell_name, impl, 3, 4, variant=variant, init="xavier", seed=0, dtype=F64)
    with torch.no_grad():
        for p in cell.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
    params = {k: v.detach() for k, v in parameters_in_scratch_layout(cell).items()}
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((run_seed(cell_name, variant, params, xr) * g).sum(), xr)
    torch.testing.assert_close(input_grad_norms(cell, x, g), grad.pow(2).sum(-1).mean(-1).sqrt(), rtol=1e-10, atol=1e-14)


def test_measure_rows_and_float32_underflow_is_recorded_as_zero():
    rows = run(Config(cell="linear", seq_len=200, init_scale=0.5, dtype="float32", hidden_size=4, input_size=2, batch_size=2))["results"]
    df = pd.DataFrame(rows)
    assert list(df.columns) == ["wrt", "t", "distance", "grad_norm", "backend"]
    assert (df["distance"] == 199 - df["t"]).all()
    assert df["grad_norm"].iloc[-1] == pytest.approx(1 / np.sqrt(1), rel=1e-6)  # unit loss direction per row
    far = df[df["distance"] > 160]["grad_norm"]
    assert (far == 0).all() and np.isfinite(df["grad_norm"]).all()  # 0.5^160 underflows float32: 0, not NaN
    assert (run(Config(cell="lstm", probe="hidden", seq_len=4, hidden_size=3, input_size=2, batch_size=2))["results"][0]["wrt"]) == "h"


def test_decay_rates_oracle():
    d = np.arange(50)
    df = pd.DataFrame({"cell": "x", "distance": np.tile(d, 2), "seed": np.repeat([0, 1], 50), "grad_norm": np.tile(0.5**d, 2)})
    df.loc[df["distance"] > 45, "grad_norm"] = 0.0  # underflow: excluded from the fit
    r = decay_rates(df, ["cell"]).iloc[0]
    assert r["factor_per_step"] == pytest.approx(0.5, rel=1e-12) and r["r2"] == pytest.approx(1.0)
    assert r["vanish_distance"] == 20  # 0.5^20 < 1e-6 < 0.5^19
    assert r["fit_points"] == 46


@pytest.mark.parametrize("cell_name,impl", [("rnn", "scratch"), ("lstm", "scratch"), ("gru", "cudnn"), ("lstm", "cudnn")])
@pytest.mark.parametrize("task_name", ["adding", "copy"])
def test_task_loss_probe_matches_autograd_on_each_step(cell_name, impl, task_name):
    """The flow probe's ||dL/dh_t|| and total ||dL/dc_t|| for a task's own loss (on every step, or on the copied
    symbols), against autograd through the seed's equations (each sequence's own loss: its mean over the scored steps)."""
    from gradlab.probes import task_loss_grad_norms
    from gradlab.tasks import build
    from gradlab.tasks.base import loss_of
    from gradlab.training import build_model

    task = build(task_name, {"copy_len": 2} if task_name == "copy" else {})
    batch = task.sample(torch.Generator().manual_seed(0), 3, 4)
    model = build_model(task.spec, cell_name, impl, 5, seed=1, init="xavier", dtype=F64)
    batch.x = batch.x.double() if batch.x.is_floating_point() else batch.x
    got = task_loss_grad_norms(model, batch, task.spec)
    n = batch.x.shape[0] if batch.mask is None else int(batch.mask.sum())
    x = batch.x if batch.x.is_floating_point() else torch.nn.functional.one_hot(batch.x, task.spec.input_size).double()

    def loss_of_hs(hs):  # the task's loss on the scored steps, each sequence's mean over them, summed over sequences
        scored = [k for k in range(len(hs)) if batch.mask is None or batch.mask[k]]
        return loss_of(task.spec, model.readout(torch.stack([hs[k] for k in scored])), batch.targets(), reduction="sum") / n

    want = _seed_grads(model.cell, x, loss_of_hs)
    assert set(got) == set(want)
    for name, grads in want.items():
        torch.testing.assert_close(got[name], torch.stack([_rms(v) for v in grads]), rtol=1e-10, atol=1e-15)


def test_the_decay_measure_sets_cudnns_precision_for_its_run_and_restores_it(monkeypatch):
    """tf32 off by default: on a GPU the fused curves are float32's own (torch's default TF32 moved the LSTM with
    forget bias 3 by a median 13% against scratch); the flags come back after the run."""
    import gradlab.measures.gradient_decay as gd

    seen = []
    monkeypatch.setattr(gd, "_run", lambda cfg: seen.append(torch.backends.cudnn.allow_tf32) or {"results": []})
    before = torch.backends.cudnn.allow_tf32
    gd.run(Config(tf32=False))
    gd.run(Config(tf32=True))
    assert seen == [False, True] and torch.backends.cudnn.allow_tf32 == before


def test_impl_agreement_tells_the_underflow_floor_from_ordinary_magnitudes():
    from gradlab.derived.gradient_decay import impl_agreement
    from gradlab.report.gradient_decay import _disagreement

    rows = []
    for cell, gap in (("rnn", 0.0), ("lstm", 0.13)):
        for t in range(6):
            norm = 10.0 ** (-8 * t)  # down to 1e-40: the last steps at float32's floor
            for impl, value in (("scratch", norm), ("cudnn", norm * (1 + gap) if norm > 1e-30 else norm * 3)):
                rows.append({"cell": cell, "impl": impl, "seed": 0, "probe": "hidden", "wrt": "h", "dtype": "float32", "t": t, "grad_norm": value})
    agree = impl_agreement(pd.DataFrame(rows), ["cell", "impl", "seed"])
    by_cell = agree.set_index("cell")
    assert by_cell.loc["rnn", "median_rel_ordinary"] == 0 and by_cell.loc["rnn", "max_rel_diff"] > 0.5
    assert by_cell.loc["lstm", "median_rel_ordinary"] == pytest.approx(0.13 / 1.13)
    text = _disagreement(agree, {"environment": {"cudnn_allow_tf32": True, "cudnn_rnn_fp32_precision": "tf32"}})
    assert "1 curve(s) differ only where the norms sit at the dtype's underflow floor" in text
    assert "at ordinary magnitudes: cell lstm (median gap h 12%)" in text and "TF32" in text


MODERN_CASES = [("lru", "scratch", dict(init_scale=0.9)), ("lru", "scan", {}), ("lru", "scratch", dict(variant="plain")),
                ("mingru", "scratch", {}), ("mingru", "scan", dict(forget_bias=2.0)), ("minlstm", "scratch", dict(forget_bias=2.0)),
                ("minlstm", "scan", {})]


@pytest.mark.parametrize("cell_name,impl,options", MODERN_CASES)
def test_the_modern_cells_gradient_is_its_closed_form(cell_name, impl, options):
    """||dL/dh_t|| measured by the taps equals the recurrence's closed form (|lambda|^k per mode for the lru, the product
    of 1 - z_s or f'_s for the min cells) to float rounding, and the state Jacobian's singular values are those
    factors themselves: |lambda_j|^k (each twice, for a mode's two real numbers), or prod a_s per unit."""
    from gradlab.probes import closed_form_hidden_norms, jacobian_spectra

    T, B, I, H = 40, 3, 4, 6
    cell = create(cell_name, impl, I, H, init="paper", seed=3, dtype=F64, **options)
    x, g = _data(T, B, I, H, seed=2)
    torch.testing.assert_close(hidden_grad_norms(cell, x, g)["h"], closed_form_hidden_norms(cell, x, g), rtol=1e-12, atol=0)
    kept = cell.retention(x)  # (T, B, H)
    later = torch.cat([kept[1:], torch.ones_like(kept[:1])])
    products = torch.flip(torch.cumprod(torch.flip(later, [0]), 0), [0])  # prod_{s>t} a_s per unit
    want = products.sort(dim=-1, descending=True).values
    torch.testing.assert_close(jacobian_spectra(cell, x), want, rtol=1e-10, atol=1e-14)


def test_closed_forms_exist_where_the_recurrence_gives_one():
    from gradlab.probes import closed_form_hidden_norms

    T, B, I, H = 30, 2, 3, 5
    x, g = _data(T, B, I, H)
    k = torch.arange(T - 1, -1, -1, dtype=F64)
    lin = create("linear", "scratch", I, H, init="orthogonal", init_scale=0.8, seed=0, dtype=F64)
    torch.testing.assert_close(closed_form_hidden_norms(lin, x, g), 0.8**k * _rms(g), rtol=1e-12, atol=0)
    assert closed_form_hidden_norms(create("linear", "scratch", I, H, init="xavier", seed=0, dtype=F64), x, g) is None  # not orthogonal
    for cell_name in ("rnn", "gru", "lstm"):
        assert closed_form_hidden_norms(create(cell_name, "scratch", I, H, init="orthogonal", seed=0, dtype=F64), x, g) is None


@pytest.mark.parametrize("cell_name,impl", [("lru", "scratch"), ("lru", "scan"), ("mingru", "scan"), ("minlstm", "scratch")])
@pytest.mark.parametrize("task_name", ["adding", "copy"])
def test_task_loss_probe_on_the_modern_cells(cell_name, impl, task_name):
    """The flow probe reads each step's output as the readout sees it (the lru's Re(h C) + x D, not its state):
    ||dL/dh_t|| against autograd through the cell's own loop with each state kept (retain_grad)."""
    from gradlab.probes import task_loss_grad_norms
    from gradlab.tasks import build
    from gradlab.tasks.base import loss_of
    from gradlab.training import build_model

    task = build(task_name, {"copy_len": 2} if task_name == "copy" else {})
    batch = task.sample(torch.Generator().manual_seed(0), 3, 4)
    model = build_model(task.spec, cell_name, impl, 6, seed=1, init="paper", dtype=F64)
    batch.x = batch.x.double() if batch.x.is_floating_point() else batch.x
    got = task_loss_grad_norms(model, batch, task.spec)["h"]
    cell = model.cell
    inputs, weights = cell.prepare(model.cell_inputs(batch.x))
    state, states, outs = cell.init_state(batch.x.shape[1]), [], []
    for inp in inputs:
        state = cell.loop_step(inp, state, weights)
        state.retain_grad()
        states.append(state)
        outs.append(cell.emit(state, inp))
    scored = [k for k in range(len(outs)) if batch.mask is None or batch.mask[k]]
    n = len(scored)
    loss_of(task.spec, model.readout(torch.stack([outs[k] for k in scored])), batch.targets(), reduction="sum").div(n).backward()
    torch.testing.assert_close(got, torch.stack([_rms(s.grad) for s in states]), rtol=1e-10, atol=1e-15)


def test_the_decay_measure_keeps_the_closed_form_beside_the_measurement():
    from gradlab.derived.gradient_decay import derive

    rows = []
    for cell_name, scale in (("lru", 0.7), ("mingru", None), ("rnn", 1.0)):
        cfg = Config(cell=cell_name, impl="scan" if cell_name != "rnn" else "scratch", init="paper" if cell_name != "rnn" else "orthogonal",
                     init_scale=scale, seq_len=50, hidden_size=8, input_size=4, batch_size=4)
        cfg.validate()
        rows += [r | {"cell": cell_name, "impl": cfg.impl, "init_scale": scale, "init": cfg.init, "seed": 0, "probe": "hidden", "dtype": "float64",
                      "variant": None, "forget_bias": 0.0, "input_size": 4, "hidden_size": 8, "input_std": 1.0} for r in run(cfg)["results"]]
    res = pd.DataFrame(rows)
    assert res.loc[res["cell"] == "rnn", "closed_form"].isna().all()  # no closed form: no number
    rates = derive({"results": res}, ["cell", "impl", "init", "init_scale", "seed", "probe", "dtype", "variant", "forget_bias", "input_size",
                                      "hidden_size", "input_std"])["decay_rates"].set_index("cell")
    assert rates.loc["lru", "closed_form_max_rel"] < 1e-12 and rates.loc["mingru", "closed_form_max_rel"] < 1e-12
    assert rates.loc["lru", "factor_per_step"] == pytest.approx(0.7, rel=1e-10) and rates.loc["lru", "predicted_factor"] == 0.7
    assert rates.loc["mingru", "closed_form_factor"] == pytest.approx(rates.loc["mingru", "factor_per_step"], rel=1e-10)
    assert np.isnan(rates.loc["rnn", "closed_form_max_rel"])
