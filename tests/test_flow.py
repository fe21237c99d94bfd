"""gradlab.flow on a user's own model: equal to gradlab's probes on converted weights, per-layer flow of a
stacked torch.nn.LSTM (total dL/dc_t) equal to autograd through torch.nn's equations written out, and a recorder
that leaves training alone."""

from __future__ import annotations

import gc
import warnings
import weakref

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradlab import flow, probes
from gradlab.cells import convert, create

CELLS = ("rnn", "gru", "lstm")


class Tagger(nn.Module):
    """A user's model: an embedding-free recurrent stack and a linear head, batch_first like most user code."""

    def __init__(self, kind: str, layers: int = 1, batch_first: bool = True, inputs: int = 3, hidden: int = 5):
        super().__init__()
        self.encoder = getattr(nn, kind)(inputs, hidden, num_layers=layers, batch_first=batch_first)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out, _ = self.encoder(x)
        return self.head(out)


def _gradlab_model(cell: str, T: int = 7, B: int = 4, I: int = 3, H: int = 5):  # noqa: E741
    """A gradlab fused cell (its .rnn is a torch.nn module), the same cell in scratch, inputs and a direction."""
    fused = create(cell, "cudnn", I, H, init="uniform", seed=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    direction = torch.randn(B, H, generator=gen, dtype=torch.float64)
    return fused, convert(fused, "scratch"), x, direction


@pytest.mark.parametrize("cell", CELLS)
def test_on_converted_weights_it_equals_gradlabs_own_probes(cell):
    fused, scratch, x, direction = _gradlab_model(cell)
    holder = nn.Module()
    holder.rnn = fused.rnn  # the user's module holds a plain torch.nn layer
    tables = flow.gradient_flow(holder, lambda: (holder.rnn(x)[0][-1] * direction).sum(), probes=("hidden", "input", "jacobian"), jacobian_batch=2)
    res = tables["results"]
    for wrt, expected in probes.hidden_grad_norms(scratch, x, direction).items():
        got = res[(res.probe == "hidden") & (res.wrt == wrt)].sort_values("t")["grad_norm"].to_numpy()
        torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-12, atol=1e-15)
    got = res[res.probe == "input"].sort_values("t")["grad_norm"].to_numpy()
    torch.testing.assert_close(torch.tensor(got), probes.input_grad_norms(scratch, x, direction), rtol=1e-12, atol=1e-15)
    spec = tables["spectrum"].sort_values(["t", "sequence", "rank"])
    expected = probes.jacobian_spectra(scratch, x[:, :2])  # (T, 2, D)
    torch.testing.assert_close(torch.tensor(spec["singular_value"].to_numpy()).view_as(expected), expected, rtol=1e-10, atol=1e-13)


