"""gradlab's gradient-flow instruments on your own model: every torch.nn.RNN, GRU and LSTM inside any module,
per layer, for your own loss (`gradient_flow`), and a recorder for your own training loop (`watch`).

Measured calls run each watched layer one step at a time from the module's own parameters (torch.nn's
equations, so outputs and parameter gradients are torch.nn's to float rounding) with a zero "tap" added to
every state; the gradient w.r.t. a tap is the gradient w.r.t. that state. Other calls run the fused kernel.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .probes import _rms_norms, spectra_from_taps

RECURRENT = (nn.RNN, nn.GRU, nn.LSTM)
FLOW_PROBES = ("hidden", "input", "jacobian")


@dataclass
class Layer:
    """One layer's taps from one measured call: per step h (and c), the layer's whole input, its last state."""

    h: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H) on the h_t handed on
    c: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H), LSTM only: on c_t before h_t is formed from it (total dL/dc_t)
    c_handed: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H), LSTM only: on the c_t handed on (the state Jacobian's)
    x: torch.Tensor | None = None  # tap on the layer's input (T, B, I)
    final: list[torch.Tensor] = field(default_factory=list)  # [h_{T-1}] or [h_{T-1}, c_{T-1}] (B, H)

    def state_taps(self) -> dict[str, list[torch.Tensor]]:
        """The taps whose gradients are the total dL/dh_t and dL/dc_t."""
        return {"h": self.h, "c": self.c} if self.c else {"h": self.h}

    def handed_taps(self) -> list[list[torch.Tensor]]:
        """The taps on the state handed from step t to t+1 ((h_t, c_t) independent), for ds_{T-1}/ds_t."""
        return [self.h, self.c_handed] if self.c else [self.h]


def recurrent_modules(model: nn.Module) -> dict[str, nn.RNNBase]:
    """Every torch.nn.RNN/GRU/LSTM inside `model` by its name there ('' for the model itself); an error
    that says what is supported when there is none, or one the instruments cannot drive."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, RECURRENT)}
    if not found:
        raise ValueError(
            f"no torch.nn.RNN, GRU or LSTM inside {type(model).__name__}: gradlab.flow measures those "
            "(any number of layers, batch_first or not). For gradlab's own cells use gradlab.probes."
        )
    for name, m in found.items():
        where = f"{type(m).__name__} {name or '(the model)'}"
        if m.bidirectional:
            raise ValueError(f"{where} is bidirectional: gradlab.flow measures unidirectional layers only (a backward direction has its own time axis).")
        if getattr(m, "proj_size", 0):
            raise ValueError(f"{where} has proj_size {m.proj_size}: gradlab.flow measures LSTMs without projections only.")
    return found


def _step(module: nn.RNNBase, layer: int, xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, tap_c: torch.Tensor | None = None):
    """One step of layer `layer` from its projected input xw = x W_ih^T + b_ih (B, G*H), torch.nn's equations;
    tap_c (LSTM) is added to c_t before h_t is formed from it."""
    w_hh = getattr(module, f"weight_hh_l{layer}")
    b_hh = getattr(module, f"bias_hh_l{layer}") if module.bias else None
    hw = nn.functional.linear(h, w_hh, b_hh)  # (B, G*H)
    if isinstance(module, nn.LSTM):
        i, f, g, o = (xw + hw).chunk(4, dim=1)  # torch.nn's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c = c if tap_c is None else c + tap_c
        return torch.sigmoid(o) * torch.tanh(c), c
    if isinstance(module, nn.GRU):
        x_r, x_z, x_n = xw.chunk(3, dim=1)
        h_r, h_z, h_n = hw.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    return act(xw + hw), None


def _stepwise_forward(module: nn.RNNBase, record: list[Layer], inputs, hx=None):
    """torch.nn's forward(input, hx) one step at a time with taps; appends one Layer per layer to `record`."""
    if isinstance(inputs, nn.utils.rnn.PackedSequence):
        raise TypeError("gradlab.flow cannot measure a PackedSequence: pass the padded tensor (T, B, I) and score only the real steps in your loss.")
    unbatched = inputs.dim() == 2
    x = inputs.unsqueeze(1) if unbatched else (inputs.transpose(0, 1) if module.batch_first else inputs)  # (T, B, I)
    lstm = isinstance(module, nn.LSTM)
    L, H, B = module.num_layers, module.hidden_size, x.shape[1]
    if hx is None:
        zeros = x.new_zeros(L, B, H)
        h0, c0 = zeros, (zeros if lstm else None)
    else:
        h0, c0 = hx if lstm else (hx, None)
        if unbatched:
            h0, c0 = h0.unsqueeze(1), (c0.unsqueeze(1) if lstm else None)
    finals_h, finals_c = [], []
    for layer in range(L):
        if layer and module.dropout and module.training:  # torch.nn: dropout on every layer's output but the last
            x = nn.functional.dropout(x, module.dropout, training=True)
        taps = Layer(x=torch.zeros_like(x, requires_grad=True))
        b_ih = getattr(module, f"bias_ih_l{layer}") if module.bias else None
        projected = nn.functional.linear(x + taps.x, getattr(module, f"weight_ih_l{layer}"), b_ih)  # (T, B, G*H)
        h, c = h0[layer], (c0[layer] if lstm else None)
        outputs = []
        for xw in projected.unbind(0):
            tap_total = torch.zeros_like(c, requires_grad=True) if lstm else None
            h, c = _step(module, layer, xw, h, c, tap_total)
            tap_h = torch.zeros_like(h, requires_grad=True)
            h = h + tap_h
            taps.h.append(tap_h)
            if lstm:
                tap_c = torch.zeros_like(c, requires_grad=True)
                c = c + tap_c
                taps.c.append(tap_total)
                taps.c_handed.append(tap_c)
            outputs.append(h)
        taps.final = [h, c] if lstm else [h]
        record.append(taps)
        x = torch.stack(outputs)  # (T, B, H): the next layer's input
        finals_h.append(h)
        finals_c.append(c)
    out = x.squeeze(1) if unbatched else (x.transpose(0, 1) if module.batch_first else x)
    h_n = torch.stack(finals_h)  # (L, B, H)
    if unbatched:
        h_n = h_n.squeeze(1)
    if lstm:
        c_n = torch.stack(finals_c)
        return out, (h_n, c_n.squeeze(1) if unbatched else c_n)
    return out, h_n


