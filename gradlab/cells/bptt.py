"""Backpropagation through time written out for the scratch tanh RNN, GRU (reset_after) and LSTM: the
forward loop keeps what the backward needs, the backward loop applies the chain rule step by step, and the
recurrent weight's gradient is one matmul over all steps instead of one per step. Same math as
ScratchCell.step, checked against torch.nn and by gradcheck.
A backward here is not itself differentiable: asked for a graph of the gradient (create_graph=True, the
first half of any second derivative) it raises, where it would otherwise return a silently incomplete
answer. For Hessians or gradient penalties, drive the cell step by step (ScratchCell.step).
Every Function also takes an ensemble: a leading model dimension E after time, inputs (T, E, B, G), states
(E, B, H) and weights (E, H, G), each step's matmuls one batched matmul over the models."""

from __future__ import annotations

import torch

from .families import family


def refuse_second_derivative() -> None:
    if torch.is_grad_enabled():  # the engine enables grad mode in a backward only under create_graph=True
        raise RuntimeError(
            "the scratch cells' written-out backward (cells/bptt.py) is not twice differentiable: a gradient "
            "with create_graph=True would miss every term through its saved gates. Drive the cell one step "
            "at a time (cell.prepare / cell.step, as gradlab.probes does) for second derivatives."
        )


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """bias + a @ b in one kernel: addmm for one model (B, H) @ (H, G), baddbmm for an ensemble (E, B, H) @ (E, H, G)."""
    return torch.addmm(bias, a, b, out=out) if a.dim() == 2 else torch.baddbmm(bias, a, b, out=out)


def weight_grad(h0: torch.Tensor, outputs: torch.Tensor, grad_a: torch.Tensor) -> torch.Tensor:
    """sum_t h_{t-1}^T grad_a_t as one matmul over all steps: (H, T*B) @ (T*B, G); per model for an ensemble."""
    H = h0.shape[-1]
    h_prevs = torch.cat([h0[None], outputs[:-1]])  # (T, B, H) or (T, E, B, H)
    if h0.dim() == 3:  # an ensemble: each model's sum laid out as its solo run lays it out, so the same sums (bitwise at one thread)
        return torch.bmm(per_model(h_prevs).mT, per_model(grad_a))  # (E, H, T*B) @ (E, T*B, G)
    return h_prevs.reshape(-1, H).T @ grad_a.reshape(-1, grad_a.shape[-1])


def per_model(steps: torch.Tensor) -> torch.Tensor:
    """An ensemble's (T, E, B, X) as (E, T*B, X): each model's rows contiguous, in its solo run's order (a copy)."""
    return steps.transpose(0, 1).reshape(steps.shape[1], -1, steps.shape[-1])