def _independent_layer_grads(lstm: nn.LSTM, x: torch.Tensor, loss_of_output):
    """dL/dh_t and the total dL/dc_t per layer, each layer's step written out from torch.nn's documented
    equations (gate order i, f, g, o) on its own weights, h_t formed from the very c_t kept with retain_grad."""
    per_layer, inp = [], x  # x (B, T, I), batch_first
    for layer in range(lstm.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        h = c = inp.new_zeros(inp.shape[0], lstm.hidden_size)
        hs, cs = [], []
        for t in range(inp.shape[1]):
            i, f, g, o = (inp[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            for s in (h, c):
                s.retain_grad()
            hs.append(h)
            cs.append(c)
        per_layer.append((hs, cs))
        inp = torch.stack(hs, dim=1)  # (B, T, H)
    loss_of_output(inp).backward()
    rms = lambda g: 0.0 if g is None else float(g.pow(2).sum(-1).mean().sqrt())  # noqa: E731
    return {(layer, wrt): [rms(s.grad) for s in states] for layer, (hs, cs) in enumerate(per_layer) for wrt, states in (("h", hs), ("c", cs))}


def test_a_stacked_batch_first_lstm_per_layer_flow_equals_autograd_through_torch_nns_equations_written_out():
    torch.manual_seed(0)
    model = Tagger("LSTM", layers=3, batch_first=True).double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)  # (B, T, I)
    y = torch.randint(0, 2, (4, 9))

    def loss_of_output(out):  # the user's loss: cross-entropy at every step
        return nn.functional.cross_entropy(model.head(out).reshape(-1, 2), y.reshape(-1))

    res = flow.gradient_flow(model, lambda: nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1)))["results"]
    expected = _independent_layer_grads(model.encoder, x, loss_of_output)
    assert sorted(res["layer"].unique()) == [0, 1, 2]
    for (layer, wrt), values in expected.items():
        got = res[(res.probe == "hidden") & (res.layer == layer) & (res.wrt == wrt)].sort_values("t")["grad_norm"].tolist()
        assert got == pytest.approx(values, rel=1e-10, abs=1e-14), (layer, wrt)
    assert set(res["module"]) == {"encoder"}
    assert (res.query("probe == 'hidden'")["distance"] == 8 - res.query("probe == 'hidden'")["t"]).all()


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_the_measured_forward_is_torch_nns_outputs_states_and_parameter_gradients(kind, batch_first):
    torch.manual_seed(1)
    rnn = getattr(nn, kind)(3, 4, num_layers=2, batch_first=batch_first).double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    hx = torch.randn(2, 5 if batch_first else 6, 4, dtype=torch.float64)  # (L, B, H)
    hx = (hx, hx.flip(0)) if kind == "LSTM" else hx
    ref_out, ref_state = rnn(x, hx)
    ref_grads = torch.autograd.grad(ref_out.pow(2).sum(), list(rnn.parameters()))
    layers: list = []
    out, state = flow._stepwise_forward(rnn, layers, x, hx)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-14)
    for a, b in zip(state if kind == "LSTM" else [state], ref_state if kind == "LSTM" else [ref_state]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(out.pow(2).sum(), list(rnn.parameters())), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(layers) == 2 and len(layers[0].h) == x.shape[1 if batch_first else 0]


def test_the_recorder_records_every_nth_training_step_and_leaves_training_as_the_fused_kernel_has_it():
    torch.manual_seed(2)
    model = Tagger("GRU", layers=2).double()
    twin = Tagger("GRU", layers=2).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (4, 6))
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    expected_first = flow.gradient_flow(model, lambda: nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1)))["results"]
    with flow.watch(model, every=2) as recorder:
        for step in range(5):
            for m, opt in zip((model, twin), opts):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x).reshape(-1, 2), y.reshape(-1)).backward()
                opt.step()
            with torch.no_grad():  # evaluation: neither counted nor measured
                model(x)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    table = recorder.table()
    assert sorted(table["step"].unique()) == [0, 2, 4]
    assert len(table) == 3 * 2 * 6  # steps x layers x T (the GRU's state is h alone)
    first = table[table.step == 0].sort_values(["layer", "t"])["grad_norm"].to_numpy()
    expected = expected_first[expected_first.probe == "hidden"].sort_values(["layer", "t"])["grad_norm"].to_numpy()
    torch.testing.assert_close(torch.tensor(first), torch.tensor(expected), rtol=1e-12, atol=1e-15)
    assert "forward" not in model.encoder.__dict__  # the fused forward is back


def test_the_recorders_figure_draws_one_line_per_recorded_step(tmp_path):
    model = Tagger("LSTM")
    x = torch.randn(2, 5, 3)
    recorder = flow.watch(model, every=1)
    for _ in range(3):
        model(x).sum().backward()
    fig = recorder.figure()
    table = recorder.table()
    assert len(table) == 3 * 2 * 5  # steps x (h, c) x T
    assert table.query("wrt == 'c' and distance == 0")["grad_norm"].gt(0).all()  # the total dL/dc_t: through h_t, at the last step too
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) >= 4]
    assert len(lines) == 3 * 2  # 3 steps x (h, c) panels
    recorder.figure(tmp_path / "flow.svg")
    assert (tmp_path / "flow.svg").read_text().lstrip().startswith("<?xml")
    recorder.close()


def test_clear_errors_for_what_it_cannot_measure():
    with pytest.raises(ValueError, match="no torch.nn.RNN, GRU or LSTM inside Linear"):
        flow.watch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="nothing gradlab.flow can measure: GRU .the model. is bidirectional"):
        flow.watch(nn.GRU(2, 3, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        flow.watch(nn.LSTM(2, 3, proj_size=2))
    for every in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="every must be a whole number >= 1"):
            flow.watch(nn.GRU(2, 3), every=every)
    rnn = nn.RNN(2, 3)
    with pytest.raises(ValueError, match="unknown probe 'hiden'.*hidden, input, gates, weights, jacobian"):
        flow.gradient_flow(rnn, lambda: rnn(torch.zeros(2, 1, 2))[0].sum(), probes=("hiden",))
    with pytest.raises(ValueError, match="scalar tensor"):
        flow.gradient_flow(rnn, lambda: rnn(torch.zeros(2, 1, 2))[0])
    packed = nn.utils.rnn.pack_padded_sequence(torch.zeros(3, 2, 2), [3, 2])
    with pytest.raises(TypeError, match="PackedSequence"):
        flow.gradient_flow(rnn, lambda: rnn(packed)[1].sum())
    assert "forward" not in rnn.__dict__



def _train(model, recorder, x, y, steps, opt=None, validate=False, accumulate=1, set_step=False):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        if set_step:
            recorder.set_step(step)
        opt.zero_grad()
        for _ in range(accumulate):
            nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1)).backward()
        opt.step()
        if validate:  # a validation pass with gradients on (a gradient-based metric, say): not a training call
            model.eval()
            model(x).sum().backward()
            model.train()


