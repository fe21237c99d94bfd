"""Parallel scans of the modern cells' recurrence h_t = a_t * h_{t-1} + b_t (a_t free of h): every step at once,
the fast twin of the written-out loop the way cuDNN is the classic cells' twin.

Numerical range (tests/test_cells.py measures both):
- log_space_scan forms log h_t as a*_t + logcumsumexp_s(log b_s - a*_s) with a*_t = sum_{s<=t} log a_s, two numbers of
  size |a*_t| whose sum is small: h_t's relative error is about eps * (1 + |a*_t|), the decay accumulated up to t in
  nats. For gates near 0.5 (a*_t about -0.7 t) that is 3e-13 at T = 4,096 in float64, 2e-4 in float32. It never
  overflows (everything stays in logarithms) and a_t near 1 (long memory) makes it more accurate, not less. Its
  gradients come from the adjoint recurrence by a linear-space scan (reverse_scan), as accurate as a loop's.
- power_scan takes lambda^d from its logarithm (exp(d log lambda)) in each of its log2(T) rounds, so no rounding
  compounds over the rounds: h_t's relative error is about eps * log2(T) * (1 + |d log lambda|) for the powers it
  uses, whatever |lambda| (near 1 included), as a loop's own rounding grows with T.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SOFTPLUS_THRESHOLD = 40.0  # torch's default (20) returns x where log(1 + e^x) differs by e^-20 = 2e-9: too coarse for float64


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), exact to rounding in float64 (log(1 + e^x) - x < 5e-18 past the threshold)."""
    return F.softplus(x, threshold=SOFTPLUS_THRESHOLD)


def g(x: torch.Tensor) -> torch.Tensor:
    """Feng et al. 2024's positive activation of the min cells' candidate: x + 1/2 for x >= 0, sigmoid(x) below
    (continuous at 0, where both are 1/2), so that every h_t stays positive and has a logarithm."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), without forming g: log(x + 1/2) for x >= 0, -softplus(-x) below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -softplus(-x))


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Every h_t (T, ..., H) of h_t = a_t h_{t-1} + b_t from log a_t and log b_t (T, ..., H), for b_t > 0 and
    0 < a_t <= 1 (Heinsen 2023): h_t = exp(a*_t) h_0 + exp(a*_t + logcumsumexp_{s<=t}(log b_s - a*_s)),
    a*_t = sum_{s<=t} log a_s. The initial state h0 (..., H) may have any sign: it enters outside the logarithms.
    Its backward is the recurrence's own adjoint (LogSpaceScan), not autograd through the logarithms."""
    if h0 is None:
        return LogSpaceScan.apply(log_a, log_b, torch.zeros_like(log_b[0]))
    return LogSpaceScan.apply(log_a, log_b, h0)


class LogSpaceScan(torch.autograd.Function):
    """Forward in log space; backward by the adjoint recurrence delta_t = dL/dh_t + a_{t+1} delta_{t+1}, a linear
    scan backwards in time (reverse_scan). Autograd through the logarithms would form dL/d log a_s as a difference of
    two sums over every later step, each carrying the a* terms' rounding: 7e-3 relative in float32 at T = 300, 1e-9
    in float64 at T = 4,096 (measured); the adjoint has no such difference. Twice differentiable: the backward is
    made of differentiable operations."""

    @staticmethod
    def forward(ctx, log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a_star = torch.cumsum(log_a, dim=0)
        h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=0)) + torch.exp(a_star) * h0
        ctx.save_for_backward(log_a, log_b, h0, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        log_a, log_b, h0, h = ctx.saved_tensors
        a = torch.exp(log_a)
        delta = reverse_scan(a, grad_h)  # dL/dh_t through every path: (T, ..., H)
        h_before = torch.cat([h0.expand_as(h[:1]), h[:-1]])  # h_{t-1}
        grad_h0 = a[0] * delta[0]
        while grad_h0.dim() > h0.dim():  # h0 broadcast over leading dimensions
            grad_h0 = grad_h0.sum(0)
        for k, size in enumerate(h0.shape):
            if size == 1 and grad_h0.shape[k] != 1:
                grad_h0 = grad_h0.sum(k, keepdim=True)
        return delta * h_before * a, delta * torch.exp(log_b), grad_h0  # dL/dlog a = delta h_{t-1} a, dL/dlog b = delta b


def reverse_scan(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """delta_t = g_t + a_{t+1} delta_{t+1} for every t (delta_{T-1} = g_{T-1}), by Hillis and Steele's scan run
    backwards: log2(T) rounds of delta_t += C_t delta_{t+d}, C_t the product of the d coefficients between (linear
    space: a product only underflows where the true one is below the smallest number, and each is log2(T) roundings deep)."""
    T = g.shape[0]
    delta, coef, d = g, torch.cat([a[1:], torch.zeros_like(a[:1])]), 1  # coef_t = a_{t+1}
    while d < T:
        delta = torch.cat([delta[: T - d] + coef[: T - d] * delta[d:], delta[T - d :]])
        coef = torch.cat([coef[: T - d] * coef[d:], coef[T - d :]])
        d *= 2
    return delta


def power_scan(log_lam: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Every h_t (T, ..., N) of h_t = lambda h_{t-1} + b_t with one lambda per mode (N,) (complex, |lambda| < 1),
    given log lambda: Hillis and Steele's scan, log2(T) rounds of h_t += lambda^d h_{t-d} (d = 1, 2, 4, ...), after
    which h_t = sum_{k<2d} lambda^k b_{t-k}; then lambda^(t+1) h0. Work T log2 T, depth log2 T."""
    T = b.shape[0]
    h, d = b, 1
    while d < T:
        power = torch.exp(d * log_lam)  # lambda^d from its logarithm: exact to rounding at any d
        h = torch.cat([h[:d], h[d:] + power * h[:-d]])
        d *= 2
    if h0 is None:
        return h
    steps = torch.arange(1, T + 1, dtype=log_lam.real.dtype, device=log_lam.device).view(T, *([1] * (b.dim() - 1)))
    return h + torch.exp(steps * log_lam) * h0  # lambda^(t+1) h0