class RNNSequence(torch.autograd.Function):
    """inputs (T, B, H) = x W_xh + b_h, h0 (B, H), w_h (H, H) -> outputs (T, B, H): h_t = tanh(inputs_t + h_{t-1} W_hh)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        outputs = torch.empty_like(inputs)
        h = h0
        for x_t, h_t in zip(inputs.unbind(0), outputs.unbind(0)):  # views made once, not per step
            h = torch.tanh(addmm(x_t, h, w_h, out=h_t), out=h_t)
        ctx.save_for_backward(h0, w_h, outputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        refuse_second_derivative()
        h0, w_h, outputs = ctx.saved_tensors
        grad_a = torch.empty_like(outputs)  # d loss / d (pre-activation), every step
        grad_h = torch.zeros_like(h0)
        w_t = w_h.mT
        T = outputs.shape[0]
        for t, go_t, h_t, ga_t in zip(range(T - 1, -1, -1), *(reversed(x.unbind(0)) for x in (grad_out, outputs, grad_a))):
            torch.ops.aten.tanh_backward(grad_h + go_t, h_t, grad_input=ga_t)
            if t or ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = ga_t @ w_t
        return grad_a, grad_h if ctx.needs_input_grad[1] else None, weight_grad(h0, outputs, grad_a)


class LSTMSequence(torch.autograd.Function):
    """inputs (T, B, 4H) = x W_x + b (i, f, o, c parts), h0, c0 (B, H), w_h (H, 4H) -> outputs h (T, B, H)
    and the last cell state c_T (B, H). At these sizes a kernel launch costs more than its arithmetic, so
    per-step views are made once for all steps (unbind, split), and the backward's factors that do not
    depend on the incoming gradient (the activations' derivatives) are formed for all steps at once before
    its loop: 8 kernels per step instead of 12."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_h: torch.Tensor):
        lead, G = inputs.shape[:-1], inputs.shape[-1]  # (T, B) or (T, E, B)
        H = G // 4
        outputs = inputs.new_empty(*lead, H)
        ifo_all = inputs.new_empty(*lead, 3 * H)
        g_all = inputs.new_empty(*lead, H)
        c_all = inputs.new_empty(*lead, H)
        tanh_c = inputs.new_empty(*lead, H)
        gates = inputs.new_empty(inputs.shape[1:])  # one step's pre-activations, reused
        gates_ifo, gates_g = gates[..., : 3 * H], gates[..., 3 * H :]
        i_all, f_all, o_all = (part.unbind(0) for part in ifo_all.split(H, dim=-1))
        steps = zip(inputs.unbind(0), outputs.unbind(0), ifo_all.unbind(0), i_all, f_all, o_all, g_all.unbind(0), c_all.unbind(0), tanh_c.unbind(0))
        h, c = h0, c0
        for x_t, h_t, ifo_t, i, f, o, g_t, c_t, tc_t in steps:
            addmm(x_t, h, w_h, out=gates)  # (B, 4H)
            torch.sigmoid(gates_ifo, out=ifo_t)
            torch.tanh(gates_g, out=g_t)
            c = torch.addcmul(f * c, i, g_t, out=c_t)  # f c + i g
            h = torch.mul(o, torch.tanh(c, out=tc_t), out=h_t)  # o tanh(c)
        ctx.save_for_backward(h0, c0, w_h, outputs, ifo_all, g_all, c_all, tanh_c)
        return outputs, c_all[-1]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_c_last: torch.Tensor):
        refuse_second_derivative()
        h0, c0, w_h, outputs, ifo_all, g_all, c_all, tanh_c = ctx.saved_tensors
        T, H = outputs.shape[0], outputs.shape[-1]
        i_all, f_all, o_all = ifo_all.split(H, dim=-1)
        c_prev = torch.cat([c0[None], c_all[:-1]])  # (T, B, H)
        dh_dc = o_all * (1 - tanh_c * tanh_c)  # dh/dc at fixed o, every step
        dig = i_all * (1 - g_all * g_all)  # d(i g)/d(pre-activation of g)
        dsig = ifo_all * (1 - ifo_all)  # sigmoid's derivative, (T, B, 3H)
        grad_a = outputs.new_empty(*outputs.shape[:-1], 4 * H)  # d loss / d (gate pre-activations), every step
        d_ifo = outputs.new_empty(*outputs.shape[1:-1], 3 * H)
        d_i, d_f, d_o = d_ifo.split(H, dim=-1)
        grad_c = grad_c_last.clone() if grad_c_last is not None else torch.zeros_like(c0)
        w_t = w_h.mT
        grad_h = None
        steps = zip(range(T - 1, -1, -1), *(reversed(seq.unbind(0)) for seq in (
            f_all, c_prev, tanh_c, g_all, dh_dc, dig, dsig, grad_a[..., : 3 * H], grad_a[..., 3 * H :], grad_a)))
        grad_outs = grad_out.unbind(0)
        dh = grad_outs[-1]
        for t, f, cp_t, tc_t, g_t, dhdc_t, dig_t, dsig_t, ga_ifo, ga_g, ga_t in steps:
            torch.mul(dh, tc_t, out=d_o)  # d o
            grad_c = torch.addcmul(grad_c, dh, dhdc_t)  # through h = o tanh(c)
            torch.mul(grad_c, g_t, out=d_i)  # d i
            torch.mul(grad_c, cp_t, out=d_f)  # d f
            torch.mul(d_ifo, dsig_t, out=ga_ifo)
            torch.mul(grad_c, dig_t, out=ga_g)
            grad_c = grad_c * f
            if t:  # the next step back's dh: its own output gradient plus the recurrence's
                dh = addmm(grad_outs[t - 1], ga_t, w_t)
            elif ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = ga_t @ w_t
        return (grad_a, grad_h, grad_c if ctx.needs_input_grad[2] else None, weight_grad(h0, outputs, grad_a))