def test_a_deep_copy_of_a_watched_model_is_a_plain_model():
    """The 'keep the best model' / EMA pattern: the copy runs the fused kernel, records nothing into the original's
    recorder, and the original's close() leaves both plain."""
    import copy

    torch.manual_seed(3)
    model = Tagger("LSTM", layers=2).double()
    x, y = torch.randn(4, 6, 3, dtype=torch.float64), torch.randint(0, 2, (4, 6))
    recorder = flow.watch(model, every=1)
    best = copy.deepcopy(model)
    assert not flow.watched(best.encoder) and flow.watched(model.encoder)
    assert "forward" not in type(best.encoder).__dict__ or best.encoder.forward.__func__ is type(best.encoder).forward
    for _ in range(3):
        best(x).sum().backward()
    assert recorder.records == [] and recorder.seen["encoder"] == 0  # the copy's calls are not the original's
    _train(model, recorder, x, y, 2)
    assert sorted(recorder.table()["step"].unique()) == [0, 1]
    twin = Tagger("LSTM", layers=2).double()
    twin.load_state_dict(best.state_dict())
    torch.testing.assert_close(best(x), twin(x), rtol=0, atol=0)  # the fused kernel, as a model never watched
    recorder.close()
    assert "forward" not in model.encoder.__dict__ and not flow.watched(best.encoder)


def test_torch_save_of_a_watched_model_loads_as_a_plain_model_and_leaves_the_recording_alone():
    """torch.save(model) in the middle of a watched run (a checkpoint): the file loads without the recorder into a
    model whose forward is the fused kernel's and that can be watched again, and the original goes on recording."""
    import io

    torch.manual_seed(11)
    model = Tagger("LSTM", layers=2).double()
    x, y = torch.randn(4, 6, 3, dtype=torch.float64), torch.randint(0, 2, (4, 6))
    recorder = flow.watch(model, every=1)
    _train(model, recorder, x, y, 1)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert not flow.watched(loaded.encoder) and flow.watched(model.encoder)
    twin = Tagger("LSTM", layers=2).double()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(loaded(x), twin(x), rtol=0, atol=0)  # the fused kernel, as a model never watched
    loaded(x).sum().backward()
    assert recorder.seen["encoder"] == 1  # the loaded model's calls are not the original's
    with flow.watch(loaded, every=1) as again:
        _train(loaded, again, x, y, 1)
    assert len(again.table()) == 2 * 2 * 6  # layers x (h, c) x T
    _train(model, recorder, x, y, 1)
    assert sorted(recorder.table()["step"].unique()) == [0, 1]
    recorder.close()


def test_a_validation_pass_in_eval_mode_is_neither_counted_nor_measured():
    torch.manual_seed(4)
    model = Tagger("GRU").double()
    x, y = torch.randn(3, 5, 3, dtype=torch.float64), torch.randint(0, 2, (3, 5))
    with flow.watch(model, every=3) as recorder:
        _train(model, recorder, x, y, 7, validate=True)
    table = recorder.table()
    assert sorted(table["step"].unique()) == [0, 3, 6] and recorder.seen["encoder"] == 7  # every third training step, none lost


def test_your_own_step_with_gradient_accumulation_records_each_call_of_the_step():
    torch.manual_seed(5)
    model = Tagger("LSTM").double()
    x, y = torch.randn(3, 5, 3, dtype=torch.float64), torch.randint(0, 2, (3, 5))
    with flow.watch(model, every=2) as recorder:
        _train(model, recorder, x, y, 5, accumulate=2, set_step=True)
    table = recorder.table()
    assert sorted(table["step"].unique()) == [0, 2, 4]
    assert sorted(table["call"].unique()) == [0, 1] and len(table) == 3 * 2 * 2 * 5  # steps x calls x (h, c) x T
    with pytest.raises(ValueError, match="set_step takes a whole number >= 0"):
        recorder.set_step(-1)


