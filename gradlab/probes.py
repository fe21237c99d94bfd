"""Gradient-flow instruments: ||dL/dh_t|| and the LSTM's total ||dL/dc_t||, ||dL/dx_t||, and every singular
value of the state Jacobian ds_T/ds_t.

The loss sits on the last step only, L = sum_b <g_b, h_{T-1,b}>, so every gradient at step t is the
long-range part. dL/dh_t and dL/dc_t are total derivatives (BPTT's delta_h_t, delta_c_t): every path from
h_t, or c_t, to the loss, the one through h_t = o_t tanh(c_t) included. The Jacobians are those of the
state handed from step t to step t+1, its parts (h_t, c_t) independent. Norms are RMS over the batch of
per-sequence norms.
"""

from __future__ import annotations

import torch

from .cells import Cell, exact_retention, hidden_of, output_gate_of, output_of, state_parts


def run_steps(cell: Cell, x: torch.Tensor, total_c: bool = False, outputs: list | None = None) -> tuple[list, list[list[torch.Tensor]]]:
    """Drive the cell one step at a time (the fused kernel with T=1 for cudnn), adding a zero "tap"
    to each state tensor after each step. The gradient w.r.t. a tap is the gradient w.r.t. the state
    handed on: the same quantity in both impls, whatever each computes inside a step.

    total_c (LSTM): the c tap enters before h_t = o_t * tanh(c_t) is formed from c_t (as if added to c_t inside
    the step), so its gradient is the total derivative dL/dc_t, BPTT's delta_c_t: the path through h_t and
    the path through c_{t+1}. Without it, the c tap after the step sees only the part carried on through
    c_{t+1} (0 at the last step under a loss that reads h), which the state Jacobians ds_{T-1}/ds_t want.
    Either way the forward values are the cell's own, bit for bit.
    Returns the states and the taps, T lists of ([h] or [h, c]) tensors (B, H); `outputs`, when given, receives each
    step's output (h_t, or the lru's readout of its state), formed from the tapped state."""
    inputs, ctx = cell.prepare(x)
    state = cell.init_state(x.shape[1])
    output_gate = output_gate_of(cell, x) if total_c and len(cell.family.state) > 1 else None
    states, taps = [], []
    for t, inp in enumerate(inputs):
        h_before = hidden_of(state)
        parts = state_parts(cell.step(inp, state, ctx))
        tap = [torch.zeros_like(p, requires_grad=True) for p in parts]
        if output_gate is not None:  # c_t + e reaches h_t through o_t * tanh(.): h_t + o_t (tanh(c_t + e) - tanh(c_t)) is h_t at e = 0
            h, c = parts
            o = output_gate(t, h_before)  # does not depend on c_t, so it may stand as a constant
            c_total = c + tap[1]
            parts = [h + o * (torch.tanh(c_total) - torch.tanh(c)) + tap[0], c_total]
        else:
            parts = [p + e for p, e in zip(parts, tap)]
        state = tuple(parts) if len(parts) > 1 else parts[0]
        states.append(state)
        taps.append(tap)
        if outputs is not None:
            outputs.append(output_of(cell, state, inp))
    return states, taps


def _rms_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """(T,) RMS over the batch of per-sequence L2 norms; grads are T tensors (B, D)."""
    g = torch.stack(grads).double()  # (T, B, D)
    return g.pow(2).sum(-1).mean(-1).sqrt()


def last_step_loss(state, direction: torch.Tensor) -> torch.Tensor:
    return (hidden_of(state) * direction).sum()


def hidden_grad_norms(cell: Cell, x: torch.Tensor, direction: torch.Tensor) -> dict[str, torch.Tensor]:
    """||dL/dh_t|| for every t (and the total ||dL/dc_t|| for the LSTM) from ONE backward pass."""
    states, taps = run_steps(cell, x, total_c=True)
    names = cell.family.state
    targets = [tap[k] for k in range(len(names)) for tap in taps]  # all h taps, then all c taps
    grads = torch.autograd.grad(last_step_loss(states[-1], direction), targets, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]  # no path: exactly 0
    T = len(taps)
    return {name: _rms_norms(grads[k * T : (k + 1) * T]) for k, name in enumerate(names)}


