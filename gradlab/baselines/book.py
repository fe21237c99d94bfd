"""The book's own style of code, kept as the baseline gradlab is timed against.

Per-gate matmuls on one-hot vectors, a list of per-step outputs, a Python-loop norm: the seed's
GRU and LSTM training step, written so its weights can be shared with gradlab's SeqModel.
"""

from __future__ import annotations

import torch

from ..cells import family
from ..training import SeqModel


def params_from(model: SeqModel) -> list[torch.Tensor]:
    """The seed's parameter list (W_x*, W_h*, b_* per gate, then W_hq, b_q) as fresh leaves holding
    the same values as a scratch SeqModel. The seed's GRU has no b_hh: it must be zero."""
    cell = model.cell
    if getattr(cell, "b_hh", None) is not None and torch.count_nonzero(cell.b_hh):
        raise ValueError("the book's GRU has no recurrent candidate bias; b_hh must be zero.")
    names = [f"{kind}{g}" for g in family(cell.cell).gates for kind in ("W_x", "W_h", "b_")] + ["W_hq", "b_q"]
    source = dict(cell.named_parameters()) | {"W_hq": model.W_hq, "b_q": model.b_q}
    return [source[n].detach().clone().requires_grad_() for n in names]


def to_onehot(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """(T, B) ids -> T one-hot matrices (B, V), as the book feeds them."""
    return [torch.nn.functional.one_hot(x[t], size).float() for t in range(x.shape[0])]


def forward(cell: str, inputs: list[torch.Tensor], state: tuple, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple]:
    if cell == "gru":
        W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
        (H,) = state
        outputs = []
        for X in inputs:
            Z = torch.sigmoid(X @ W_xz + H @ W_hz + b_z)
            R = torch.sigmoid(X @ W_xr + H @ W_hr + b_r)
            H_tilda = torch.tanh(X @ W_xh + R * (H @ W_hh) + b_h)
            H = Z * H + (1 - Z) * H_tilda
            outputs.append(H @ W_hq + b_q)
        return outputs, (H,)
    if cell == "lstm":
        W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q = params
        H, C = state
        outputs = []
        for X in inputs:
            I = torch.sigmoid(X @ W_xi + H @ W_hi + b_i)
            F = torch.sigmoid(X @ W_xf + H @ W_hf + b_f)
            O = torch.sigmoid(X @ W_xo + H @ W_ho + b_o)
            C_tilda = torch.tanh(X @ W_xc + H @ W_hc + b_c)
            C = F * C + I * C_tilda
            H = O * C.tanh()
            outputs.append(H @ W_hq + b_q)
        return outputs, (H, C)
    raise ValueError(f"the book's chapter has gru and lstm, not {cell!r}.")


def init_state(cell: str, batch_size: int, hidden: int, device) -> tuple:
    h = torch.zeros(batch_size, hidden, device=device)
    return (h, h.clone()) if cell == "lstm" else (h,)


def train_step(cell: str, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, state: tuple, lr: float, theta: float) -> tuple[float, tuple]:
    """One step as the book trains: one-hot list, cat of outputs, mean CE, loop-norm clipping, SGD."""
    state = tuple(s.detach() for s in state)
    outputs, state = forward(cell, to_onehot(x, params[-1].shape[0]), state, params)
    loss = torch.nn.functional.cross_entropy(torch.cat(outputs, dim=0), y.reshape(-1))
    for p in params:
        p.grad = None
    loss.backward()
    norm = torch.zeros(1, device=x.device)
    for p in params:
        norm += (p.grad**2).sum()
    norm = norm.sqrt().item()
    with torch.no_grad():
        for p in params:
            if norm > theta:
                p.grad *= theta / norm
            p -= lr * p.grad
    return loss.item(), state
