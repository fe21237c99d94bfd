"""Backpropagation through time written out for the scratch GRU (reset_after): the forward loop keeps
its gates, the backward loop applies the chain rule step by step, and the recurrent weight's gradient is
one matmul over all steps instead of one per step. Same math as ScratchCell.step, checked against torch.nn.
Its backward is not itself differentiable: asked for a graph of the gradient (create_graph=True, the first
half of any second derivative) it raises, where it would otherwise return a silently incomplete answer.
For Hessians or gradient penalties, drive the cell step by step (ScratchCell.step), which autograd handles."""

from __future__ import annotations

import torch


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
        if torch.is_grad_enabled():  # the engine enables grad mode here only under create_graph=True
            raise RuntimeError(
                "the scratch GRU's written-out backward (cells/bptt.py) is not twice differentiable: a gradient "
                "with create_graph=True would miss every term through its saved gates. Drive the cell one step "
                "at a time (cell.prepare / cell.step, as gradlab.probes does) for second derivatives."
            )
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
        h_prevs = torch.cat([h0[None], outputs[:-1]])  # (T, B, H)
        grad_w = h_prevs.reshape(-1, H).T @ grad_a.reshape(-1, 3 * H)  # one matmul over all steps
        grad_bias = grad_a.sum((0, 1))
        return grad_inputs, grad_h if ctx.needs_input_grad[1] else None, grad_w, grad_bias