@contextlib.contextmanager
def _measured(modules: dict[str, nn.RNNBase], on_call: Callable[[str, list[Layer]], None],
              when: Callable[[str], bool] = lambda name: True) -> Iterator[None]:
    """Each module's forward replaced by the stepwise one on the calls with gradients that `when(name)`
    accepts (the fused one on the rest); on_call(name, layers) sees each measured call's taps before any
    backward. The class's forward comes back on exit."""
    for name, module in modules.items():
        fused = type(module).forward

        def forward(self, inputs, hx=None, _name=name, _fused=fused):
            if torch.is_grad_enabled() and when(_name):
                record: list[Layer] = []
                out = _stepwise_forward(self, record, inputs, hx)
                on_call(_name, record)
                return out
            return _fused(self, inputs, hx)

        module.forward = types.MethodType(forward, module)
    try:
        yield
    finally:
        for module in modules.values():
            module.__dict__.pop("forward", None)


def _to_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def gradient_flow(model: nn.Module, loss_fn: Callable[[], torch.Tensor], probes: tuple[str, ...] = ("hidden", "input"),
                  jacobian_batch: int = 2) -> dict:
    """||dL/dh_t|| (and the total ||dL/dc_t||: every path from c_t, the one through h_t included), ||dL/dx_t||
    and the spectra of ds_{T-1}/ds_t for every torch.nn RNN/GRU/LSTM inside `model`, per layer, for the loss
    `loss_fn()` returns (it calls the model).

    probes: any of "hidden", "input", "jacobian" (every singular value of each layer's own state Jacobian
    ds_{T-1}/ds_t, s = h or (h, c), for the first `jacobian_batch` sequences: D backward passes).
    Returns the gradient-decay study's tables: "results" (module, layer, call, probe, wrt, t, distance,
    grad_norm; norms are RMS over the batch of per-sequence norms) and, with "jacobian", "spectrum"
    (module, layer, call, t, distance, sequence, rank, singular_value). Parameter gradients are not touched.
    """
    unknown = sorted(set(probes) - set(FLOW_PROBES))
    if unknown or not probes:
        raise ValueError(f"unknown probe {', '.join(map(repr, unknown)) or '(none given)'}; gradlab.flow measures: {', '.join(FLOW_PROBES)}.")
    modules = recurrent_modules(model)
    calls: dict[str, list[list[Layer]]] = {name: [] for name in modules}
    with _measured(modules, lambda name, layers: calls[name].append(layers)):
        loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else ' of shape ' + str(tuple(loss.shape))}.")
    if not any(calls.values()):
        raise ValueError("loss_fn never called a recurrent layer of the model with gradients enabled: nothing to measure.")
    targets, where = [], []  # every tap, and (module, call, layer, probe, wrt, t) of each
    for name, per_call in calls.items():
        for k, layers in enumerate(per_call):
            for li, layer in enumerate(layers):
                if "hidden" in probes:
                    for wrt, taps in layer.state_taps().items():
                        for t, tap in enumerate(taps):
                            targets.append(tap)
                            where.append((name, k, li, "hidden", wrt, t, len(taps)))
                if "input" in probes:
                    targets.append(layer.x)
                    where.append((name, k, li, "input", "x", None, layer.x.shape[0]))
    rows = []
    if targets:
        grads = torch.autograd.grad(loss, targets, allow_unused=True, retain_graph="jacobian" in probes)
        for (name, k, li, probe, wrt, t, T), tap, g in zip(where, targets, grads):
            g = torch.zeros_like(tap) if g is None else g  # no path from the loss: exactly 0
            steps = [t] if t is not None else range(T)
            norms = _rms_norms([g] if t is not None else list(g.unbind(0))).tolist()
            rows += [{"module": name, "layer": li, "call": k, "probe": probe, "wrt": wrt, "t": ts, "distance": T - 1 - ts, "grad_norm": v}
                     for ts, v in zip(steps, norms)]
    tables = {"results": _to_frame(rows)}
    if "jacobian" in probes:
        tables["spectrum"] = _to_frame([
            {"module": name, "layer": li, "call": k, **row}
            for name, per_call in calls.items() for k, layers in enumerate(per_call) for li, layer in enumerate(layers)
            for row in _spectrum_rows(layer, jacobian_batch)
        ])
    return tables


