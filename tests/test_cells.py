"""Cells: parity of scratch and torch.nn (outputs, states, every gradient), oracles, init, errors."""

from __future__ import annotations


import pytest
import torch

from gradlab.cells import convert, create, hidden_of, parameters_in_scratch_layout
from gradlab.cells.cudnn import FusedCell
from gradlab.cells.init import spectral_norm
from oracles import seed_step as _seed_step

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# cuDNN's float32 RNN is itself only this close to the equations: measured on an H200 (cuDNN 9.19) at
# 1.3e-5 to 1.7e-5 relative with TF32 off (7e-4 with TF32 on), where torch's native CUDA kernels give 1.5e-7.
CUDNN_FP32_TOL = 1e-4
TWINNED = [("rnn", None), ("gru", "reset_after"), ("lstm", None)]
SHAPES = [(1, 1, 1, 1), (7, 3, 5, 4), (13, 2, 9, 16)]  # (T, B, I, H)


def _state_tensors(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _run(module, x, state0):
    """Outputs, final state and the gradients of the input, initial state and every parameter."""
    x = x.clone().requires_grad_(x.dtype != torch.long)
    s0 = None if state0 is None else tuple(s.clone().requires_grad_() for s in state0)
    if s0 is not None and module.cell != "lstm":
        s0 = s0[0]
    out, state = module(x, s0)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in [out, *_state_tensors(state)]]
    loss = sum((w * t).sum() for w, t in zip(weights, [out, *_state_tensors(state)]))
    loss.backward()
    grads = parameters_in_scratch_layout(module, grad=True)
    x_grad = x.grad if x.dtype != torch.long else None
    s_grad = None if s0 is None else [s.grad for s in _state_tensors(s0)]
    return out.detach(), [s.detach() for s in _state_tensors(state)], x_grad, s_grad, grads


def _assert_close(a, b, tol, what):
    """float64: element-wise. float32: norm-wise, the metric for rounding accumulated over T*B terms in
    orders that differ between kernels (cuDNN's element-wise error reaches 1.2e-5 of the largest entry)."""
    assert a.shape == b.shape, what
    if not a.numel():
        return
    if a.dtype == torch.float32:
        err, scale = (a - b).double().norm().item(), max(1.0, b.double().norm().item())
    else:
        err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"{what}: error {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell,variant", TWINNED)
