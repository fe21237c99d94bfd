"""gradlab's gradient-flow instruments on your own model: every torch.nn.RNN, GRU and LSTM inside any module,
and every gradlab cell (gradlab.cells.create: linear, rnn, gru, lstm, lru, mingru, minlstm, in any impl), per layer,
for your own loss (`gradient_flow`), and a recorder for your own training loop (`watch`).

Measured calls run each watched layer one step at a time from the module's own parameters (torch.nn's
equations, so outputs and parameter gradients are torch.nn's to float rounding; a gradlab cell's own step) with a
zero "tap" added to every state; the gradient w.r.t. a tap is the gradient w.r.t. that state. Other calls run the
fused kernel (a gradlab cell: its own forward).
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import types
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .cells import FusedCell, ModernCell, ScratchCell, convert, output_gate_of, output_of, state_parts
from .probes import _rms_norms, spectra_from_taps

RECURRENT = (nn.RNN, nn.GRU, nn.LSTM)
GRADLAB_CELLS = (ScratchCell, FusedCell, ModernCell)  # gradlab's own cells, whatever the impl
FLOW_PROBES = ("hidden", "input", "gates", "weights", "jacobian")
CELL_PROBES = ("hidden", "input", "jacobian")  # what the instruments read on a gradlab cell (gates and weights read torch.nn's layout)


def is_cell(module: nn.Module) -> bool:
    """A gradlab cell (gradlab.cells.create), not a torch.nn layer."""
    return isinstance(module, GRADLAB_CELLS)


@dataclass
class Layer:
    """One layer's taps from one measured call: per step h (and c), the layer's whole input, its last state."""

    h: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H) on the h_t handed on
    c: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H), LSTM only: on c_t before h_t is formed from it (total dL/dc_t)
    c_handed: list[torch.Tensor] = field(default_factory=list)  # T taps (B, H), LSTM only: on the c_t handed on (the state Jacobian's)
    x: torch.Tensor | None = None  # tap on the layer's input (T, B, I)
    final: list[torch.Tensor] = field(default_factory=list)  # [h_{T-1}] or [h_{T-1}, c_{T-1}] (B, H)
    pre: list[torch.Tensor] = field(default_factory=list)  # T taps (B, G*H) on each gate's pre-activation, torch.nn's gate order
    hw: list[torch.Tensor] = field(default_factory=list)  # T taps (B, G*H) on h_{t-1} W_hh^T + b_hh: dL/dW_hh = sum_t tap_t^T h_{t-1}
    h_before: list[torch.Tensor] = field(default_factory=list)  # T states h_{t-1} (B, H), without gradient
    gates: tuple[str, ...] = ()  # the gates' names, in torch.nn's order
    module: nn.RNNBase | None = None  # the layer's module, and which of its layers
    index: int = 0
    projected: torch.Tensor | None = None  # (T, B, G*H) x_t W_ih^T + b_ih, without gradient
    initial: list[torch.Tensor] = field(default_factory=list)  # the state before step 0: [h] or [h, c] (B, H)
    states: list[list[torch.Tensor]] = field(default_factory=list)  # per step the state handed on, [h] or [h, c], without gradient
    raw: torch.Tensor | None = None  # a gradlab cell's inputs (T, B, I) or token ids (T, B), without gradient (its Jacobians project them)

    def state_taps(self) -> dict[str, list[torch.Tensor]]:
        """The taps whose gradients are the total dL/dh_t and dL/dc_t."""
        return {"h": self.h, "c": self.c} if self.c else {"h": self.h}

    def handed_taps(self) -> list[list[torch.Tensor]]:
        """The taps on the state handed from step t to t+1 ((h_t, c_t) independent), for ds_{T-1}/ds_t."""
        return [self.h, self.c_handed] if self.c else [self.h]


def unsupported(module: nn.RNNBase) -> str | None:
    """Why gradlab.flow cannot measure a layer (None: it can)."""
    if is_cell(module):
        return None
    if module.bidirectional:
        return "bidirectional (a backward direction has its own time axis): gradlab.flow measures unidirectional layers only"
    if getattr(module, "proj_size", 0):
        return f"proj_size {module.proj_size}: gradlab.flow measures LSTMs without projections only"
    return None


def recurrent_modules(model: nn.Module, skipped: dict[str, str] | None = None) -> dict[str, nn.RNNBase]:
    """Every torch.nn.RNN/GRU/LSTM inside `model` that the instruments can drive, by its name there ('' for the
    model itself). One they cannot (bidirectional, projected) is left out and named in `skipped` (name ->
    why) with a warning; an error says what is supported when none is left."""
    cells = [name for name, m in model.named_modules() if is_cell(m)]
    inside = lambda name: any(name.startswith(f"{c}.") if c else name != c for c in cells)  # noqa: E731  (a FusedCell's own torch.nn layer)
    found = {name: m for name, m in model.named_modules() if is_cell(m) or (isinstance(m, RECURRENT) and not inside(name))}
    if not found:
        raise ValueError(
            f"no torch.nn.RNN, GRU or LSTM inside {type(model).__name__}, nor any gradlab cell: gradlab.flow measures those "
            "(torch.nn's: any number of layers, batch_first or not; gradlab's: any cell from gradlab.cells.create, any impl)."
        )
    left_out = {name: why for name, m in found.items() if (why := unsupported(m))}
    usable = {name: m for name, m in found.items() if name not in left_out}
    described = "; ".join(f"{type(found[n]).__name__} {n or '(the model)'} is {why}" for n, why in left_out.items())
    if not usable:
        raise ValueError(f"nothing gradlab.flow can measure: {described}.")
    if left_out:
        warnings.warn(f"gradlab.flow measures {', '.join(n or '(the model)' for n in usable)} and leaves out {described}.", stacklevel=3)
        if skipped is not None:
            skipped.update(left_out)
    return usable


GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",)}  # torch.nn's chunk order; 'h': the RNN's pre-activation


def _kind(module: nn.RNNBase) -> str:
    """'LSTM', 'GRU' or 'RNN' (a subclass of one is that one)."""
    return next(kind for kind in ("LSTM", "GRU", "RNN") if isinstance(module, getattr(nn, kind)))


def _step(module: nn.RNNBase, layer: int, xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, tap_c: torch.Tensor | None = None,
          tap_pre: torch.Tensor | None = None, tap_hw: torch.Tensor | None = None):
    """One step of layer `layer` from its projected input xw = x W_ih^T + b_ih (B, G*H), torch.nn's equations;
    tap_c (LSTM) is added to c_t before h_t is formed from it, tap_pre to the gates' pre-activations (B, G*H)
    and tap_hw to h_{t-1} W_hh^T + b_hh. Zero taps leave every value as it was."""
    w_hh = getattr(module, f"weight_hh_l{layer}")
    b_hh = getattr(module, f"bias_hh_l{layer}") if module.bias else None
    hw = nn.functional.linear(h, w_hh, b_hh)  # (B, G*H)
    if tap_hw is not None:
        hw = hw + tap_hw
    if isinstance(module, nn.GRU):
        x_r, x_z, x_n = xw.chunk(3, dim=1)
        h_r, h_z, h_n = hw.chunk(3, dim=1)
        pre_r, pre_z = x_r + h_r, x_z + h_z
        r = torch.sigmoid(pre_r if tap_pre is None else pre_r + tap_pre[:, : h.shape[1]])
        pre_n = x_n + r * h_n
        if tap_pre is not None:
            pre_z, pre_n = pre_z + tap_pre[:, h.shape[1] : 2 * h.shape[1]], pre_n + tap_pre[:, 2 * h.shape[1] :]
        z, n = torch.sigmoid(pre_z), torch.tanh(pre_n)
        return (1 - z) * n + z * h, None
    pre = xw + hw
    if tap_pre is not None:
        pre = pre + tap_pre
    if isinstance(module, nn.LSTM):
        i, f, g, o = pre.chunk(4, dim=1)  # torch.nn's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c = c if tap_c is None else c + tap_c
        return torch.sigmoid(o) * torch.tanh(c), c
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    return act(pre), None


def _stepwise_forward(module: nn.RNNBase, record: list[Layer], inputs, hx=None, gate_taps: bool = True):
    """torch.nn's forward(input, hx) one step at a time with taps; appends one Layer per layer to `record`.
    gate_taps False: no taps on the gates' pre-activations and on h_{t-1} W_hh^T (Layer.pre and .hw stay empty;
    the gates and weights probes need them), two (B, G*H) tensors less per step in the graph."""
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
        taps = Layer(x=torch.zeros_like(x, requires_grad=True), gates=GATES[_kind(module)], module=module, index=layer)
        b_ih = getattr(module, f"bias_ih_l{layer}") if module.bias else None
        projected = nn.functional.linear(x + taps.x, getattr(module, f"weight_ih_l{layer}"), b_ih)  # (T, B, G*H)
        h, c = h0[layer], (c0[layer] if lstm else None)
        outputs = []
        taps.projected = projected.detach()
        taps.initial = [h.detach()] + ([c.detach()] if lstm else [])
        for xw in projected.unbind(0):
            tap_total = torch.zeros_like(c, requires_grad=True) if lstm else None
            tap_pre = tap_hw = None
            if gate_taps:
                tap_pre, tap_hw = torch.zeros_like(xw, requires_grad=True), torch.zeros_like(xw, requires_grad=True)
                taps.pre.append(tap_pre)
                taps.hw.append(tap_hw)
            taps.h_before.append(h.detach())
            h, c = _step(module, layer, xw, h, c, tap_total, tap_pre, tap_hw)
            tap_h = torch.zeros_like(h, requires_grad=True)
            h = h + tap_h
            taps.h.append(tap_h)
            if lstm:
                tap_c = torch.zeros_like(c, requires_grad=True)
                c = c + tap_c
                taps.c.append(tap_total)
                taps.c_handed.append(tap_c)
            taps.states.append([h.detach()] + ([c.detach()] if lstm else []))
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


def _cell_forward(cell, record: list[Layer], inputs: torch.Tensor, state=None, gate_taps: bool = True):
    """A gradlab cell's forward(x, state) -> (outputs (T, B, H), state), one step at a time through its own step (the
    loop's, a one-step scan, or the fused kernel with T = 1) with taps: on the input (float inputs; token ids have
    none), on each h_t handed on, and for the LSTM on c_t twice, before h_t is formed from it (the total dL/dc_t, its
    path through h_t = o_t tanh(c_t) added as gradlab.probes does) and as handed on (the state Jacobian's). The
    outputs are each step's output (h_t; the lru's readout of its state); the values are the cell's own."""
    x_tap = torch.zeros_like(inputs, requires_grad=True) if inputs.is_floating_point() else None
    x = inputs if x_tap is None else inputs + x_tap
    layer = Layer(x=x_tap, gates=tuple(cell.family.gates), module=cell, index=0)
    steps, ctx = cell.prepare(x)
    state = cell.init_state(x.shape[1]) if state is None else state
    lstm = len(cell.family.state) > 1
    output_gate = output_gate_of(cell, inputs.detach()) if lstm else None
    layer.raw = inputs.detach()
    layer.initial = [p.detach() for p in state_parts(state)]
    outputs = []
    for t, inp in enumerate(steps):
        h_before = state_parts(state)[0]
        parts = state_parts(cell.step(inp, state, ctx))
        tap_h = torch.zeros_like(parts[0], requires_grad=True)
        if lstm:
            h, c = parts
            tap_total, tap_c = torch.zeros_like(c, requires_grad=True), torch.zeros_like(c, requires_grad=True)
            c_total = c + tap_total
            o = output_gate(t, h_before)  # free of c_t: a constant for the path through tanh(c_t)
            parts = [h + o * (torch.tanh(c_total) - torch.tanh(c)) + tap_h, c_total + tap_c]
            layer.c.append(tap_total)
            layer.c_handed.append(tap_c)
        else:
            parts = [parts[0] + tap_h]
        layer.h.append(tap_h)
        state = tuple(parts) if lstm else parts[0]
        layer.states.append([p.detach() for p in parts])
        outputs.append(output_of(cell, state, inp))
    layer.final = list(parts)
    record.append(layer)
    return torch.stack(outputs), state