class GRUSequence(torch.autograd.Function):
    """inputs (T, B, 3H) = x W_x + b (z, r, h parts), h0 (B, H), w_h (H, 3H), bias (3H,) = [0, 0, b_hh]
    -> outputs (T, B, H)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        lead, H = inputs.shape[:-1], inputs.shape[-1] // 3  # lead: (T, B) or (T, E, B)
        outputs = inputs.new_empty(*lead, H)
        zr_all = inputs.new_empty(*lead, 2 * H)
        cand_all = inputs.new_empty(*lead, H)
        a_all = inputs.new_empty(*lead, 3 * H)  # h W_h + bias; its last H columns are what r multiplies
        h = h0
        row_bias = bias if bias.dim() == 1 else bias.unsqueeze(-2)  # an ensemble's (E, 3H) as (E, 1, 3H)
        x_zr, x_h = inputs.split([2 * H, H], dim=-1)
        a_zr, a_h = a_all.split([2 * H, H], dim=-1)
        steps = zip(x_zr.unbind(0), x_h.unbind(0), a_all.unbind(0), a_zr.unbind(0), a_h.unbind(0), zr_all.unbind(0),
                    zr_all[..., :H].unbind(0), zr_all[..., H:].unbind(0), cand_all.unbind(0), outputs.unbind(0))  # views made once
        for xzr_t, xh_t, a_t, azr_t, ah_t, zr_t, z_t, r_t, cand_t, h_t in steps:  # every result lands in its buffer (out=): no copies
            addmm(row_bias, h, w_h, out=a_t)  # (B, 3H)
            torch.sigmoid(xzr_t + azr_t, out=zr_t)
            cand = torch.tanh(torch.addcmul(xh_t, r_t, ah_t), out=cand_t)
            h = torch.lerp(cand, h, z_t, out=h_t)  # z h + (1 - z) cand
        ctx.save_for_backward(h0, w_h, outputs, zr_all, cand_all, a_all[..., 2 * H :])
        return outputs

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        refuse_second_derivative()
        h0, w_h, outputs, zr_all, cand_all, hh_all = ctx.saved_tensors
        T, H = outputs.shape[0], outputs.shape[-1]
        grad_a = grad_out.new_empty(*outputs.shape[:-1], 3 * H)  # d loss / d (h_{t-1} W_h + bias), every step
        grad_x_h = torch.empty_like(outputs)  # d loss / d x_h: the candidate's input part
        grad_h = torch.zeros_like(h0)
        w_t = w_h.mT
        aten = torch.ops.aten  # tanh_backward(g, y) = g (1 - y^2), sigmoid_backward(g, y) = g y (1 - y): one kernel each
        d_zr = grad_out.new_empty(*outputs.shape[1:-1], 2 * H)
        d_z, d_r = d_zr.split(H, dim=-1)
        ga_zr, ga_h = grad_a.split([2 * H, H], dim=-1)
        h_prevs = (h0, *outputs.unbind(0)[:-1])
        steps = zip(range(T - 1, -1, -1), *(reversed(seq) for seq in (
            h_prevs, zr_all[..., :H].unbind(0), zr_all[..., H:].unbind(0), zr_all.unbind(0), grad_out.unbind(0), cand_all.unbind(0),
            hh_all.unbind(0), grad_x_h.unbind(0), ga_zr.unbind(0), ga_h.unbind(0), grad_a.unbind(0))))  # views made once
        for t, h_prev, z, r, zr_t, go_t, cand_t, hh_t, gxh_t, gazr_t, gah_t, ga_t in steps:
            dh = grad_h + go_t
            aten.tanh_backward(dh - dh * z, cand_t, grad_input=gxh_t)  # (B, H), through tanh: d cand
            torch.mul(dh, h_prev - cand_t, out=d_z)
            torch.mul(gxh_t, hh_t, out=d_r)
            aten.sigmoid_backward(d_zr, zr_t, grad_input=gazr_t)
            torch.mul(gxh_t, r, out=gah_t)
            if t or ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = addmm(dh * z, ga_t, w_t)
        grad_inputs = torch.cat([grad_a[..., : 2 * H], grad_x_h], dim=-1)  # (T, B, 3H)
        grad_w = weight_grad(h0, outputs, grad_a)
        grad_bias = grad_a.sum((0, 1)) if grad_a.dim() == 3 else per_model(grad_a).sum(1)  # over time and batch: (3H,), or (E, 3H)
        return grad_inputs, grad_h if ctx.needs_input_grad[1] else None, grad_w, grad_bias


def sequence_function(cell: str, variant: str | None = None) -> type[torch.autograd.Function] | None:
    """The cell's written-out BPTT, or None where it runs step by step (the linear cell, the reset_before GRU)."""
    if variant == "reset_before":
        return None
    return {"rnn": RNNSequence, "gru": GRUSequence, "lstm": LSTMSequence}.get(cell)


def sequence_outputs(cell: str, inputs: torch.Tensor, h0: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """h at every step (T, ..., H) through the cell's written-out BPTT from h0 (and a zero cell state where the
    cell has one); weights as ScratchCell.recurrent gives them, stacked for an ensemble."""
    fn = sequence_function(cell)
    if len(family(cell).state) > 1:  # (h, c)
        return fn.apply(inputs, h0, torch.zeros_like(h0), *weights)[0]
    return fn.apply(inputs, h0, *weights)
