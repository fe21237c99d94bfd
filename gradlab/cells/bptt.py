"""Backpropagation through time written out for the scratch tanh RNN, GRU (reset_after) and LSTM: the
forward loop keeps what the backward needs, the backward loop applies the chain rule step by step, and the
recurrent weight's gradient is one matmul over all steps instead of one per step. Same math as
ScratchCell.step, checked against torch.nn and by gradcheck.
A backward here is not itself differentiable: asked for a graph of the gradient (create_graph=True, the
first half of any second derivative) it raises, where it would otherwise return a silently incomplete
answer. For Hessians or gradient penalties, drive the cell step by step (ScratchCell.step)."""

from __future__ import annotations

import torch


def refuse_second_derivative() -> None:
    if torch.is_grad_enabled():  # the engine enables grad mode in a backward only under create_graph=True
        raise RuntimeError(
            "the scratch cells' written-out backward (cells/bptt.py) is not twice differentiable: a gradient "
            "with create_graph=True would miss every term through its saved gates. Drive the cell one step "
            "at a time (cell.prepare / cell.step, as gradlab.probes does) for second derivatives."
        )


def weight_grad(h0: torch.Tensor, outputs: torch.Tensor, grad_a: torch.Tensor) -> torch.Tensor:
    """sum_t h_{t-1}^T grad_a_t as one matmul over all steps: (H, T*B) @ (T*B, G)."""
    H = h0.shape[-1]
    h_prevs = torch.cat([h0[None], outputs[:-1]])  # (T, B, H)
    return h_prevs.reshape(-1, H).T @ grad_a.reshape(-1, grad_a.shape[-1])


class RNNSequence(torch.autograd.Function):
    """inputs (T, B, H) = x W_xh + b_h, h0 (B, H), w_h (H, H) -> outputs (T, B, H): h_t = tanh(inputs_t + h_{t-1} W_hh)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        outputs = torch.empty_like(inputs)
        h = h0
        for t in range(inputs.shape[0]):
            h = torch.tanh(torch.addmm(inputs[t], h, w_h), out=outputs[t])
        ctx.save_for_backward(h0, w_h, outputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        refuse_second_derivative()
        h0, w_h, outputs = ctx.saved_tensors
        grad_a = torch.empty_like(outputs)  # d loss / d (pre-activation), every step
        grad_h = torch.zeros_like(h0)
        w_t = w_h.T
        for t in range(outputs.shape[0] - 1, -1, -1):
            torch.ops.aten.tanh_backward(grad_h + grad_out[t], outputs[t], grad_input=grad_a[t])
            if t or ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = grad_a[t] @ w_t
        return grad_a, grad_h if ctx.needs_input_grad[1] else None, weight_grad(h0, outputs, grad_a)


class LSTMSequence(torch.autograd.Function):
    """inputs (T, B, 4H) = x W_x + b (i, f, o, c parts), h0, c0 (B, H), w_h (H, 4H) -> outputs h (T, B, H)
    and the last cell state c_T (B, H)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_h: torch.Tensor):
        T, B, G = inputs.shape
        H = G // 4
        outputs = inputs.new_empty(T, B, H)
        ifo_all = inputs.new_empty(T, B, 3 * H)
        g_all = inputs.new_empty(T, B, H)
        c_all = inputs.new_empty(T, B, H)
        tanh_c = inputs.new_empty(T, B, H)
        h, c = h0, c0
        for t in range(T):
            gates = torch.addmm(inputs[t], h, w_h)  # (B, 4H)
            ifo = torch.sigmoid(gates[:, : 3 * H], out=ifo_all[t])
            g = torch.tanh(gates[:, 3 * H :], out=g_all[t])
            c = torch.addcmul(ifo[:, H : 2 * H] * c, ifo[:, :H], g, out=c_all[t])  # f c + i g
            h = torch.mul(ifo[:, 2 * H :], torch.tanh(c, out=tanh_c[t]), out=outputs[t])  # o tanh(c)
        ctx.save_for_backward(h0, c0, w_h, outputs, ifo_all, g_all, c_all, tanh_c)
        return outputs, c_all[-1]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_c_last: torch.Tensor):
        refuse_second_derivative()
        h0, c0, w_h, outputs, ifo_all, g_all, c_all, tanh_c = ctx.saved_tensors
        T, B, H = outputs.shape
        aten = torch.ops.aten
        grad_a = outputs.new_empty(T, B, 4 * H)  # d loss / d (gate pre-activations), every step
        d_ifo = outputs.new_empty(B, 3 * H)
        grad_h = torch.zeros_like(h0)
        grad_c = grad_c_last.clone() if grad_c_last is not None else torch.zeros_like(c0)
        w_t = w_h.T
        for t in range(T - 1, -1, -1):
            i, f, o = ifo_all[t, :, :H], ifo_all[t, :, H : 2 * H], ifo_all[t, :, 2 * H :]
            c_prev = c_all[t - 1] if t else c0
            dh = grad_h + grad_out[t]
            torch.mul(dh, tanh_c[t], out=d_ifo[:, 2 * H :])  # d o
            grad_c = grad_c + aten.tanh_backward(dh * o, tanh_c[t])  # through h = o tanh(c)
            torch.mul(grad_c, g_all[t], out=d_ifo[:, :H])  # d i
            torch.mul(grad_c, c_prev, out=d_ifo[:, H : 2 * H])  # d f
            aten.sigmoid_backward(d_ifo, ifo_all[t], grad_input=grad_a[t, :, : 3 * H])
            aten.tanh_backward(grad_c * i, g_all[t], grad_input=grad_a[t, :, 3 * H :])
            grad_c = grad_c * f
            if t or ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = grad_a[t] @ w_t
        return (grad_a, grad_h if ctx.needs_input_grad[1] else None, grad_c if ctx.needs_input_grad[2] else None,
                weight_grad(h0, outputs, grad_a))