def _cell_spectra(layer: Layer, sequences: int | None = None, chunk: int = 64) -> torch.Tensor:
    """(T, n, D) every singular value of d s_{T-1} / d s_t of a gradlab cell (float64, largest first), as chained_spectra
    does for torch.nn's: each step's own Jacobian from one vectorised reverse pass, through the scratch twin's step
    (the same function: the fused kernel and the one-step scan are no functions torch.func can differentiate by
    vmap), chained from the last step back."""
    cell = layer.module
    twin = cell if isinstance(cell, ScratchCell) else convert(cell, "scratch")
    step_of = getattr(twin, "loop_step", twin.step)
    with torch.no_grad():
        projected = twin.project(layer.raw)  # (T, B, K)
    B = projected.shape[1]
    n = B if sequences is None else min(sequences, B)
    parts = len(layer.initial)
    H = layer.initial[0].shape[-1]
    before = [layer.initial] + layer.states[:-1]
    s_prev = torch.stack([torch.cat(p, dim=-1)[:n] for p in before])  # (T, n, D)
    xw = projected[:, :n]  # (T, n, K)
    with torch.no_grad():
        weights = twin.recurrent()

    def step(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # one sequence: (D,), (K,) -> (D,)
        state = tuple(s[k * H : (k + 1) * H][None] for k in range(parts))
        inp = twin.per_step(x[None, None])[0]
        out = state_parts(step_of(inp, state if parts > 1 else state[0], weights))
        return torch.cat([p[0] for p in out])

    local = torch.func.vmap(torch.func.jacrev(step))
    flat_s, flat_x = s_prev[1:].reshape(-1, s_prev.shape[-1]), xw[1:].reshape(-1, xw.shape[-1])
    with torch.no_grad():
        pieces = [local(flat_s[i : i + chunk], flat_x[i : i + chunk]) for i in range(0, len(flat_s), chunk)]
    T, D = s_prev.shape[0], s_prev.shape[-1]
    steps = torch.cat(pieces).view(T - 1, n, D, D) if pieces else s_prev.new_zeros(0, n, D, D)
    jac = torch.eye(D, dtype=s_prev.dtype, device=s_prev.device).expand(n, D, D)
    out = [torch.linalg.svdvals(jac.double())]
    for t in range(T - 2, -1, -1):
        jac = jac @ steps[t]
        out.append(torch.linalg.svdvals(jac.double()))
    return torch.stack(out[::-1])


class _Forward:
    """A watched layer's forward: step by step with taps on the calls `when` accepts, the fused kernel on the
    rest. A copy of the model (copy.deepcopy: keeping the best model, an EMA) gets the class's plain forward,
    not this one: it is not instrumented and records nothing into this recorder. So does a pickled one
    (torch.save(model)): it is saved as the class's forward, the recorder is not saved, and torch.load gives a
    plain model (gradlab is not needed to load it)."""

    def __init__(self, module: nn.RNNBase, name: str, on_call, when, gate_taps: bool = True):
        self.module, self.name, self.on_call, self.when, self.gate_taps = module, name, on_call, when, gate_taps
        self.fused = type(module).forward

    def __call__(self, inputs, hx=None):
        if torch.is_grad_enabled() and self.when(self.name, self.module):
            record: list[Layer] = []
            forward = _cell_forward if is_cell(self.module) else _stepwise_forward
            out = forward(self.module, record, inputs, hx, self.gate_taps)
            self.on_call(self.name, record)
            return out
        return self.fused(self.module, inputs, hx)

    def __deepcopy__(self, memo):
        twin = memo.get(id(self.module), self.module)  # the copy of the module this forward belongs to
        return types.MethodType(type(self.module).forward, twin)

    def __reduce__(self):
        # Pickled as getattr(module, "forward"): at load the module exists (pickle memoises it before its state) and
        # has no instance attributes yet, so that is the class's forward bound to it; the recorder (its hooks, its
        # context, its records) stays behind.
        return getattr, (self.module, "forward")


def watched(module: nn.RNNBase) -> bool:
    return isinstance(module.__dict__.get("forward"), _Forward)


@contextlib.contextmanager
def _measured(modules: dict[str, nn.RNNBase], on_call: Callable[[str, list[Layer]], None],
              when: Callable[[str, nn.RNNBase], bool] = lambda name, module: True, gate_taps: bool = True) -> Iterator[None]:
    """Each module's forward replaced by the stepwise one on the calls with gradients that `when(name, module)`
    accepts (the fused one on the rest); on_call(name, layers) sees each measured call's taps before any
    backward (gate_taps False: without the gates' and W_hh's taps). The class's forward comes back on exit. A
    module already watched is an error."""
    busy = [name or "(the model)" for name, m in modules.items() if watched(m)]
    if busy:
        raise ValueError(f"{', '.join(busy)} {'is' if len(busy) == 1 else 'are'} already watched by another gradlab.flow recorder "
                         "(or inside gradient_flow): close() that one first; one recorder watches a layer at a time.")
    for name, module in modules.items():
        module.forward = _Forward(module, name, on_call, when, gate_taps)
    try:
        yield
    finally:
        for module in modules.values():
            module.__dict__.pop("forward", None)


def _to_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _skipped_frame(skipped: dict[str, str]):
    """The layers left out, one row each: module (its name in the model) and because (why). Both gradient_flow's
    tables["skipped"] and recorder.skipped are this, empty (with these columns) when nothing was left out."""
    import pandas as pd

    return pd.DataFrame({"module": list(skipped), "because": list(skipped.values())}, columns=["module", "because"])


def gradient_flow(model: nn.Module, loss_fn: Callable[[], torch.Tensor], probes: tuple[str, ...] = ("hidden", "input"),
                  jacobian_batch: int = 2) -> dict:
    """||dL/dh_t|| (and the total ||dL/dc_t||: every path from c_t, the one through h_t included), ||dL/dx_t||,
    the gates and W_hh's gradient by step, and the spectra of ds_{T-1}/ds_t for every torch.nn RNN/GRU/LSTM
    inside `model`, per layer, for the loss `loss_fn()` returns (it calls the model); and for every gradlab cell inside
    it (gradlab.cells.create, any cell and impl: its state s, h or (h, c) or the lru's (Re h, Im h)) the probes hidden,
    input (float inputs) and jacobian.

    probes: any of "hidden", "input", "gates" (||dL/da_t|| for each gate's pre-activation a, torch.nn's gate
    order: i, f, g, o; r, z, n; h for the RNN), "weights" (each step's part of dL/dW_hh, dL/d(h_{t-1} W_hh^T)^T
    h_{t-1}: its norm, and its share of the call's own dL/dW_hh (the sum of that call's parts; not W_hh.grad, which
    also sums every other call of the layer): the part's projection on it over its squared norm, which sums to 1
    over the steps, or 0 at every step when the call's dL/dW_hh is exactly 0) and "jacobian" (every singular value of each layer's own state Jacobian
    ds_{T-1}/ds_t, s = h or (h, c), for the first `jacobian_batch` sequences).
    Returns the gradient-decay study's tables: "results" (module, layer, call, probe, wrt, t, distance,
    grad_norm, and share for weights; norms are RMS over the batch of per-sequence norms) and, with "jacobian",
    "spectrum" (module, layer, call, t, distance, sequence, rank, singular_value, and rounding_floor: the layer's
    dtype's machine epsilon times that Jacobian's largest singular value, below which a singular value is float
    rounding: a float32 model's small singular values far from the loss are mostly that). Parameter gradients are not
    touched. A layer it cannot measure (bidirectional, proj_size) is left out with a warning; "skipped" lists them
    (module, because), empty when none was: the same table as recorder.skipped.
    """
    unknown = sorted(set(probes) - set(FLOW_PROBES))
    if unknown or not probes:
        raise ValueError(f"unknown probe {', '.join(map(repr, unknown)) or '(none given)'}; gradlab.flow measures: {', '.join(FLOW_PROBES)}.")
    skipped: dict[str, str] = {}
    modules = recurrent_modules(model, skipped)
    refuse_cell_probes(modules, probes)
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
                for probe, wrt, tap, t, T in _taps(layer, probes):
                    targets.append(tap)
                    where.append((name, k, li, probe, wrt, t, T, layer))
    rows = []
    if targets:
        grads = torch.autograd.grad(loss, targets, allow_unused=True)
        grads = [torch.zeros_like(tap) if g is None else g for tap, g in zip(targets, grads)]  # no path from the loss: exactly 0
        rows = _rows(where, grads)
    tables = {"results": _to_frame(rows)}
    if "jacobian" in probes:
        import pandas as pd

        tables["spectrum"] = pd.concat([_spectrum_frame(layer, jacobian_batch).assign(module=name, layer=li, call=k)
                                        for name, per_call in calls.items() for k, layers in enumerate(per_call) for li, layer in enumerate(layers)],
                                       ignore_index=True)[["module", "layer", "call", "t", "distance", "sequence", "rank", "singular_value",
                                                           "rounding_floor"]]
    tables["skipped"] = _skipped_frame(skipped)
    return tables


def refuse_cell_probes(modules: dict, probes) -> None:
    """A ValueError where a probe that reads torch.nn's gate layout (gates, weights) is asked of a gradlab cell."""
    cells = [name or "(the model)" for name, m in modules.items() if is_cell(m)]
    wrong = [p for p in probes if p not in CELL_PROBES]
    if cells and wrong:
        raise ValueError(f"probe{'s' * (len(wrong) > 1)} {', '.join(wrong)} read{'s' * (len(wrong) == 1)} torch.nn's gate layout; "
                         f"{', '.join(cells)} {'is a gradlab cell' if len(cells) == 1 else 'are gradlab cells'}, on which gradlab.flow "
                         f"measures {', '.join(CELL_PROBES)} (gradlab.probes has the rest for its own cells).")


def _taps(layer: Layer, probes) -> Iterator[tuple[str, str, torch.Tensor, int | None, int]]:
    """(probe, wrt, tap, t, T) for every tap a probe reads: per step, or one tap for all steps (t None)."""
    T = len(layer.h)
    if "hidden" in probes:
        for wrt, taps in layer.state_taps().items():
            for t, tap in enumerate(taps):
                yield "hidden", wrt, tap, t, T
    if "input" in probes and layer.x is not None:  # a gradlab cell fed token ids has no input tap
        yield "input", "x", layer.x, None, T
    if "gates" in probes:
        for t, tap in enumerate(layer.pre):
            yield "gates", "pre", tap, t, T
    if "weights" in probes:
        for t, tap in enumerate(layer.hw):
            yield "weights", "W_hh", tap, t, T


def _rows(where: list, grads: list[torch.Tensor]) -> list[dict]:
    """Result rows from each tap's gradient: a state's norm per step, the input's per step, each gate's per step,
    and each step's part of dL/dW_hh (its norm and its share of the call's own dL/dW_hh, the sum of its steps'
    parts; 0 for every step where that sum is exactly 0: no step carries any)."""
    rows = []
    weights: dict[tuple, list] = {}
    for (name, k, li, probe, wrt, t, T, layer), g in zip(where, grads):
        base = {"module": name, "layer": li, "call": k, "probe": probe}
        if probe == "gates":
            H = g.shape[-1] // len(layer.gates)
            for gate, part in zip(layer.gates, g.split(H, dim=-1)):
                rows.append(base | {"wrt": gate, "t": t, "distance": T - 1 - t, "grad_norm": float(_rms_norms([part])[0])})
        elif probe == "weights":
            weights.setdefault((name, k, li), []).append((t, T, g.detach().double().transpose(0, 1) @ layer.h_before[t].double()))  # (G*H, H)
        else:
            steps = [t] if t is not None else range(T)
            norms = _rms_norms([g] if t is not None else list(g.unbind(0))).tolist()
            rows += [base | {"wrt": wrt, "t": ts, "distance": T - 1 - ts, "grad_norm": v} for ts, v in zip(steps, norms)]
    for (name, k, li), parts in weights.items():
        whole = sum(part for _, _, part in parts)
        energy = float(whole.pow(2).sum())
        for t, T, part in parts:
            rows.append({"module": name, "layer": li, "call": k, "probe": "weights", "wrt": "W_hh", "t": t, "distance": T - 1 - t,
                         "grad_norm": float(part.norm()), "share": float((part * whole).sum()) / energy if energy else 0.0})
    return rows


def _spectrum_frame(layer: Layer, jacobian_batch: int):
    """Every singular value of d s_{T-1} / d s_t for the first `jacobian_batch` sequences of one layer, one row each
    (t, distance, sequence, rank, singular_value, rounding_floor). Inside a stack, a layer's state reaches its own
    last state only through its own recurrence, so the graph's Jacobian is the layer's own. rounding_floor: the
    machine epsilon of the layer's dtype (the Jacobians are chained in it) times that Jacobian's largest singular
    value; a singular value below it is float rounding, not the model's."""
    import numpy as np
    import pandas as pd

    spectra = (_cell_spectra if is_cell(layer.module) else chained_spectra)(layer, jacobian_batch).cpu().numpy()  # (T, n, D)
    T, n, D = spectra.shape
    t, b, r = np.meshgrid(np.arange(T), np.arange(n), np.arange(D), indexing="ij")
    floor = torch.finfo(layer.initial[0].dtype).eps * spectra[..., :1]  # largest first
    return pd.DataFrame({"t": t.ravel(), "distance": T - 1 - t.ravel(), "sequence": b.ravel(), "rank": r.ravel(), "singular_value": spectra.ravel(),
                         "rounding_floor": np.broadcast_to(floor, spectra.shape).ravel()})


def chained_spectra(layer: Layer, sequences: int | None = None, chunk: int = 64) -> torch.Tensor:
    """(T, n, D) every singular value of d s_{T-1} / d s_t (float64, largest first) for the first n sequences, as
    the product of the steps' own Jacobians d s_{t+1} / d s_t, each from one vectorised reverse pass over one
    step (torch.func.jacrev under vmap), chained from the last step back: T small products instead of D
    backward passes through the whole sequence. Equal to backpropagating every basis vector (spectra_from_taps)
    to float rounding."""
    module, index = layer.module, layer.index
    B = layer.projected.shape[1]
    n = B if sequences is None else min(sequences, B)
    lstm = len(layer.initial) == 2
    H = layer.initial[0].shape[-1]
    before = [layer.initial] + layer.states[:-1]  # the state each step starts from
    s_prev = torch.stack([torch.cat(parts, dim=-1)[:n] for parts in before])  # (T, n, D)
    xw = layer.projected[:, :n]  # (T, n, G*H)

    def step(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # one sequence: (D,), (G*H,) -> (D,)
        h, c = (s[:H], s[H:]) if lstm else (s, None)
        h2, c2 = _step(module, index, x[None], h[None], None if c is None else c[None])
        return torch.cat([h2[0], c2[0]]) if lstm else h2[0]

    local = torch.func.vmap(torch.func.jacrev(step))
    flat_s, flat_x = s_prev[1:].reshape(-1, s_prev.shape[-1]), xw[1:].reshape(-1, xw.shape[-1])
    with torch.no_grad():
        pieces = [local(flat_s[i : i + chunk], flat_x[i : i + chunk]) for i in range(0, len(flat_s), chunk)]
    T, D = s_prev.shape[0], s_prev.shape[-1]
    steps = torch.cat(pieces).view(T - 1, n, D, D) if pieces else s_prev.new_zeros(0, n, D, D)  # steps[t - 1] = d s_t / d s_{t-1}
    jac = torch.eye(D, dtype=s_prev.dtype, device=s_prev.device).expand(n, D, D)
    out = [torch.linalg.svdvals(jac.double())]
    for t in range(T - 2, -1, -1):  # d s_{T-1} / d s_t = d s_{T-1} / d s_{t+1} . d s_{t+1} / d s_t
        jac = jac @ steps[t]
        out.append(torch.linalg.svdvals(jac.double()))
    return torch.stack(out[::-1])


class Recorder:
    """Records ||dL/dh_t|| (and the total ||dL/dc_t||; with gates=True each gate's ||dL/da_t|| and each step's part
    of dL/dW_hh) per layer from your own training loop's backward, every `every`-th training step; see `watch`."""

    def __init__(self, model: nn.Module, every: int = 100, gates: bool = False, sinks: tuple = ()):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a whole number >= 1 (record one training step in every N), got {every!r}.")
        self.every, self.gates, self.sinks = every, gates, list(sinks)
        skipped: dict[str, str] = {}
        self.modules = recurrent_modules(model, skipped)
        if gates:
            refuse_cell_probes(self.modules, ("hidden", "gates", "weights"))
        self.skipped = _skipped_frame(skipped)  # the layers it cannot measure (module, because), as gradient_flow's tables["skipped"]
        self.seen = {name: 0 for name in self.modules}  # training calls (train mode, gradients enabled) so far
        self.global_step: int | None = None  # the caller's own step (set_step), else each layer's training calls
        self._step_of: dict[str, int] = {}
        self.records: list[dict] = []  # per measured call: where, its slots (filled during backward), then its rows
        self.unanswered = 0  # measured calls whose graph was let go before any backward reached them (left out)
        self._calls: dict[tuple[str, int], int] = {}  # measured calls so far, per module and step
        self._reached: list[dict] = []  # records the running backward has reached, finished at its end
        self._warned = False
        self._context = _measured(self.modules, self._hooks, self._due, gate_taps=gates)
        self._context.__enter__()
        self._open = True

    def set_step(self, step: int) -> None:
        """Your own global step (the optimiser's, with gradient accumulation or several calls per step): calls at
        step s are measured when s % every == 0, each recorded with its call index within the step."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"set_step takes a whole number >= 0, got {step!r}.")
        self.global_step = step

    def _due(self, name: str, module: nn.RNNBase) -> bool:
        """Whether this call is measured. A call in eval mode (a validation pass with gradients on) is not a
        training call: neither counted nor measured."""
        if not module.training:
            return False
        if self.global_step is None:
            self.seen[name] += 1
            step = self.seen[name] - 1
        else:
            step = self.global_step
        self._step_of[name] = step
        return step % self.every == 0

    def _hooks(self, name: str, layers: list[Layer]) -> None:
        """One slot per tap of a measured call, and a hook on each that fills its slot when the user's backward
        reaches it. The record keeps no tap and nothing of the graph (only, with gates=True, the states h_{t-1}
        the graph saves anyway): the graph is the user's, it keeps the taps and their hooks alive, and when it is
        let go before any backward reached the call, the record goes with it (_let_go). So the recorder holds no
        more memory than the calls' graphs the user holds, whatever the loop does (torch.autograd.grad, forwards
        without backward)."""
        step = self._step_of[name]
        call = self._calls.get((name, step), 0)
        self._calls[(name, step)] = call + 1
        record = {"module": name, "step": step, "call": call, "layers": [], "slots": {}, "zeros": {}, "done": False, "queued": False}
        probes = ("hidden", "gates", "weights") if self.gates else ("hidden",)
        for li, layer in enumerate(layers):
            record["layers"].append(Layer(gates=layer.gates, h_before=layer.h_before if self.gates else []))
            for probe, wrt, tap, t, T in _taps(layer, probes):
                key = (li, probe, wrt, t, T)
                record["slots"][key], record["zeros"][key] = None, (tap.shape, tap.dtype, tap.device)
                tap.register_hook(self._store(record, key))
        self.records.append(record)
        # The first layer's input tap (or first state's): every output of the call depends on it, so it lives exactly as long as the graph.
        first = layers[0].x if layers[0].x is not None else layers[0].h[0]  # a gradlab cell fed token ids: its first state's tap
        weakref.finalize(first, self._let_go, record).atexit = False

    def _store(self, record: dict, key: tuple):
        def hook(grad: torch.Tensor) -> None:
            record["slots"][key] = grad.detach()
            if not record["queued"]:
                record["queued"] = True
                self._reached.append(record)
                torch.autograd.Variable._execution_engine.queue_callback(self._finish_reached)
        return hook

    def _finish_reached(self) -> None:
        """At the end of a backward: every record it reached finished, then handed to the sinks (so that a sink sees
        all of that backward's records, of every watched module, in the table)."""
        reached, self._reached = self._reached, []
        for record in reached:
            self._finish(record)
        for record in reached:
            for sink in self.sinks:
                sink(record["rows"], self)

    def _finish(self, record: dict) -> None:
        """The record's rows (a tap the loss has no path to reads 0), kept; its slots and states are let go."""
        where = [(record["module"], record["call"], li, probe, wrt, t, T, record["layers"][li]) for li, probe, wrt, t, T in record["slots"]]
        grads = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(record["slots"].values(), record["zeros"].values())]
        record["rows"] = [r | {"step": record["step"]} for r in _rows(where, grads)]
        record.update(done=True, layers=None, slots={}, zeros={})

    def _let_go(self, record: dict) -> None:
        """The call's graph is gone. If no backward reached it, none ever will (torch.autograd.grad(loss, params)
        computes only the gradients it is asked for; a forward that no backward follows has none): the record is
        let go, counted in `unanswered` and said once."""
        if record["queued"] or record["done"]:
            return
        record.update(layers=None, slots={}, zeros={})
        for i in range(len(self.records) - 1, -1, -1):  # by identity, from the end: it is usually among the last
            if self.records[i] is record:
                del self.records[i]
                break
        self.unanswered += 1
        if not self._warned:
            self._warned = True
            warnings.warn(f"gradlab.flow: a measured call got no gradient at its taps ({record['module'] or 'the model'}, step {record['step']}, "
                          f"call {record['call']}): its graph was let go before any backward reached it. torch.autograd.grad(loss, params) "
                          "computes only the gradients it is asked for, and a training-mode forward with gradients on that no backward "
                          "follows has none; use loss.backward() on the measured steps, and model.eval() or torch.no_grad() for passes "
                          "that are not training. Such calls are left out of the table (recorder.unanswered counts them).", stacklevel=2)

    def table(self):
        """The records so far: module, step (the training step, yours with set_step, else the layer's training calls from
        0), call (within the step), layer, probe (hidden; gates and weights with gates=True), wrt (h, c; the gate; W_hh),
        t, distance, grad_norm (dL/dh_t and the total dL/dc_t; a gate's pre-activation; the norm of the step's part of
        dL/dW_hh), share (weights: the part's projection on the call's own dL/dW_hh, the sum of its steps' parts, over
        that sum's squared norm; it sums to 1 over the steps, or is 0 at every step where that sum is exactly 0. It
        is not a share of W_hh.grad, which also sums the step's other calls and whatever it held before).
        A call is in it once the backward that reached it has ended; one whose graph was let go with no backward
        having reached it is left out (said once, counted in `unanswered`)."""
        rows = [row for record in self.records if record["done"] for row in record["rows"]]
        frame = _to_frame(rows)
        if not len(frame):
            return frame
        frame = frame[["module", "step", "call", "layer", "probe", "wrt", "t", "distance", "grad_norm", *(["share"] if "share" in frame else [])]]
        return frame.sort_values(["module", "step", "call", "layer", "probe", "wrt", "t"], ignore_index=True)

    def figure(self, path: str | Path | None = None):
        """||dL/dh_t|| (and dL/dc_t) against distance from the loss, one line per recorded step coloured along a
        colour bar, one row of panels per module and layer, one column per state part (a layer without c, a GRU's or
        an RNN's beside an LSTM, has no dL/dc panel: no panel is empty); saved to `path` (PNG, or SVG/PDF by suffix)
        when given."""
        from .report.figures import close, flow_over_training

        frame = self.table()
        if not len(frame):
            raise ValueError("nothing recorded yet: the watched layers have not been through a backward pass on a recorded step.")
        fig = _without_empty_panels(flow_over_training(frame[frame["probe"] == "hidden"]))
        if path is not None:
            fig.savefig(path, dpi=110, bbox_inches="tight")
            close(fig)
        return fig

    def figure_at_distances(self, distances: tuple[int, ...] = (0, 10, 50), path: str | Path | None = None):
        """The norm at fixed distances from the loss against the training step: one panel per module, layer and state
        part (dL/dh before dL/dc), one line per distance, no panel empty: a distance past a sequence's length is left
        out, and a panel no chosen distance reaches is not drawn (none reached at all is an error that says how far
        the recorded sequences go)."""
        from .report.figures import close, flow_at_distances

        distances = tuple(distances)
        if not distances or any(not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 0 for d in distances):
            raise ValueError(f"distances must be whole numbers >= 0 (steps before the last), got {distances!r}.")
        frame = self.table()
        if not len(frame):
            raise ValueError("nothing recorded yet: the watched layers have not been through a backward pass on a recorded step.")
        frame = frame[frame["probe"] == "hidden"]
        if not frame["distance"].isin(distances).any():
            raise ValueError(f"no recorded sequence reaches distance {', '.join(map(str, distances))}: the recorded ones go from 0 to "
                             f"{frame['distance'].max()} steps before the last.")
        frame = frame.assign(_part=frame["wrt"].map({"h": 0, "c": 1})).sort_values(["module", "layer", "_part", "step", "call", "t"], kind="stable")
        fig = _without_empty_panels(flow_at_distances(frame.drop(columns="_part"), distances))
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


def _mark_rounding_floor(fig, spec) -> None:
    """On each singular-value panel of gradient_flow's figure: the rounding floor (eps x the largest singular value,
    median over the sequences like the largest's line) as a dashed line, what lies below it shaded, both in the
    legend, where the floor reaches into the panel's range."""
    import numpy as np
    from matplotlib.patches import Patch

    names = {float(torch.finfo(d).eps): str(d).removeprefix("torch.") for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16)}
    where = spec["module"].replace("", "model").astype(str) + " layer " + spec["layer"].astype(str)
    for ax in fig.axes:
        title = ax.get_title()
        if not title.endswith(": singular values of ds_T-1/ds_t"):
            continue
        s = spec[(where == title.removesuffix(": singular values of ds_T-1/ds_t")) & (spec["rank"] == 0)]
        floor = s.groupby("distance")["rounding_floor"].median()
        low, high = ax.get_ylim()
        if not len(floor) or floor.max() <= low:
            continue  # nothing drawn lies below it
        eps = float(np.median(s["rounding_floor"] / s["singular_value"])) if (s["singular_value"] > 0).all() else None
        dtype = next((name for e, name in names.items() if eps is not None and abs(eps - e) <= 1e-6 * e), None)
        label = f"{dtype + ' ' if dtype else ''}rounding floor: eps x largest"
        ax.plot(floor.index, floor.to_numpy(), ls="--", color="0.35", lw=1.1, label=label)
        ax.fill_between(floor.index, low, floor.to_numpy(), color="0.6", alpha=0.25, lw=0)
        ax.set_ylim(low, high)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles + [Patch(color="0.6", alpha=0.25)], labels + ["below it: rounding, not the model"], fontsize=7, loc="upper right")