def test_a_second_watch_on_the_same_model_is_an_error_until_the_first_is_closed():
    model = Tagger("RNN")
    first = flow.watch(model)
    with pytest.raises(ValueError, match="encoder is already watched by another gradlab.flow recorder"):
        flow.watch(model)
    with pytest.raises(ValueError, match="already watched"):
        flow.gradient_flow(model, lambda: model(torch.zeros(1, 2, 3)).sum())
    first.close()
    flow.watch(model).close()


def test_torch_autograd_grad_on_the_parameters_is_said_not_silently_lost():
    torch.manual_seed(6)
    model = Tagger("GRU").double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    recorder = flow.watch(model, every=1)
    with pytest.warns(UserWarning, match="got no gradient at its taps .*torch.autograd.grad"):
        torch.autograd.grad(model(x).sum(), list(model.parameters()))  # fills no tap; its graph is let go right after
    model(x).sum().backward()
    table = recorder.table()
    assert sorted(table["step"].unique()) == [1]  # the call with a backward is recorded, the other left out, said
    assert recorder.unanswered == 1 and [r["step"] for r in recorder.records] == [1]
    recorder.close()


class _Created(TorchDispatchMode):
    """Every tensor the operations under it create, by weak reference: live_bytes() is the memory of those still
    alive (each storage once), wherever they are held: by Python, or inside an autograd graph (saved tensors)."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.refs += [weakref.ref(t) for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        return out

    def live_bytes(self) -> int:
        gc.collect()
        storages = {s.data_ptr(): s.nbytes() for s in (r().untyped_storage() for r in self.refs if r() is not None)}
        return sum(storages.values())


@pytest.mark.parametrize("loop", ["forward without backward", "torch.autograd.grad, gates"])
def test_measured_calls_no_backward_reaches_hold_no_memory_once_their_graph_is_let_go(loop):
    """15 measured calls of a 2 x 256 LSTM (T 16, batch 64) in a loop that never backpropagates to the taps: the loop
    keeps only its last output, and so does the recorder (it held every call's taps, states and graph: ~0.7 GB)."""
    torch.manual_seed(12)
    model = nn.LSTM(16, 256, num_layers=2, batch_first=True)
    x, params = torch.randn(64, 16, 16), list(model.parameters())
    recorder = flow.watch(model, every=1, gates=loop.endswith("gates"))
    created, one = _Created(), _Created()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for i in range(16):
            with one if i == 0 else created:  # what the forward creates (the backward's tensors are let go by it)
                out = model(x)[0]
            if loop.startswith("torch.autograd.grad"):
                torch.autograd.grad(out.sum(), params)
            if i == 0:
                one_call = one.live_bytes()  # one call's output and what is left of its graph, as the loop holds it
    held = created.live_bytes()  # after the first call, 15 more
    assert held < 150 * 2**20 and held <= 1.1 * one_call, f"{held / 2**20:.0f} MB held, one call {one_call / 2**20:.0f} MB"  # the last call's
    said = [str(w.message) for w in said if "gradlab.flow" in str(w.message)]
    assert len(said) == 1 and "its graph was let go before any backward reached it" in said[0]  # said once
    assert recorder.unanswered == 15 and len(recorder.records) == 1  # left out and counted; the last one's graph is alive
    del out
    assert created.live_bytes() == 0 and recorder.unanswered == 16 and recorder.records == []
    recorder.set_step(100)  # two calls before one backward (a siamese pass): both are answered
    (model(x)[0].sum() + model(x)[0].pow(2).sum()).backward()
    assert recorder.table().groupby("call")["step"].unique().to_dict() == {0: [100], 1: [100]}
    recorder.close()


def test_a_model_with_a_layer_it_cannot_measure_is_measured_where_it_can_be():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.forward_lstm = nn.LSTM(3, 4, batch_first=True)
            self.both_ways = nn.GRU(4, 2, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.both_ways(self.forward_lstm(x)[0])[0]

    model = Mixed().double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="measures forward_lstm and leaves out GRU both_ways is bidirectional"):
        tables = flow.gradient_flow(model, lambda: model(x).sum())
    assert set(tables["results"]["module"]) == {"forward_lstm"} and list(tables["skipped"]["module"]) == ["both_ways"]
    with pytest.warns(UserWarning, match="leaves out GRU both_ways"):
        recorder = flow.watch(model, every=1)
    model(x).sum().backward()
    assert set(recorder.table()["module"]) == {"forward_lstm"}
    assert isinstance(recorder.skipped, pd.DataFrame) and recorder.skipped.equals(tables["skipped"])  # one type, one table, both places
    assert recorder.skipped["because"].item().startswith("bidirectional")
    recorder.close()
    plain = Tagger("GRU").double()  # nothing left out: the same table, empty
    nothing = flow.gradient_flow(plain, lambda: plain(x).sum())["skipped"]
    with flow.watch(plain) as recorder:
        assert recorder.skipped.equals(nothing) and list(nothing.columns) == ["module", "because"] and nothing.empty


def _written_out(kind: str, module: nn.RNNBase, x: torch.Tensor, g_out: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """One layer written out from torch.nn's documented equations: each gate's pre-activation kept with retain_grad,
    h_{t-1} W_hh^T + b_hh kept too; returns the pre-activations per step, each step's h_{t-1}, and dL/dW_hh."""
    w_ih, w_hh, b_ih, b_hh = (getattr(module, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    B, H = x.shape[1], module.hidden_size
    h = c = x.new_zeros(B, H)
    pres, befores, hws = [], [], []
    for t in range(x.shape[0]):
        xw, hw = x[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        hw.retain_grad()
        befores.append(h.detach())
        hws.append(hw)
        if kind == "LSTM":
            pre = xw + hw
            pre.retain_grad()
            i, f, gg, o = pre.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c)
            pres.append([pre])
        elif kind == "GRU":
            (xr, xz, xn), (hr, hz, hn) = xw.chunk(3, 1), hw.chunk(3, 1)
            ar, az = xr + hr, xz + hz
            r = torch.sigmoid(ar)
            an = xn + r * hn
            for a in (ar, az, an):
                a.retain_grad()
            h = (1 - torch.sigmoid(az)) * torch.tanh(an) + torch.sigmoid(az) * h
            pres.append([ar, az, an])
        else:
            pre = xw + hw
            pre.retain_grad()
            h = torch.tanh(pre)
            pres.append([pre])
    (h * g_out).sum().backward()
    grads = [torch.cat([a.grad for a in parts], 1) for parts in pres]
    contributions = [hw.grad.T @ b for hw, b in zip(hws, befores)]
    return grads, contributions, w_hh.grad


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_per_gate_flow_and_each_steps_share_of_the_recurrent_weights_gradient(kind):
    torch.manual_seed(7)
    layer = getattr(nn, kind)(3, 4).double()
    x, g_out = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    holder = nn.Module()
    holder.rnn = layer
    tables = flow.gradient_flow(holder, lambda: (holder.rnn(x)[0][-1] * g_out).sum(), probes=("gates", "weights"))
    res = tables["results"]
    grads, parts, whole = _written_out(kind, layer, x, g_out)
    gates = flow.GATES[kind]
    for t, grad in enumerate(grads):
        for k, gate in enumerate(gates):
            want = grad[:, k * 4 : (k + 1) * 4].pow(2).sum(-1).mean().sqrt()
            got = res.query("probe == 'gates' and wrt == @gate and t == @t")["grad_norm"].item()
            assert got == pytest.approx(float(want), rel=1e-10, abs=1e-15), (gate, t)
    weights = res[res.probe == "weights"].sort_values("t")
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-14)  # the parts add up to autograd's dL/dW_hh
    assert weights["grad_norm"].tolist() == pytest.approx([float(p.norm()) for p in parts], rel=1e-10)
    assert weights["share"].sum() == pytest.approx(1.0, abs=1e-12)
    assert weights["share"].tolist() == pytest.approx([float((p * whole).sum() / whole.pow(2).sum()) for p in parts], rel=1e-9, abs=1e-14)


def test_a_steps_share_is_of_its_calls_own_recurrent_gradient_and_0_where_no_step_carries_any():
    torch.manual_seed(13)
    holder = nn.Module()
    holder.rnn = nn.GRU(3, 4).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    first_step = lambda: holder.rnn(x)[0][0].sum()  # noqa: E731  from the zero state: h_{-1} = 0, and no later step has a gradient
    assert not torch.autograd.grad(first_step(), holder.rnn.weight_hh_l0)[0].any()  # dL/dW_hh is exactly 0
    res = flow.gradient_flow(holder, first_step, probes=("weights",))["results"]
    assert len(res) == 6 and res["share"].notna().all() and (res["share"] == 0).all() and (res["grad_norm"] == 0).all()
    with flow.watch(holder, every=1, gates=True) as recorder:  # two calls in one step: W_hh.grad sums both, each share is its own call's
        recorder.set_step(0)
        holder.rnn(x)[0][-1].sum().backward()
        holder.rnn(2 * x)[0][-1].pow(2).sum().backward()
        recorder.set_step(1)
        first_step().backward()
    shares = recorder.table().query("probe == 'weights'").groupby(["step", "call"])["share"].sum()
    assert shares.to_dict() == pytest.approx({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 0.0}, abs=1e-12)


def test_sinks_get_every_record_and_tensorboard_logs_every_call_the_gates_and_the_figure_from_the_first_step(tmp_path):
    """Two calls per step (gradient accumulation, set_step), gates=True, every=2 over 5 steps: each call's scalars
    under its own tag, the gates' and W_hh's too, each equal to the table; figure_every=2 counts recorded steps
    (0, 2, 4): an image at the first one and at the third."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(8)
    model = Tagger("LSTM").double()
    x, y = torch.randn(3, 6, 3, dtype=torch.float64), torch.randint(0, 2, (3, 6))
    seen = []
    writer = SummaryWriter(str(tmp_path / "tb"))
    board = flow.TensorBoard(writer, distances=(0, 3), figure_every=2)
    with flow.watch(model, every=2, gates=True, sinks=[lambda rows, rec: seen.append(rows), board]) as recorder:
        _train(model, recorder, x, y, 5, accumulate=2, set_step=True)
    writer.close()
    assert [(rows[0]["step"], rows[0]["call"]) for rows in seen] == [(0, 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    table = recorder.table()
    logged = 0
    for call in (0, 1):
        for d in (0, 3):
            at = table.query("call == @call and distance == @d")
            tags = {f"dL_d{wrt}": at.query("probe == 'hidden' and wrt == @wrt") for wrt in ("h", "c")}
            tags |= {f"dL_da_{gate}": at.query("probe == 'gates' and wrt == @gate") for gate in "ifgo"}
            tags |= {"dL_dW_hh_part": at.query("probe == 'weights'"), "W_hh_share": at.query("probe == 'weights'")}
            for quantity, want in tags.items():
                got = events.Scalars(f"gradlab.flow/encoder/layer0/call{call}/{quantity}/distance{d}")
                want = want.sort_values("step")["share" if quantity == "W_hh_share" else "grad_norm"]
                assert [e.step for e in got] == [0, 2, 4], quantity
                assert [e.value for e in got] == pytest.approx(want.tolist(), rel=1e-6), (call, quantity, d)
                logged += 1
    assert logged == 2 * 2 * (2 + 4 + 2) and len(events.Tags()["scalars"]) == logged  # nothing else, nothing twice
    assert [e.step for e in events.Images("gradlab.flow/figure")] == [0, 4] and board.recorded_steps == 3
    for figure_every in (0, 2.5, True):
        with pytest.raises(ValueError, match="figure_every must be None .no image. or a whole number >= 1"):
            flow.TensorBoard(writer, figure_every=figure_every)


def test_the_flow_figures_a_colour_bar_a_layer_by_state_grid_fixed_distances_and_gradient_flows_own(tmp_path):
    torch.manual_seed(9)
    model = Tagger("LSTM", layers=2).double()
    x, y = torch.randn(3, 8, 3, dtype=torch.float64), torch.randint(0, 2, (3, 8))
    with flow.watch(model, every=1) as recorder:
        _train(model, recorder, x, y, 12)
    fig = recorder.figure()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["encoder layer 0, dL/dh", "encoder layer 0, dL/dc", "encoder layer 1, dL/dh", "encoder layer 1, dL/dc"]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.axes) == 5  # 4 panels and a colour bar, no 12-entry legend
    fig = recorder.figure_at_distances((0, 4))
    assert len([ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) == 12]) == 2 * 2 * 2
    tables = flow.gradient_flow(model, lambda: model(x).sum(), probes=("hidden", "input", "jacobian"))
    flow.figure(tables, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 1000


def test_the_recorders_figures_have_no_empty_panel_for_a_model_of_lstm_and_gru_layers():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)
            self.gru = nn.GRU(4, 4, batch_first=True)

        def forward(self, x):
            return self.gru(self.lstm(x)[0])[0]

    torch.manual_seed(14)
    model = Stack().double()
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    with flow.watch(model, every=1) as recorder:
        for _ in range(3):
            model(x).pow(2).sum().backward()

    def panels(fig):  # every axes but the colour bar, each visible and with something drawn in it
        shown = [ax for ax in fig.axes if not (ax.collections and not ax.get_title() and not ax.get_lines())]  # the colour bar
        assert all(ax.get_visible() and any(len(line.get_xdata()) for line in ax.get_lines()) for ax in shown), [ax.get_title() for ax in shown]
        return [ax.get_title() for ax in shown]

    parts = ["lstm layer 0, dL/dh", "lstm layer 0, dL/dc", "lstm layer 1, dL/dh", "lstm layer 1, dL/dc", "gru layer 0, dL/dh"]
    assert sorted(panels(recorder.figure())) == sorted(parts)  # no dL/dc panel for the GRU
    assert panels(recorder.figure_at_distances((0, 5))) == sorted(parts, key=lambda p: p.startswith("lstm"))  # by name, h before c
    with pytest.raises(ValueError, match="no recorded sequence reaches distance 8, 50: the recorded ones go from 0 to 7 steps"):
        recorder.figure_at_distances((8, 50))
    with pytest.raises(ValueError, match="distances must be whole numbers >= 0"):
        recorder.figure_at_distances((-1,))


def test_the_float32_spectrum_carries_its_rounding_floor_and_the_figure_marks_it():
    """A float32 LSTM over 60 steps: the median singular value of ds_T-1/ds_t falls below eps x the largest far from
    the loss; the table says where that floor is, and the figure draws it (a dashed line, the region below shaded,
    both in the legend)."""
    torch.manual_seed(15)
    model = nn.LSTM(3, 16)
    x = torch.randn(60, 2, 3)
    tables = flow.gradient_flow(model, lambda: model(x)[0][-1].sum(), probes=("hidden", "jacobian"))
    spec = tables["spectrum"]
    largest = spec.groupby(["t", "sequence"])["singular_value"].transform("max")
    assert spec["rounding_floor"].to_numpy() == pytest.approx((torch.finfo(torch.float32).eps * largest).to_numpy(), rel=1e-12)
    fig = flow.figure(tables)
    ax = next(ax for ax in fig.axes if ax.get_title() == "model layer 0: singular values of ds_T-1/ds_t")
    lines = {line.get_label(): line for line in ax.get_lines()}
    floor, median = lines["float32 rounding floor: eps x largest"], lines["median"]
    want = spec[spec["rank"] == 0].groupby("distance")["rounding_floor"].median()
    assert list(floor.get_xdata()) == list(want.index) and floor.get_ydata() == pytest.approx(want.to_numpy(), rel=1e-12)
    below = {d for d, v in zip(median.get_xdata(), median.get_ydata()) if v < want[d]}
    assert below and max(below) == want.index.max()  # what the mark is for: the median far from the loss lies under it
    assert ax.collections and [t.get_text() for t in ax.get_legend().get_texts()][2:] == [floor.get_label(), "below it: rounding, not the model"]


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_the_chained_jacobian_equals_backpropagating_every_basis_vector(kind):
    """The spectra from the steps' own Jacobians chained (gradlab.flow.chained_spectra) against the ones from
    D backward passes through the whole sequence (probes.spectra_from_taps, the way it was computed before)."""
    from gradlab.probes import spectra_from_taps

    torch.manual_seed(10)
    model = getattr(nn, kind)(3, 5, num_layers=2).double()
    x = torch.randn(12, 3, 3, dtype=torch.float64)
    calls = []
    with flow._measured({"": model}, lambda name, layers: calls.append(layers)):
        model(x)
    for layer in calls[0]:
        parts = layer.handed_taps()
        before = spectra_from_taps(layer.final, [[taps[t] for taps in parts] for t in range(12)], 2)
        torch.testing.assert_close(flow.chained_spectra(layer, 2), before, rtol=1e-9, atol=1e-12)


# gradlab's own cells inside a user's model (issue 39.4): every cell, every impl.
GRADLAB = [("rnn", "scratch"), ("rnn", "cudnn"), ("gru", "scratch"), ("gru", "cudnn"), ("lstm", "scratch"), ("lstm", "cudnn"),
           ("linear", "scratch"), ("lru", "scratch"), ("lru", "scan"), ("mingru", "scan"), ("minlstm", "scratch")]


def _cell(cell: str, impl: str, I: int = 3, H: int = 4):  # noqa: E741
    init = "paper" if cell in ("lru", "mingru", "minlstm") else "xavier"
    return create(cell, impl, I, H, init=init, seed=2, dtype=torch.float64)


@pytest.mark.parametrize("cell,impl", GRADLAB)
def test_a_gradlab_cell_inside_a_users_model_equals_gradlabs_own_probes(cell, impl):
    """gradient_flow finds a gradlab cell in the user's model (its fused twin's own torch.nn layer not a second time) and
    measures what gradlab.probes measures on the cell: ||dL/dh_t|| (and the LSTM's total ||dL/dc_t||), ||dL/dx_t||,
    and every singular value of ds_{T-1}/ds_t; the outputs and parameter gradients stay the cell's own."""
    from gradlab.cells import hidden_of

    holder = nn.Module()
    holder.rnn = _cell(cell, impl)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 3, generator=gen, dtype=torch.float64)
    direction = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def loss():
        return (hidden_of(holder.rnn(x)[1]) * direction).sum()

    tables = flow.gradient_flow(holder, loss, probes=("hidden", "input", "jacobian"), jacobian_batch=2)
    res = tables["results"]
    assert set(res["module"]) == {"rnn"}
    for wrt, expected in probes.hidden_grad_norms(holder.rnn, x, direction).items():
        got = res[(res.probe == "hidden") & (res.wrt == wrt)].sort_values("t")["grad_norm"].to_numpy()
        torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-12, atol=1e-15)
    got = res[res.probe == "input"].sort_values("t")["grad_norm"].to_numpy()
    torch.testing.assert_close(torch.tensor(got), probes.input_grad_norms(holder.rnn, x, direction), rtol=1e-10, atol=1e-15)
    spec = tables["spectrum"].sort_values(["t", "sequence", "rank"])
    expected = probes.jacobian_spectra(holder.rnn, x[:, :2])
    torch.testing.assert_close(torch.tensor(spec["singular_value"].to_numpy()).view_as(expected), expected, rtol=1e-10, atol=1e-13)
    names, params = zip(*holder.named_parameters())
    plain = torch.autograd.grad(loss(), params, allow_unused=True)  # the cell's own forward
    with flow.watch(holder, every=1) as recorder:
        measured = loss()
        measured.backward()
    assert measured.item() == pytest.approx(loss().item(), rel=1e-13)
    for n, p, g in zip(names, params, plain):
        if g is None:  # no path from this loss (the lru's readout, when the loss reads its state)
            assert p.grad is None or not p.grad.any(), n
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)
    table = recorder.table()
    again = res[res.probe == "hidden"].sort_values(["wrt", "t"])["grad_norm"].to_numpy()
    torch.testing.assert_close(torch.tensor(table.sort_values(["wrt", "t"])["grad_norm"].to_numpy()), torch.tensor(again), rtol=1e-12, atol=1e-15)