class GRUSequence(torch.autograd.Function):
    """inputs (T, B, 3H) = x W_x + b (z, r, h parts), h0 (B, H), w_h (H, 3H), bias (3H,) = [0, 0, b_hh]
    -> outputs (T, B, H)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        T, B, G = inputs.shape
        H = G // 3
        outputs = inputs.new_empty(T, B, H)
        zr_all = inputs.new_empty(T, B, 2 * H)
        cand_all = inputs.new_empty(T, B, H)
        a_all = inputs.new_empty(T, B, 3 * H)  # h W_h + bias; its last H columns are what r multiplies
        h = h0
        for t in range(T):  # every result lands in its buffer (out=): no copies
            a = torch.addmm(bias, h, w_h, out=a_all[t])  # (B, 3H)
            zr = torch.sigmoid(inputs[t, :, : 2 * H] + a[:, : 2 * H], out=zr_all[t])
            cand = torch.tanh(torch.addcmul(inputs[t, :, 2 * H :], zr[:, H:], a[:, 2 * H :]), out=cand_all[t])
            h = torch.lerp(cand, h, zr[:, :H], out=outputs[t])  # z h + (1 - z) cand
        ctx.save_for_backward(h0, w_h, outputs, zr_all, cand_all, a_all[..., 2 * H :])
        return outputs

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        refuse_second_derivative()
        h0, w_h, outputs, zr_all, cand_all, hh_all = ctx.saved_tensors
        T, B, H = outputs.shape
        grad_a = grad_out.new_empty(T, B, 3 * H)  # d loss / d (h_{t-1} W_h + bias), every step
        grad_x_h = grad_out.new_empty(T, B, H)  # d loss / d x_h: the candidate's input part
        grad_h = torch.zeros_like(h0)
        w_t = w_h.T
        aten = torch.ops.aten  # tanh_backward(g, y) = g (1 - y^2), sigmoid_backward(g, y) = g y (1 - y): one kernel each
        d_zr = grad_out.new_empty(B, 2 * H)
        for t in range(T - 1, -1, -1):
            h_prev = outputs[t - 1] if t else h0
            z, r = zr_all[t, :, :H], zr_all[t, :, H:]
            dh = grad_h + grad_out[t]
            d_cand = aten.tanh_backward(dh - dh * z, cand_all[t])  # (B, H), through tanh
            grad_x_h[t] = d_cand
            torch.mul(dh, h_prev - cand_all[t], out=d_zr[:, :H])
            torch.mul(d_cand, hh_all[t], out=d_zr[:, H:])
            grad_a[t, :, : 2 * H] = aten.sigmoid_backward(d_zr, zr_all[t])
            torch.mul(d_cand, r, out=grad_a[t, :, 2 * H :])
            if t or ctx.needs_input_grad[1]:  # the initial state's gradient only when it is asked for
                grad_h = torch.addmm(dh * z, grad_a[t], w_t)
        grad_inputs = torch.cat([grad_a[..., : 2 * H], grad_x_h], dim=-1)  # (T, B, 3H)
        grad_w = weight_grad(h0, outputs, grad_a)
        grad_bias = grad_a.sum((0, 1))
        return grad_inputs, grad_h if ctx.needs_input_grad[1] else None, grad_w, grad_bias