def _without_empty_panels(fig):
    """The figure without its empty panels: an axes left blank in a grid (a GRU layer's dL/dc column beside an LSTM,
    the cells past the last panel of a wrapped grid) is removed, not shown as an empty frame. A colour bar stays,
    and so does a panel whose lines are there but empty (every value of it not finite, a diverged run): that is
    news, not layout."""
    for ax in list(fig.axes):
        drawn = ax.get_lines() or ax.collections or ax.images
        if not ax.get_visible() or (not drawn and ax.get_label() != "<colorbar>"):
            fig.delaxes(ax)
    return fig


class TensorBoard:
    """A sink for watch(): each record's numbers at chosen distances from the loss as TensorBoard scalars at the
    record's step, one tag per module, layer, call within the step, quantity and distance:

        gradlab.flow/MODULE/layerL/callK/dL_dh/distanceD   ||dL/dh_t|| (LSTM: also dL_dc, the total ||dL/dc_t||)
        gradlab.flow/MODULE/layerL/callK/dL_da_GATE/distanceD   with watch(gates=True): each gate's pre-activation
            (torch.nn's names: i, f, g, o; r, z, n; h for the RNN)
        gradlab.flow/MODULE/layerL/callK/dL_dW_hh_part/distanceD and .../W_hh_share/distanceD   with gates=True:
            that step's part of the call's dL/dW_hh, its norm and its share of the call's own dL/dW_hh

    K is the call's index within its step (always 0 unless several calls of a layer are recorded at one step:
    set_step with gradient accumulation), so two calls never write the same tag and step. `figure_every`: None
    (no image), or N >= 1: the recorder's figure as an image (tag gradlab.flow/figure) at the first recorded
    step and at every N-th recorded step after it. It counts recorded steps, the steps watch measures (one in
    `every` training steps): watch(every=50) with figure_every=10 draws it at steps 0, 500, 1000, ... The image
    is drawn when that step's first backward ends, from everything recorded so far. `writer`: a
    torch.utils.tensorboard.SummaryWriter (needs the tensorboard package)."""

    def __init__(self, writer, distances: tuple[int, ...] = (0, 10, 50), figure_every: int | None = None):
        if figure_every is not None and (not isinstance(figure_every, int) or isinstance(figure_every, bool) or figure_every < 1):
            raise ValueError(f"figure_every must be None (no image) or a whole number >= 1 (an image at the first recorded step "
                             f"and every N-th recorded step after it), got {figure_every!r}.")
        self.writer, self.distances, self.figure_every = writer, tuple(distances), figure_every
        self.recorded_steps, self._last_step = 0, None  # distinct recorded steps seen so far, and the latest

    def __call__(self, rows: list[dict], recorder: Recorder) -> None:
        for r in rows:
            if r["distance"] not in self.distances:
                continue
            where = f"gradlab.flow/{r['module'] or 'model'}/layer{r['layer']}/call{r['call']}"
            if r["probe"] == "hidden":
                self.writer.add_scalar(f"{where}/dL_d{r['wrt']}/distance{r['distance']}", r["grad_norm"], r["step"])
            elif r["probe"] == "gates":
                self.writer.add_scalar(f"{where}/dL_da_{r['wrt']}/distance{r['distance']}", r["grad_norm"], r["step"])
            elif r["probe"] == "weights":
                self.writer.add_scalar(f"{where}/dL_dW_hh_part/distance{r['distance']}", r["grad_norm"], r["step"])
                self.writer.add_scalar(f"{where}/W_hh_share/distance{r['distance']}", r["share"], r["step"])
        if not rows or rows[0]["step"] == self._last_step:
            return
        self._last_step = rows[0]["step"]
        self.recorded_steps += 1
        if self.figure_every and (self.recorded_steps - 1) % self.figure_every == 0:
            from .report.figures import close

            fig = recorder.figure()
            self.writer.add_figure("gradlab.flow/figure", fig, rows[0]["step"], close=False)
            close(fig)