def state_grad_norms(cell: Cell, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(T,) ||dL/ds_t|| for the full state handed on (h; h and c; the lru's Re and Im), L = <g, s_{T-1}> with g a fresh
    unit-norm Gaussian direction per sequence over every part of the state: the RMS over the batch estimates the state
    Jacobian's RMS singular value ||ds_{T-1}/ds_t||_F / sqrt(D) (Hutchinson), whose fall is the state's memory (the
    LSTM's through c, where a loss on h alone falls within a step)."""
    states, taps = run_steps(cell, x)
    final = state_parts(states[-1])
    g = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in final]
    scale = torch.stack([v.pow(2).sum(-1) for v in g]).sum(0).sqrt()[:, None]  # (B, 1): every sequence's direction of norm 1
    loss = sum((p * v / scale).sum() for p, v in zip(final, g))
    targets = [e for tap in taps for e in tap]
    grads = torch.autograd.grad(loss, targets, allow_unused=True)
    grads = [torch.zeros_like(t) if d is None else d for t, d in zip(targets, grads)]
    k = len(final)
    return _rms_norms([torch.cat(grads[t * k : (t + 1) * k], dim=-1) for t in range(len(taps))])


def closed_form_hidden_norms(cell: Cell, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor | None:
    """(T,) ||dL/dh_t|| as the recurrence gives it exactly, for the loss hidden_grad_norms takes (L = <g, h_{T-1}>), where
    the cell allows it (cells.exact_retention: the modern cells, the linear cell with a scaled orthogonal W_hh), without
    any backward pass: ||dL/dh_t||^2 = sum_units g^2 prod_{s=t+1..T-1} r_s^2 per sequence, RMS over the batch (float64).
    None where no closed form exists."""
    kept = exact_retention(cell, x)
    if kept is None:
        return None
    kept_sq = kept.double().pow(2)  # (T, B, H)
    later = torch.cat([kept_sq[1:], torch.ones_like(kept_sq[:1])])  # r_{t+1}^2, and 1 past the last step
    products = torch.flip(torch.cumprod(torch.flip(later, [0]), 0), [0])  # prod_{s=t+1..T-1} r_s^2
    return (products * direction.double().pow(2)).sum(-1).mean(-1).sqrt()


def input_grad_norms(cell: Cell, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """||dL/dx_t|| for every t from a single call of the cell (one fused kernel for cudnn)."""
    x = x.detach().requires_grad_()
    _, state = cell(x)
    (grad,) = torch.autograd.grad(last_step_loss(state, direction), x)
    return _rms_norms(list(grad.unbind(0)))


def _batched_grad(outputs: list[torch.Tensor], inputs: list[torch.Tensor], grad_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Vector-Jacobian products for a batch of cotangents (leading dim D) in one vectorised backward;
    one backward per cotangent where a kernel cannot be vectorised (cuDNN's backward)."""
    try:
        return list(torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True, is_grads_batched=True, allow_unused=True))
    except RuntimeError:
        rows = [torch.autograd.grad(outputs, inputs, [g[j] for g in grad_outputs], retain_graph=True, allow_unused=True) for j in range(grad_outputs[0].shape[0])]
        return [None if r[0] is None else torch.stack(r) for r in zip(*rows)]


def jacobian_norms(cell: Cell, x: torch.Tensor) -> torch.Tensor:
    """(T,) spectral norm of d s_{T-1} / d s_t, s the full state ((h, c) for the LSTM), RMS over the batch."""
    return jacobian_spectra(cell, x)[..., 0].pow(2).mean(-1).sqrt()


def jacobian_spectra(cell: Cell, x: torch.Tensor) -> torch.Tensor:
    """(T, B, D) every singular value of d s_{T-1} / d s_t per sequence, largest first (float64)."""
    states, taps = run_steps(cell, x)
    return spectra_from_taps(state_parts(states[-1]), taps)


def spectra_from_taps(final: list[torch.Tensor], taps: list[list[torch.Tensor]], sequences: int | None = None) -> torch.Tensor:
    """(T, n, D) every singular value of d s_{T-1} / d s_t, largest first (float64), for the first n = `sequences`
    sequences (all when None), from the last state's parts (B, H) and each step's taps ([h] or [h, c]).

    Row j of every Jacobian at once: backpropagate the basis vector e_j from s_{T-1} to all s_t (zero for the
    sequences not asked for).
    """
    B, H = final[0].shape
    n = B if sequences is None else min(sequences, B)
    D = H * len(final)
    basis = torch.zeros(D, B, D, dtype=final[0].dtype, device=final[0].device)  # (D, B, D): cotangent j is e_j
    basis[:, :n] = torch.eye(D, dtype=basis.dtype, device=basis.device)[:, None, :]
    cotangents = [basis[..., k * H : (k + 1) * H] for k in range(len(final))]
    inputs = [e for tap in taps for e in tap]
    grads = _batched_grad(final, inputs, cotangents)
    grads = [torch.zeros((D, *t.shape), dtype=t.dtype, device=t.device) if g is None else g for t, g in zip(inputs, grads)]
    k = len(final)
    return torch.stack([  # (T, n, D), one step at a time: no (T, B, D, D) copy
        torch.linalg.svdvals(torch.cat(grads[t * k : (t + 1) * k], dim=-1)[:, :n].transpose(0, 1).double())
        for t in range(len(taps))
    ])


def task_loss_grad_norms(model, batch, spec) -> dict[str, torch.Tensor]:
    """||dL/dh_t|| (and ||dL/dc_t||) at every t for a task's own loss on one batch, from one backward pass.

    L sums each sequence's loss (its mean over the scored steps), so a sequence's gradient is that of its
    own loss; norms are RMS over the batch. The state gradients are taken at the interface between steps,
    as for hidden_grad_norms."""
    from .tasks.base import loss_of

    cell = model.cell
    x = model.cell_inputs(batch.x)  # a task's float32 vectors cast for a float64 model; token ids embedded where the model embeds them
    emitted: list[torch.Tensor] = []
    states, taps = run_steps(cell, x, total_c=True, outputs=emitted)
    hidden = torch.stack(emitted)  # (T, B, H): what the readout reads (h_t; the lru's output from its state)
    if batch.mask is not None:
        hidden = hidden[batch.mask]  # (S, B, H)
    outputs = model.readout(hidden)  # (S, B, O)
    loss = loss_of(spec, outputs, batch.targets(), reduction="sum") / outputs.shape[0]
    names = cell.family.state
    targets = [tap[k] for k in range(len(names)) for tap in taps]
    grads = torch.autograd.grad(loss, targets, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
    T = len(taps)
    return {name: _rms_norms(grads[k * T : (k + 1) * T]) for k, name in enumerate(names)}


def input_grads_at_last_step(model, x: torch.Tensor, loss_of_last) -> torch.Tensor:
    """||dL/dz_t|| for every t, z_t = x_t W_x + b the projected input (for token ids: the embedding row the
    step reads), L a loss on the last step's output; RMS over the batch. Driven through the scratch twin
    of the model's cell (the same function), so both impls give the same numbers."""
    from .cells import convert

    cell = convert(model.cell, "scratch") if model.cell.impl != "scratch" else model.cell
    projected = cell.project(model.cell_inputs(x)).detach().requires_grad_()  # (T, B, G*H)
    state = cell.init_state(x.shape[1])
    weights = cell.recurrent()
    for inp in cell.per_step(projected):
        state = cell.step(inp, state, weights)
    (grad,) = torch.autograd.grad(loss_of_last(model.readout(output_of(cell, state, inp)[None])[0]), projected)
    return _rms_norms(list(grad.unbind(0)))


def independent_step_norms(cell: Cell, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The quantity mean-field theory computes: the gradient's mean squared norm carried back one step at a
    time by the step's Jacobian, with a cotangent drawn fresh at every step (independent of the Jacobians
    it passed through) but with the energy split between the state's parts (h, c) that the recursion
    carries. Returned as the cumulative norm from the loss back, so its factor per step compares with the
    hidden probe's; the true gradient is not independent of its Jacobians, and where the two differ that
    assumption fails."""
    states, taps = run_steps(cell, x)
    T = len(states)
    split = torch.zeros(len(taps[0]), dtype=torch.float64)
    split[0] = 1.0  # the loss reads h: all of the gradient's energy starts there
    cumulative = torch.ones(T, dtype=torch.float64)
    for t in range(T - 2, -1, -1):
        outs = state_parts(states[t + 1])
        g = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) * float(share.sqrt()) for o, share in zip(outs, split)]
        back = torch.autograd.grad(outs, taps[t], g, retain_graph=True, allow_unused=True)
        energy = torch.stack([(torch.zeros(()) if b is None else b.double().pow(2).mean().cpu()) for b in back])  # per element
        given = torch.stack([v.double().pow(2).mean().cpu() for v in g])
        cumulative[t] = cumulative[t + 1] * (energy.sum() / given.sum()).sqrt()
        split = energy / energy.sum()
    return cumulative


class _Trajectory(torch.nn.Module):
    """A cell driven one step at a time (its own step: the loop's, or a one-step scan), returning the full state handed
    on ([h], [h, c], or the lru's [Re h, Im h]) at the recorded steps only: (R, B, D)."""

    def __init__(self, cell: Cell, record: list[int]):
        super().__init__()
        self.cell, self.record = cell, set(record)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, ctx = self.cell.prepare(x)
        state = self.cell.init_state(x.shape[1])
        kept = []
        for t, inp in enumerate(inputs):
            state = self.cell.step(inp, state, ctx)
            if t in self.record:
                kept.append(torch.cat(state_parts(state), dim=-1))
        return torch.stack(kept)


def _directions(theta: torch.Tensor, decoupled: bool) -> torch.Tensor:
    """Tangents (K, *theta.shape) whose JVPs' squares sum to ||ds/dtheta||_F^2: every entry alone (K = numel), or, where
    each unit of the state depends only on its own column of theta (the last axis), one tangent per row, all of whose
    columns move together (K = numel / columns): unit j's part of that JVP is its own derivative."""
    if decoupled:
        rows = theta.numel() // theta.shape[-1]
        return torch.eye(rows, dtype=theta.dtype, device=theta.device).view(rows, *theta.shape[:-1], 1).expand(rows, *theta.shape).contiguous()
    return torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device).view(theta.numel(), *theta.shape)


SENSITIVITY_CHUNK = 2**25  # numbers the JVPs of one chunk of directions may hold at once (256 MiB in float64)


def parameter_sensitivity(cell: Cell, x: torch.Tensor, names: tuple[str, ...], record: list[int], decoupled: bool | None = None) -> dict[str, torch.Tensor]:
    """{name: (R, B)} ||ds_t/dtheta||_F^2 per sequence at the recorded steps t: the squared derivatives of every number of the
    state handed on s_t with respect to every entry of the parameter theta, summed, exactly, by forward-mode
    differentiation through the cell's steps (torch.func.jvp, vectorised over directions): one JVP per entry of theta,
    or one per row where the state's units do not interact (the modern cells: unit j reads only column j).
    The curse of memory's quantity (Zucchet and Orvieto 2024; docs/curse_of_memory.md)."""
    from torch.func import functional_call, jvp, vmap

    if decoupled is None:
        decoupled = bool(getattr(getattr(cell, "family", None), "diagonal", False))
    trajectory = _Trajectory(cell, record)
    params = {n: p.detach() for n, p in cell.named_parameters()}
    out = {}
    with torch.no_grad():
        for name in names:
            theta = params[name]
            directions = _directions(theta, decoupled)
            per_direction = len(record) * x.shape[1] * trajectory(x[:1]).shape[-1]
            size = max(1, min(len(directions), SENSITIVITY_CHUNK // max(per_direction, 1)))

            def states(value, name=name):
                return functional_call(trajectory, {f"cell.{name}": value}, (x,), strict=False)

            total = torch.zeros(len(record), x.shape[1], dtype=torch.float64, device=x.device)
            for chunk in directions.split(size):
                tangents = vmap(lambda v: jvp(states, (theta,), (v,))[1])(chunk)  # (k, R, B, D)
                total += tangents.double().pow(2).sum((0, -1))
            out[name] = total
    return out