def test_a_model_with_torch_nn_and_gradlab_cells_and_token_ids():
    """Both kinds in one model, each measured per layer; a gradlab cell fed token ids has no input tap (its inputs are
    rows of its own weights) and its state probes still run; the torch.nn-only probes refuse a gradlab cell, saying so."""

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.lru = create("lru", "scan", 7, 4, init="paper", seed=0, dtype=torch.float64)
            self.lstm = nn.LSTM(4, 5).double()

        def forward(self, ids):
            y, _ = self.lru(ids)
            return self.lstm(y)[0].pow(2).sum()

    model = Both()
    ids = torch.randint(0, 7, (6, 2), generator=torch.Generator().manual_seed(0))
    res = flow.gradient_flow(model, lambda: model(ids), probes=("hidden", "input"))["results"]
    assert set(res["module"]) == {"lru", "lstm"}
    assert set(res.loc[res["module"] == "lru", "probe"]) == {"hidden"} and "input" in set(res.loc[res["module"] == "lstm", "probe"])
    with pytest.raises(ValueError, match="gates read.*lru is a gradlab cell.*hidden, input, jacobian"):
        flow.gradient_flow(model, lambda: model(ids), probes=("hidden", "gates"))
    with pytest.raises(ValueError, match="gradlab cell"):
        flow.watch(model, gates=True)


def test_a_model_without_any_recurrent_layer_says_what_is_measured():
    with pytest.raises(ValueError, match="no torch.nn.RNN, GRU or LSTM inside Linear, nor any gradlab cell"):
        flow.gradient_flow(nn.Linear(2, 2), lambda: torch.zeros(()))