def watch(model: nn.Module, every: int = 100, gates: bool = False, sinks: tuple = ()) -> Recorder:
    """Record the gradient flow of every torch.nn RNN/GRU/LSTM inside `model` from your own training loop,
    the way wandb.watch is used: the first training step and every `every`-th after it run step by step
    (torch.nn's equations, the same outputs and parameter gradients to float rounding), and your own
    backward fills in ||dL/dh_t|| and the total ||dL/dc_t|| for every layer and step (with gates=True also each
    gate's ||dL/da_t|| and each step's part of dL/dW_hh). A training step is a call in train mode with gradients
    enabled: a validation pass (eval mode, gradients on or off) is neither counted nor measured. Steps count
    each layer's training calls, unless you pass your own with recorder.set_step(step) (gradient accumulation,
    several calls per step: each is recorded with its call index). `sinks`: callables sink(rows, recorder) called
    with each record's rows once its backward ends (gradlab.flow.TensorBoard(writer) logs them). The recorder keeps
    nothing of a measured call's graph: a call no backward reaches (torch.autograd.grad(loss, params), a forward
    with no backward) holds memory only while you hold its graph, and is said once and counted in
    recorder.unanswered when you let it go. A copy of the model (copy.deepcopy), or one saved with
    torch.save(model) and loaded back, is a plain model. A layer it cannot measure (bidirectional, proj_size) is
    left out with a warning (recorder.skipped: a DataFrame of module and because, the same table as
    gradient_flow's tables["skipped"]). `recorder.table()`, `recorder.figure(path)`,
    `recorder.figure_at_distances()`; `close()` (or a `with` block) restores the fused forward.

        writer = torch.utils.tensorboard.SummaryWriter("runs/flow")
        recorder = gradlab.flow.watch(model, every=50, sinks=[gradlab.flow.TensorBoard(writer, figure_every=10)])  # images at 0, 500, ...
        for step, (x, y) in enumerate(batches):
            recorder.set_step(step)
            loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        recorder.close()
    """
    return Recorder(model, every, gates, sinks)


def figure(tables: dict, path: str | Path | None = None):
    """gradient_flow's tables drawn: per module and layer, the state and input gradients against distance, and the
    Jacobian's largest and median singular values where it was probed, with the dtype's rounding floor marked
    (a dashed line at eps x the largest singular value, the values below it shaded: they are float rounding, not
    the model's; drawn where it reaches into the panel); saved to `path` when given."""
    from .report.figures import close, gradient_flow_figure

    fig = gradient_flow_figure(tables)
    spec = tables.get("spectrum")
    if spec is not None and len(spec) and "rounding_floor" in spec:
        _mark_rounding_floor(fig, spec)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        close(fig)
    return fig
