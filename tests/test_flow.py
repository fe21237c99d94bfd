"""gradlab.flow on a user's own model: equal to gradlab's probes on converted weights, per-layer flow of a
stacked torch.nn.LSTM (total dL/dc_t) equal to autograd through torch.nn's equations written out, and a recorder
that leaves training alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
    with pytest.raises(ValueError, match="bidirectional"):
        flow.watch(nn.GRU(2, 3, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        flow.watch(nn.LSTM(2, 3, proj_size=2))
    with pytest.raises(ValueError, match="every must be >= 1"):
        flow.watch(nn.GRU(2, 3), every=0)
    rnn = nn.RNN(2, 3)
    with pytest.raises(ValueError, match="unknown probe 'hiden'.*hidden, input, jacobian"):
        flow.gradient_flow(rnn, lambda: rnn(torch.zeros(2, 1, 2))[0].sum(), probes=("hiden",))
    with pytest.raises(ValueError, match="scalar tensor"):
        flow.gradient_flow(rnn, lambda: rnn(torch.zeros(2, 1, 2))[0])
    packed = nn.utils.rnn.pack_padded_sequence(torch.zeros(3, 2, 2), [3, 2])
    with pytest.raises(TypeError, match="PackedSequence"):
        flow.gradient_flow(rnn, lambda: rnn(packed)[1].sum())
    assert "forward" not in rnn.__dict__