def _spectrum_rows(layer: Layer, jacobian_batch: int) -> list[dict]:
    """Every singular value of d s_{T-1} / d s_t for the first `jacobian_batch` sequences of one layer.
    Inside a stack, a layer's state reaches its own last state only through its own recurrence, so the
    graph's Jacobian is the layer's own."""
    parts = layer.handed_taps()
    T = len(parts[0])
    spectra = spectra_from_taps(layer.final, [[taps[t] for taps in parts] for t in range(T)], jacobian_batch)  # (T, n, D)
    return [{"t": t, "distance": T - 1 - t, "sequence": b, "rank": r, "singular_value": v}
            for t, per_step in enumerate(spectra.tolist()) for b, per_seq in enumerate(per_step) for r, v in enumerate(per_seq)]


class Recorder:
    """Records ||dL/dh_t|| (and the total ||dL/dc_t||) per layer from your own training loop's backward, every
    `every`-th training call of each watched layer; see `watch`."""

    def __init__(self, model: nn.Module, every: int = 100):
        if every < 1:
            raise ValueError(f"every must be >= 1 (record one call in every N), got {every}.")
        self.every = every
        self.modules = recurrent_modules(model)
        self.seen = {name: 0 for name in self.modules}  # training calls (gradients enabled) so far
        self.records: list[dict] = []  # per measured call: (module, step, layer, wrt, t, T) -> its norm, filled during backward
        self._context = _measured(self.modules, self._hooks, self._due)
        self._context.__enter__()
        self._open = True

    def _due(self, name: str) -> bool:
        self.seen[name] += 1
        return (self.seen[name] - 1) % self.every == 0

    def _hooks(self, name: str, layers: list[Layer]) -> None:
        """One slot per tap of a measured call, and a hook on each that fills its slot with the norm when the
        user's backward reaches it."""
        step = self.seen[name] - 1
        call: dict[tuple, torch.Tensor | None] = {}
        for li, layer in enumerate(layers):
            for wrt, taps in layer.state_taps().items():
                for t, tap in enumerate(taps):
                    where = (name, step, li, wrt, t, len(taps))
                    call[where] = None
                    tap.register_hook(self._store(call, where))
        self.records.append(call)

    @staticmethod
    def _store(call: dict, where: tuple):
        def hook(grad: torch.Tensor) -> None:
            call[where] = _rms_norms([grad.detach()])[0]
        return hook

    def table(self):
        """The records so far: module, step (the layer's training call, from 0), layer, probe, wrt, t, distance,
        grad_norm (dL/dh_t and the total dL/dc_t). A call that has been through a backward gives every state: one
        the loss has no path from reads 0; a call not yet through one is left out."""
        rows = [{"module": m, "step": s, "layer": li, "probe": "hidden", "wrt": wrt, "t": t, "distance": T - 1 - t,
                 "grad_norm": 0.0 if v is None else float(v)}
                for call in self.records if any(v is not None for v in call.values())
                for (m, s, li, wrt, t, T), v in call.items()]
        frame = _to_frame(rows)
        return frame.sort_values(["module", "step", "layer", "wrt", "t"], ignore_index=True) if len(frame) else frame

    def figure(self, path: str | Path | None = None):
        """||dL/dh_t|| against distance from the loss, one line per recorded step (coloured by step), one
        panel per module, layer and state part; saved to `path` (PNG, or SVG/PDF by suffix) when given."""
        from .report.figures import close, flow_over_training

        frame = self.table()
        if not len(frame):
            raise ValueError("nothing recorded yet: the watched layers have not been through a backward pass on a recorded step.")
        fig = flow_over_training(frame)
        if path is not None:
            fig.savefig(path, dpi=110, bbox_inches="tight")
            close(fig)
        return fig

    def close(self) -> None:
        """Give every watched layer its fused forward back (records are kept)."""
        if self._open:
            self._context.__exit__(None, None, None)
            self._open = False

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def watch(model: nn.Module, every: int = 100) -> Recorder:
    """Record the gradient flow of every torch.nn RNN/GRU/LSTM inside `model` from your own training loop,
    the way wandb.watch is used: the first training call and every `every`-th after it run step by step
    (torch.nn's equations, the same outputs and parameter gradients to float rounding), and your own
    backward fills in ||dL/dh_t|| for every layer and step. Calls without gradients (evaluation) are
    neither counted nor measured. `recorder.table()`, `recorder.figure(path)`; `close()` (or a `with`
    block) restores the fused forward.

        recorder = gradlab.flow.watch(model, every=50)
        for step, (x, y) in enumerate(batches):
            loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            if step % 500 == 0:
                recorder.figure("flow.png")
    """
    return Recorder(model, every)
