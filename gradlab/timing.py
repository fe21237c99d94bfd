"""Synchronised timing, the matmul peak measured on the spot, and FLOP counts of recurrent models."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .cells import family


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` synchronised runs, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _timed(fn: Callable[[], object], device: str | torch.device) -> float:
    """Seconds of one synchronised call: CUDA events on a GPU, the wall clock elsewhere."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleaved_times(fns: dict[str, Callable[[], object]], device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every run of each fn, the runs alternating (a, b, a, b, ...) so that a drift in the
    machine's speed hits all alike: the way to compare two costs on a noisy machine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each fn over interleaved runs (interleaved_times)."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, device, repeats, warmup).items()}


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None) -> float:
    """FLOP/s of an n x n x n matmul on this device now: the ceiling utilisation is measured against."""
    n = n or (8192 if torch.device(device).type == "cuda" else 1024)  # big enough to be compute-bound
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats=5, warmup=2)
    return 2 * n**3 / seconds


def lm_epoch_flops(style: str, cell: str, batches: int, num_steps: int, batch_size: int, vocab: int, hidden: int) -> int:
    """Matmul FLOPs of one training epoch (forward + backward) of a character LM, 2 per multiply-add.

    Per batch of T steps: the recurrent product h W_h forward at every step, its weight gradient at
    every step, and its state gradient at every step but the first (the state a batch starts from is
    detached, so no gradient flows into it); the output layer forward, and both its gradients.
    'gradlab': inputs by row lookup (no FLOPs). 'book': the seed's code, one-hot x_t @ W_x* per gate too,
    forward and weight gradient (the one-hot input needs none). Checked against torch's FlopCounterMode.
    """
    g, b, v, h, T = family(cell).gate_count, batch_size, vocab, hidden, num_steps
    recurrent = 2 * b * h * g * h * (3 * T - 1)
    output = 2 * b * h * v * 3 * T
    per_batch = recurrent + output
    if style == "book":
        per_batch += 2 * b * v * g * h * 2 * T
    elif style != "gradlab":
        raise ValueError(f"Unknown style {style!r}. Known: gradlab, book.")
    return per_batch * batches


def layer_flops(cell: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int, backward: bool) -> int:
    """Matmul FLOPs of one recurrent layer over a sequence, 2 per multiply-add: the input projection and the
    recurrent product at every step; with backward, both weight gradients and the state gradient at every
    step but the first (the input and the initial state need no gradient, as for a first layer).
    Checked against torch's FlopCounterMode in the tests."""
    g, T, B, I, H = family(cell).gate_count, seq_len, batch_size, input_size, hidden_size
    forward = 2 * T * B * I * g * H + 2 * T * B * H * g * H
    if not backward:
        return forward
    return forward + 2 * T * B * I * g * H + 2 * T * B * H * g * H + 2 * (T - 1) * B * g * H * H
