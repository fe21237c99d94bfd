"""Gradient clipping that really clips and says what it did. One string format everywhere: 'none',
'norm:THETA' (global norm, direction kept), 'value:THETA' (element-wise clamp), 'adaptive:P' (norm
clipping at the P-th percentile of the norms seen so far), 'mean:K' (at K times their mean)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch

from ..names import lookup


@dataclass
class ClipResult:
    norm_before: float  # global L2 norm of all gradients, float64
    norm_after: float
    clipped: bool
    threshold: float = float("nan")  # the norm (or, for value clipping, element) bound in force this step
    cosine: float = 1.0  # between the clipped and the unclipped gradient: 1 when the direction is kept


def global_norm(grads: list[torch.Tensor]) -> float:
    """The L2 norm of all gradients together: per-tensor norms, combined in float64."""
    if not grads:
        return 0.0
    norms = torch.stack(torch._foreach_norm(grads)).double()  # one fused call for all tensors, not one per tensor
    return float(torch.linalg.vector_norm(norms))


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """cos(a, b) of two gradients given tensor by tensor, every sum in float64 (norms summed in float32
    put the cosine of a rescaled float32 gradient 1e-5 above 1)."""
    x, y = (torch.cat([t.reshape(-1) for t in ts]).double() for ts in (a, b))  # (N,) each: three sums, one sync
    dot, norm_a, norm_b = torch.stack([x @ y, x @ x, y @ y]).tolist()
    return dot / math.sqrt(norm_a * norm_b) if dot else 0.0


class Clipper:
    """Clips gradients in place; a non-finite norm is reported and left alone (a divergence to record).
    measure_cosine: compare the clipped gradient with a copy of the unclipped one (off for timing)."""

    spec = "none"
    measure_cosine = True

    def __call__(self, grads: list[torch.Tensor]) -> ClipResult:
        before = global_norm(grads)
        if not math.isfinite(before):
            return ClipResult(before, before, False)
        return self.clip(grads, before)

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        return ClipResult(before, before, False)


def apply_in_place(grads: list[torch.Tensor], before: float, theta: float, change, measure: bool = True) -> ClipResult:
    """Run `change` on every gradient in place and say what it did: the norm after, and the cosine with
    the unclipped gradient (measured on a copy, unless `measure` is off for timing)."""
    unclipped = torch._foreach_mul(grads, 1.0) if measure else None  # a copy in one fused call
    for g in grads:
        change(g)
    return ClipResult(before, global_norm(grads), True, theta, cosine(unclipped, grads) if measure else float("nan"))


def rescale(grads: list[torch.Tensor], before: float, theta: float, measure: bool = True) -> ClipResult:
    """Global-norm clipping at theta (Pascanu et al. 2013): every gradient times theta / norm when the
    norm exceeds theta. The cosine is measured (1 to float precision), unless `measure` is off (timing)."""
    if not before > theta:
        return ClipResult(before, before, False, theta)
    scale = theta / before
    return apply_in_place(grads, before, theta, lambda g: g.mul_(scale), measure)


@dataclass
class NormClip(Clipper):
    """Rescale every gradient by theta / norm when the global norm exceeds theta (Pascanu et al. 2013)."""

    theta: float

    @property
    def spec(self) -> str:
        return f"norm:{self.theta:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        return rescale(grads, before, self.theta, self.measure_cosine)


@dataclass
class AdaptiveClip(Clipper):
    """Norm clipping at the p-th percentile of the norms seen before this step in the run (none at the first)."""

    p: float
    seen: list[float] = field(default_factory=list)  # sorted

    @property
    def spec(self) -> str:
        return f"adaptive:{self.p:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        theta = percentile(self.seen, self.p) if self.seen else float("inf")
        bisect.insort(self.seen, before)
        return rescale(grads, before, theta, self.measure_cosine)


@dataclass
class MeanClip(Clipper):
    """Norm clipping at k times the average norm of the steps so far that it did not clip (Pascanu et al.
    2013: half to ten times the average still converges); none at the first step. Clipped steps stay out
    of the average, so an explosion cannot raise its own threshold (an average over every norm, tried
    first, chased exploding norms upward and let runs diverge that fixed-threshold clipping held)."""

    k: float
    total: float = 0.0
    count: int = 0

    @property
    def spec(self) -> str:
        return f"mean:{self.k:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        theta = self.k * self.total / self.count if self.count else float("inf")
        result = rescale(grads, before, theta, self.measure_cosine)
        if not result.clipped:
            self.total, self.count = self.total + before, self.count + 1
        return result


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile of sorted values, interpolated linearly (numpy's default)."""
    position = (len(values) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


@dataclass
class ValueClip(Clipper):
    """Clamp every gradient element to [-theta, theta] (fires when any element is outside)."""

    theta: float

    @property
    def spec(self) -> str:
        return f"value:{self.theta:g}"

    def clip(self, grads: list[torch.Tensor], before: float) -> ClipResult:
        fired = any(bool((g.abs() > self.theta).any()) for g in grads)
        if not fired:
            return ClipResult(before, before, False, self.theta)
        return apply_in_place(grads, before, self.theta, lambda g: g.clamp_(-self.theta, self.theta), self.measure_cosine)


STRATEGIES: dict[str, type[Clipper]] = {"none": Clipper, "norm": NormClip, "value": ValueClip, "adaptive": AdaptiveClip, "mean": MeanClip}
BOUNDS = {"adaptive": (0.0, 100.0)}  # a percentile


def parse_clip(spec: str) -> Clipper:
    """'none', 'norm:THETA', 'value:THETA', 'adaptive:P' or 'mean:K' -> a fresh clipper (with its own
    history); a malformed spec says what is allowed."""
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
    low, high = BOUNDS.get(name, (0.0, math.inf))
    if not (low < theta <= high and math.isfinite(theta)):
        allowed = f"a percentile in (0, 100], written '{name}:P' (e.g. '{name}:90')" if name in BOUNDS else \
            f"a positive number, written '{name}:{'K' if name == 'mean' else 'THETA'}' (e.g. '{name}:1')"
        raise ValueError(f"clip {spec!r}: {name} needs {allowed}.")
    return cls(theta)
