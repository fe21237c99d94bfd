"""Gradient clipping that really clips, and says what it did: the norm before and after, and whether it fired."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

METHODS = ("none", "norm", "value")


@dataclass
class ClipResult:
    norm_before: float  # global L2 norm of all gradients, float64
    norm_after: float
    clipped: bool


def global_norm(grads: list[torch.Tensor]) -> float:
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads]).double()  # per tensor, then combined in float64
    return float(torch.linalg.vector_norm(norms))


def clip(params: Iterable[torch.nn.Parameter], method: str, threshold: float) -> ClipResult:
    """Rescale (norm: direction kept) or clamp (value) the gradients in place.

    A non-finite norm is reported and left alone: the trainer records the divergence.
    """
    grads = [p.grad for p in params if p.grad is not None]
    before = global_norm(grads)
    if method not in METHODS:
        raise ValueError(f"Unknown clipping method {method!r}. Known: {', '.join(METHODS)}.")
    if method == "none" or not math.isfinite(before):
        return ClipResult(before, before, False)
    if method == "norm":
        if before <= threshold:
            return ClipResult(before, before, False)
        scale = threshold / before
        for g in grads:
            g.mul_(scale)
        return ClipResult(before, global_norm(grads), True)
    fired = any(bool((g.abs() > threshold).any()) for g in grads)
    for g in grads:
        g.clamp_(-threshold, threshold)
    return ClipResult(before, global_norm(grads), fired)
