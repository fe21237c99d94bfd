"""Where a call's time goes, from torch.profiler: matmuls, element-wise kernels, fused recurrent kernels,
autograd's engine and the rest (Python and dispatch: wall time no kernel accounts for), as shares of the wall
time of the same profiled calls. The profiler's own overhead falls into the rest: compare shares, not times."""

from __future__ import annotations

import time
from typing import Callable

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::dot", "aten::mv")
FUSED = ("rnn", "lstm", "gru")  # aten::mkldnn_rnn_layer, aten::_thnn_fused_lstm_cell, aten::lstm, ...: the fused kernels
ELEMENTWISE = ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::sigmoid", "aten::tanh", "aten::lerp", "aten::addcmul",
               "aten::sigmoid_backward", "aten::tanh_backward", "aten::neg", "aten::rsub", "aten::pow", "aten::sqrt", "aten::exp",
               "aten::log", "aten::clamp", "aten::copy_", "aten::fill_", "aten::zero_", "aten::sum", "aten::mean", "aten::cat",
               "aten::stack", "aten::embedding", "aten::embedding_dense_backward", "aten::mse_loss", "aten::mse_loss_backward",
               "aten::_foreach_", "aten::addcdiv", "aten::lerp_", "aten::norm", "aten::linalg_vector_norm", "aten::where", "aten::masked_fill")
VIEWS = ("aten::slice", "aten::select", "aten::as_strided", "aten::view", "aten::unbind", "aten::split", "aten::chunk",
         "aten::narrow", "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::reshape", "aten::_reshape_alias",
         "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::detach", "aten::resolve_conj", "aten::resolve_neg",
         "aten::split_with_sizes", "aten::unsafe_split", "aten::empty", "aten::empty_like", "aten::empty_strided")
BUCKETS = ("matmul", "fused recurrent kernel", "element-wise", "views and allocation", "autograd engine", "other kernels", "Python and dispatch")


def bucket_of(name: str) -> str:
    """The bucket of one profiler event by its name. An event outside aten and the engine (a custom autograd
    Function's forward or backward, an optimiser's step) is timed as its own Python: 'Python and dispatch'."""
    if name.startswith("autograd::engine") or name.startswith("torch::autograd"):
        return "autograd engine"
    if not name.startswith("aten::"):
        return "Python and dispatch"
    base = name.split(".")[0]
    if base in VIEWS:
        return "views and allocation"
    if base in MATMUL:
        return "matmul"
    if base.startswith("aten::") and any(k in base for k in FUSED) and "backward" not in base.split("_")[0]:
        return "fused recurrent kernel"
    if base in ELEMENTWISE or base.startswith("aten::_foreach_") or base.rstrip("_") in ELEMENTWISE:
        return "element-wise"
    return "other kernels"


def time_shares(call: Callable[[], None], repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Shares of the profiled calls' wall time per bucket (they sum to 1), and 'wall_ms' per call."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        wall_us = (time.perf_counter() - start) * 1e6
    spent = dict.fromkeys(BUCKETS, 0.0)
    for event in prof.key_averages():
        spent[bucket_of(event.key)] += event.self_cpu_time_total  # microseconds, self: each microsecond counted once
    spent["Python and dispatch"] += max(wall_us - sum(spent.values()), 0.0)  # wall time no event accounts for
    total = sum(spent.values())
    return {k: v / total for k, v in spent.items()} | {"wall_ms": wall_us / repeats / 1e3}
