"""Gradient clipping that really clips and says what it did. One string format everywhere:
'none', 'norm:THETA' (global norm, direction kept), 'value:THETA' (element-wise clamp)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..names import lookup


@dataclass
class ClipResult:
    norm_before: float  # global L2 norm of all gradients, float64
    norm_after: float
    clipped: bool


def global_norm(grads: list[torch.Tensor]) -> float:
    """The L2 norm of all gradients together: per-tensor norms, combined in float64."""
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads]).double()
    return float(torch.linalg.vector_norm(norms))


class Clipper:
    """Clips gradients in place; a non-finite norm is reported and left alone (a divergence to record)."""

    spec = "none"

    def __call__(self, grads: list[torch.Tensor]) -> ClipResult:
        before = global_norm(grads)
        if not math.isfinite(before):
            return ClipResult(before, before, False)
        return self.clip(grads, before)

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        return ClipResult(before, before, False)


@dataclass
class NormClip(Clipper):
    """Rescale every gradient by theta / norm when the global norm exceeds theta (Pascanu et al. 2013)."""

    theta: float

    @property
    def spec(self) -> str:
        return f"norm:{self.theta:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        if before <= self.theta:
            return ClipResult(before, before, False)
        scale = self.theta / before
        for g in grads:
            g.mul_(scale)
        return ClipResult(before, global_norm(grads), True)


@dataclass
class ValueClip(Clipper):
    """Clamp every gradient element to [-theta, theta] (fires when any element is outside)."""

    theta: float

    @property
    def spec(self) -> str:
        return f"value:{self.theta:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        fired = any(bool((g.abs() > self.theta).any()) for g in grads)
        for g in grads:
            g.clamp_(-self.theta, self.theta)
        return ClipResult(before, global_norm(grads), fired)


STRATEGIES: dict[str, type[Clipper]] = {"none": Clipper, "norm": NormClip, "value": ValueClip}


def parse_clip(spec: str) -> Clipper:
    """'none', 'norm:THETA' or 'value:THETA' -> a fresh clipper; a malformed spec says what is allowed."""
    name, sep, arg = str(spec).partition(":")
    cls = lookup(STRATEGIES, name.strip(), "clipping strategy")
    if cls is Clipper:
        if sep:
            raise ValueError(f"clip {spec!r}: 'none' takes no threshold. Write 'none'.")
        return Clipper()
    try:
        theta = float(arg)
    except ValueError:
        theta = float("nan")
    if not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"clip {spec!r}: {name} needs a positive threshold, written '{name}:THETA' (e.g. '{name}:1').")
    return cls(theta)