@pytest.mark.parametrize("direction", ["scratch->cudnn", "cudnn->scratch"])
@pytest.mark.parametrize("with_state", [False, True])
def test_parity_with_torch_nn(cell, variant, shape, dtype, direction, with_state, device):
    T, B, I, H = shape
    src_impl, dst_impl = direction.split("->")
    a = create(cell, src_impl, I, H, variant=variant, init="xavier", seed=3, dtype=dtype, device=device)
    with torch.no_grad():  # non-zero biases, so every bias path is exercised
        for p in a.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
    b = convert(a, dst_impl)
    assert b.impl == dst_impl and type(a) is not type(b)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    n_state = 2 if cell == "lstm" else 1
    state0 = tuple(torch.randn(B, H, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(n_state)) if with_state else None
    ra, rb = _run(a, x, state0), _run(b, x, state0)
    tol = CUDNN_FP32_TOL if (device == "cuda" and dtype == torch.float32) else TOL[dtype]
    _assert_close(ra[0], rb[0], tol, "outputs")
    for k, (sa, sb) in enumerate(zip(ra[1], rb[1])):
        _assert_close(sa, sb, tol, f"final state {k}")
    _assert_close(ra[2], rb[2], tol, "input gradient")
    if with_state:
        for k, (ga, gb) in enumerate(zip(ra[3], rb[3])):
            _assert_close(ga, gb, tol, f"initial state {k} gradient")
    assert ra[4].keys() == rb[4].keys()
    for name in ra[4]:
        _assert_close(ra[4][name], rb[4][name], tol, f"gradient of {name}")


@pytest.mark.parametrize("cell,variant", TWINNED)
def test_bias_hh_gradient_equals_bias_ih_gradient(cell, variant):
    """The scratch bias maps to b_ih + b_hh, so both torch biases must get the scratch bias's gradient."""
    m = create(cell, "cudnn", 4, 5, variant=variant, seed=0, dtype=torch.float64)
    out, _ = m(torch.randn(6, 2, 4, dtype=torch.float64))
    out.pow(2).sum().backward()
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    g_ih, g_hh = m.rnn.bias_ih_l0.grad.chunk(gates), m.rnn.bias_hh_l0.grad.chunk(gates)
    summed = range(2) if cell == "gru" else range(len(g_ih))  # the GRU candidate's b_hh is its own parameter
    for k in summed:
        torch.testing.assert_close(g_ih[k], g_hh[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell,variant", TWINNED)
def test_token_ids_equal_one_hot_inputs(cell, variant, device):
    """Row lookup (scratch) and one-hot into the fused kernel compute the same function as explicit one-hot."""
    V, H = 11, 6
    a = create(cell, "scratch", V, H, variant=variant, seed=4, dtype=torch.float64, device=device)
    tokens = torch.randint(0, V, (5, 3), generator=torch.Generator().manual_seed(0)).to(device)
    one_hot = torch.nn.functional.one_hot(tokens, V).double()
    for m in (a, convert(a, "cudnn")):
        out_ids, _ = m(tokens)
        out_hot, _ = a(one_hot)
        _assert_close(out_ids.detach(), out_hot.detach(), 1e-12, f"{m.impl} token ids")


@pytest.mark.parametrize("cell,variant", [("linear", None), ("gru", "reset_before"), ("gru", "reset_after"), ("rnn", None)])
def test_scratch_to_scratch_copy_is_exact(cell, variant):
    a = create(cell, "scratch", 3, 4, variant=variant, seed=1, dtype=torch.float64)
    b = convert(a, "scratch")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert torch.equal(a(x)[0], b(x)[0])
    assert b is not a


@pytest.mark.parametrize("cell,variant", [("linear", None), ("rnn", None), ("gru", "reset_before"), ("gru", "reset_after"), ("lstm", None)])
def test_scratch_matches_the_seed_equations(cell, variant):
    m = create(cell, "scratch", 4, 6, variant=variant, init="xavier", seed=5, dtype=torch.float64)
    with torch.no_grad():
        for prm in m.parameters():
            if prm.dim() == 1:
                prm.normal_(0, 0.5)
    p = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    out, state = m(x)
    h = torch.zeros(2, 6, dtype=torch.float64)
    c = torch.zeros_like(h)
    for t in range(5):
        if cell == "lstm":
            h, c = _seed_step(cell, variant, p, x[t], h, c)
        else:
            h = _seed_step(cell, variant, p, x[t], h)
        _assert_close(out[t].detach(), h, 1e-12, f"step {t}")
    _assert_close(hidden_of(state).detach(), h, 1e-12, "final h")


def test_gru_variants_are_different_functions():
    a = create("gru", "scratch", 3, 5, variant="reset_after", init="xavier", seed=0, dtype=torch.float64)
    b = create("gru", "scratch", 3, 5, variant="reset_before", init="xavier", seed=0, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    assert (a(x)[0] - b(x)[0]).abs().max() > 1e-4


def test_same_seed_same_function_across_impls_and_dtypes():
    for cell in ("rnn", "gru", "lstm"):
        a = create(cell, "scratch", 4, 5, init="orthogonal", seed=9, dtype=torch.float64)
        b = create(cell, "cudnn", 4, 5, init="orthogonal", seed=9, dtype=torch.float64)
        c = create(cell, "cudnn", 4, 5, init="orthogonal", seed=10, dtype=torch.float64)
        x = torch.randn(3, 2, 4, dtype=torch.float64)
        _assert_close(a(x)[0].detach(), b(x)[0].detach(), 1e-12, cell)
        assert (a(x)[0] - c(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("init", ["normal", "xavier", "orthogonal"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
def test_init_scale_sets_the_recurrent_spectral_norm(init, scale):
    m = create("lstm", "scratch", 4, 8, init=init, init_scale=scale, seed=0, dtype=torch.float64)
    for g in "ifoc":
        assert spectral_norm(getattr(m, f"W_h{g}")) == pytest.approx(scale, rel=1e-12)


def test_init_families():
    m = create("rnn", "scratch", 300, 200, init="normal", seed=0, dtype=torch.float64)
    assert m.W_xh.std().item() == pytest.approx(0.01, rel=0.02)  # the seed's N(0, 0.01)
    assert torch.count_nonzero(m.b_h) == 0
    q = create("rnn", "scratch", 4, 6, init="orthogonal", seed=0, dtype=torch.float64).W_hh.detach()
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    x = create("rnn", "scratch", 100, 100, init="xavier", seed=0, dtype=torch.float64).W_hh.detach()
    assert x.abs().max().item() <= (6 / 200) ** 0.5 and x.std().item() == pytest.approx((2 / 200) ** 0.5, rel=0.05)


def test_forget_bias():
    for impl in ("scratch", "cudnn"):
        m = create("lstm", impl, 3, 4, forget_bias=1.0)
        assert torch.equal(parameters_in_scratch_layout(m)["b_f"], torch.ones(4))
        assert torch.count_nonzero(parameters_in_scratch_layout(m)["b_i"]) == 0


def test_fused_cell_records_backend():
    m = create("gru", "cudnn", 3, 4)
    m(torch.randn(2, 1, 3))
    assert m.last_backend in ("aten-cpu", "onednn")
    assert isinstance(m, FusedCell)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(cell="lstn", impl="scratch"), "Did you mean 'lstm'"),
        (dict(cell="gru", impl="cudn"), "Did you mean 'cudnn'"),
        (dict(cell="linear", impl="cudnn"), "cudnn exists for: rnn, gru, lstm"),
        (dict(cell="gru", impl="cudnn", variant="reset_before"), "exists only in scratch"),
        (dict(cell="gru", impl="scratch", variant="reset_later"), "Did you mean"),
        (dict(cell="rnn", impl="scratch", variant="reset_before"), "it has no variants .the gru's: reset_after, reset_before"),
        (dict(cell="rnn", impl="scratch", forget_bias=1.0), r"cells with a forget gate \(lstm, mingru, minlstm"),
        (dict(cell="rnn", impl="scratch", init="ortho"), "Unknown init"),
    ],
)
def test_bad_combinations_say_what_exists(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create(input_size=2, hidden_size=3, **kwargs)


def test_convert_refuses_what_has_no_twin():
    with pytest.raises(ValueError, match="cudnn exists for"):
        convert(create("linear", "scratch", 2, 3), "cudnn")
    with pytest.raises(ValueError, match="exists only in scratch"):
        convert(create("gru", "scratch", 2, 3, variant="reset_before"), "cudnn")


@pytest.mark.parametrize("cell_name", ["rnn", "gru", "lstm"])
def test_written_out_backward_refuses_second_derivatives(cell_name):
    """A gradient with create_graph=True through the written-out BPTT would be incomplete: it must raise,
    for the input and the parameters alike, while the step-by-step path gives a true second derivative."""
    cell = create(cell_name, "scratch", 3, 4, seed=0, init="xavier", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = cell(x)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(out.pow(2).sum(), [x, next(cell.parameters())], create_graph=True)
    inputs, weights = cell.prepare(x)  # step by step: autograd's own graph, twice differentiable
    h = cell.init_state(2)
    for inp in inputs:
        h = cell.step(inp, h, weights)
    (g,) = torch.autograd.grad(hidden_of(h).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


@pytest.mark.parametrize("cell_name", ["rnn", "gru", "lstm"])
def test_written_out_backward_passes_gradcheck(cell_name):
    """Finite differences in float64 against the written-out BPTT: every input, the initial state(s), the
    recurrent weights (and the GRU's recurrent bias), through outputs and the last cell state."""
    from gradlab.cells.bptt import GRUSequence, LSTMSequence, RNNSequence

    gen = torch.Generator().manual_seed(0)
    T, B, H = 4, 2, 3
    rand = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    if cell_name == "rnn":
        fn, args = RNNSequence.apply, [rand(T, B, H), rand(B, H), rand(H, H, scale=0.5)]
    elif cell_name == "gru":
        fn, args = GRUSequence.apply, [rand(T, B, 3 * H), rand(B, H), rand(H, 3 * H, scale=0.5), rand(3 * H)]
    else:
        fn, args = LSTMSequence.apply, [rand(T, B, 4 * H), rand(B, H), rand(B, H), rand(H, 4 * H, scale=0.5)]
    assert torch.autograd.gradcheck(fn, args)


def test_uniform_init_is_torch_nn_default():
    """torch.nn draws every weight and both biases from U(-1/sqrt(H), 1/sqrt(H)); gradlab's one bias per gate is
    their sum (the GRU candidate's input bias and b_hh stay apart, as torch.nn's do). forget_bias adds on top."""
    H = 400
    k = 1 / H**0.5
    lstm = parameters_in_scratch_layout(create("lstm", "scratch", 30, H, init="uniform", seed=0, dtype=torch.float64))
    assert all(v.abs().max() <= k for n, v in lstm.items() if n.startswith("W_"))
    for g in "ifoc":
        b = lstm[f"b_{g}"]
        assert b.abs().max() <= 2 * k and b.var().item() == pytest.approx(2 * k**2 / 3, rel=0.15)  # sum of two uniforms
    shifted = parameters_in_scratch_layout(create("lstm", "scratch", 30, H, init="uniform", forget_bias=1.0, seed=0, dtype=torch.float64))
    torch.testing.assert_close(shifted["b_f"], lstm["b_f"] + 1.0)
    gru = parameters_in_scratch_layout(create("gru", "scratch", 30, H, init="uniform", seed=0, dtype=torch.float64))
    for name in ("b_h", "b_hh"):
        assert gru[name].abs().max() <= k and gru[name].var().item() == pytest.approx(k**2 / 3, rel=0.15)
