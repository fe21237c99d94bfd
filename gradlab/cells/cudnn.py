"""torch.nn.RNN/GRU/LSTM behind the cell interface, with the exact map to and from the scratch layout."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .families import family
from .scratch import State


def backend_of(output: torch.Tensor) -> str:
    """Which fused kernel produced `output`, read off its autograd node (the truth, not a guess)."""
    node = type(output.grad_fn).__name__ if output.grad_fn is not None else ""
    if "Cudnn" in node:
        return "cudnn"
    if "Mkldnn" in node:
        return "onednn"
    if output.is_cuda:
        return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "cuda"
    return "aten-cpu" if node else "cpu-fused"  # without an autograd node the CPU kernels look alike


class FusedCell(nn.Module):
    """A one-layer torch.nn recurrent module: cuDNN on CUDA, PyTorch's fused kernels on CPU."""

    impl = "cudnn"

    def __init__(self, cell: str, input_size: int, hidden_size: int, variant: str | None = None):
        super().__init__()
        self.cell = cell
        self.variant = variant
        self.family = family(cell)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.rnn = getattr(nn, self.family.torch_module)(input_size, hidden_size)
        self.last_backend = "not run yet"

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.long:  # (T, B) token ids -> one-hot (T, B, I): the fused kernels take floats
            if bool((x == self.input_size).any()):  # one past the vocabulary: the all-zero one-hot input
                return nn.functional.one_hot(x, self.input_size + 1)[..., : self.input_size].to(self.rnn.weight_hh_l0.dtype)
            return nn.functional.one_hot(x, self.input_size).to(self.rnn.weight_hh_l0.dtype)
        return x

    def _to_torch(self, state: State) -> State:
        """(B, H) parts -> torch.nn's (layers=1, B, H)."""
        if state is None:
            return None
        return tuple(s[None] for s in state) if isinstance(state, tuple) else state[None]

    def _from_torch(self, state: State) -> State:
        return tuple(s[0] for s in state) if isinstance(state, tuple) else state[0]

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self._inputs(x), None

    def step(self, inp: torch.Tensor, state: State, ctx: None = None) -> State:
        """One step through the fused kernel (a sequence of length 1)."""
        out, state = self.rnn(inp[None], self._to_torch(state))
        self._record(out)
        return self._from_torch(state)

    def init_state(self, batch_size: int) -> State:
        parts = tuple(self.rnn.weight_hh_l0.new_zeros(batch_size, self.hidden_size) for _ in self.family.state)
        return parts if len(parts) > 1 else parts[0]

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """x (T, B, I) floats or (T, B) token ids -> outputs (T, B, H), final state."""
        outputs, state = self.rnn(self._inputs(x), self._to_torch(state))
        self._record(outputs)
        return outputs, self._from_torch(state)

    def _record(self, output: torch.Tensor) -> None:
        """Keep the backend a differentiable call revealed; a no-grad call (evaluation) cannot tell."""
        if output.grad_fn is not None or self.last_backend == "not run yet":
            self.last_backend = backend_of(output)


def load_scratch_layout(module: FusedCell, params: dict[str, torch.Tensor]) -> None:
    """Copy scratch-layout parameters in; the scratch bias goes to bias_ih, bias_hh stays 0
    except the GRU candidate's, which is b_hh (it sits inside r * (.))."""
    order = module.family.torch_order
    hidden = module.hidden_size
    rnn = module.rnn
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.cat([params[f"W_x{g}"].T for g in order]))
        rnn.weight_hh_l0.copy_(torch.cat([params[f"W_h{g}"].T for g in order]))
        rnn.bias_ih_l0.copy_(torch.cat([params[f"b_{g}"] for g in order]))
        rnn.bias_hh_l0.zero_()
        if module.cell == "gru":
            rnn.bias_hh_l0[2 * hidden :].copy_(params["b_hh"])


def scratch_layout(module: FusedCell, grad: bool = False) -> dict[str, torch.Tensor]:
    """The parameters (or, with grad=True, their gradients) in the scratch layout.

    A scratch bias b equals bias_ih + bias_hh, so its gradient equals either one's; bias_ih's is used.
    """
    rnn = module.rnn

    def get(name: str) -> torch.Tensor:
        p = getattr(rnn, name)
        return p.grad if grad else p.detach()

    order = module.family.torch_order
    w_ih, w_hh = get("weight_ih_l0").chunk(len(order)), get("weight_hh_l0").chunk(len(order))
    b_ih, b_hh = get("bias_ih_l0").chunk(len(order)), get("bias_hh_l0").chunk(len(order))
    out: dict[str, torch.Tensor] = {}
    for k, g in enumerate(order):
        out[f"W_x{g}"] = w_ih[k].T
        out[f"W_h{g}"] = w_hh[k].T
        gru_candidate = module.cell == "gru" and g == "h"
        out[f"b_{g}"] = b_ih[k] if (grad or gru_candidate) else b_ih[k] + b_hh[k]
    if module.cell == "gru":
        out["b_hh"] = b_hh[2]
    return out


@contextlib.contextmanager
def cudnn_precision(tf32: bool) -> Iterator[None]:
    """cuDNN's float32 recurrent layers in TF32 (a 10-bit mantissa in their matmuls: torch's default) or in full float32
    for the block, then as they were. No effect on a CPU."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)  # torch >= 2.9 has a per-backend switch
    before = (torch.backends.cudnn.allow_tf32, getattr(rnn, "fp32_precision", None))
    torch.backends.cudnn.allow_tf32 = tf32
    if before[1] is not None:
        rnn.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        if before[1] is not None:
            rnn.fp32_precision = before[1]
