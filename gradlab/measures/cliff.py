"""Pascanu, Mikolov and Bengio 2013's cliff: one unit, x_t = w sigmoid(x_{t-1}) + b, x_0 = 0.5, no input,
50 steps, loss (sigmoid(x_50) - 0.7)^2. Its loss surface over (w, b) has a wall where the gradient is
hundreds of times larger than around it; gradient-descent paths from the same starts, clipped or not,
show what the wall does to an unclipped step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..training.clipping import parse_clip
from . import COMMON_COLUMNS

COLUMNS = COMMON_COLUMNS | {
    "clip": "clipping of the 2-vector gradient (none, norm:THETA, ...)", "lr": "gradient-descent step size",
    "steps": "gradient-descent steps per start", "seq_len": "steps of the recurrence (50 in the paper)",
    "x0": "the unit's initial state", "target": "the loss's target for sigmoid(x_T)",
    "starts": "(w, b) where the paths start", "w_min": "surface: smallest w", "w_max": "surface: largest w",
    "b_min": "surface: smallest b", "b_max": "surface: largest b", "resolution": "surface: points per axis",
    "start": "which start (its index in starts)", "step": "gradient-descent steps taken (0: the start)",
    "w": "the recurrent weight", "b": "the bias", "loss": "(sigmoid(x_T) - target)^2",
    "grad_norm_pre": "||(dL/dw, dL/db)|| before clipping", "clipped": "whether clipping changed the step",
    "step_length": "||(delta w, delta b)|| of the step taken from here",
    "final_w": "w where the path ended", "final_b": "b where the path ended", "final_loss": "the loss there",
    "largest_grad_norm": "the path's largest gradient norm (the wall's height where it met it)",
    "longest_step": "the path's longest step", "steps_clipped": "steps whose gradient was clipped",
}


MAX_RESOLUTION = 2001  # points per axis of the surface: 4 million losses, far beyond what the figure shows


@dataclass
class Config:
    clip: str = "none"
    lr: float = 2.0  # large enough that an unclipped step on the wall throws the path far away
    steps: int = 200
    seq_len: int = 50  # Pascanu et al.'s
    x0: float = 0.5
    target: float = 0.7
    starts: tuple = ((8.0, -4.5), (9.0, -5.0), (6.0, -3.5))  # on the high plateau, near the wall
    w_min: float = 2.0
    w_max: float = 10.0
    b_min: float = -6.0
    b_max: float = 7.0  # high enough to show where an unclipped step off the wall lands
    resolution: int = 241
    seed: int = 0  # nothing random; kept for the runner's seeding

    def validate(self) -> None:
        parse_clip(self.clip)
        if not (self.lr > 0 and self.steps >= 1 and self.seq_len >= 1 and self.resolution >= 2):
            raise ValueError("lr must be > 0, steps, seq_len >= 1 and resolution >= 2.")
        if self.resolution > MAX_RESOLUTION:
            raise ValueError(f"resolution must be at most {MAX_RESOLUTION} points per axis (the surface is resolution^2 points, each "
                             f"{self.seq_len} steps long; the figure cannot show more), got {self.resolution}.")
        numbers = [self.lr, self.x0, self.target, self.w_min, self.w_max, self.b_min, self.b_max]
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"lr, x0, target and the surface's bounds must be finite numbers, got {numbers}.")
        if not (self.w_min < self.w_max and self.b_min < self.b_max):
            raise ValueError("the surface needs w_min < w_max and b_min < b_max.")
        if not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in self.starts):
            raise ValueError(f"starts must be (w, b) pairs, got {self.starts}.")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for s in self.starts for v in s):
            raise ValueError(f"starts must be (w, b) pairs of finite numbers (a path from NaN or inf goes nowhere), got {self.starts}.")


def loss(w: torch.Tensor, b: torch.Tensor, cfg: Config) -> torch.Tensor:
    """(sigmoid(x_T) - target)^2 for every (w, b) pair (any shape, float64)."""
    x = torch.full_like(w, cfg.x0)
    for _ in range(cfg.seq_len):
        x = w * torch.sigmoid(x) + b
    return (torch.sigmoid(x) - cfg.target) ** 2


def gradient(w: float, b: float, cfg: Config) -> tuple[float, torch.Tensor]:
    """The loss and (dL/dw, dL/db) at one point, by autograd through the 50 steps."""
    wb = torch.tensor([w, b], dtype=torch.float64, requires_grad=True)
    value = loss(wb[0], wb[1], cfg)
    (grad,) = torch.autograd.grad(value, wb)
    return float(value.detach()), grad


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    paths = []
    for k, (w, b) in enumerate(cfg.starts):
        clipper = parse_clip(cfg.clip)
        for step in range(cfg.steps + 1):
            value, grad = gradient(w, b, cfg)
            row = {"start": k, "step": step, "w": w, "b": b, "loss": value, "grad_norm_pre": float(grad.norm())}
            if step == cfg.steps:
                paths.append(row | {"clipped": False, "step_length": 0.0})
                break
            report = clipper([grad])
            move = cfg.lr * grad
            paths.append(row | {"clipped": report.clipped, "step_length": float(move.norm())})
            w, b = w - float(move[0]), b - float(move[1])
    ws = torch.linspace(cfg.w_min, cfg.w_max, cfg.resolution, dtype=torch.float64)
    bs = torch.linspace(cfg.b_min, cfg.b_max, cfg.resolution, dtype=torch.float64)
    W, B = torch.meshgrid(ws, bs, indexing="ij")
    with torch.no_grad():
        surface = loss(W, B, cfg)
    rows = [{"w": w, "b": b, "loss": v} for w, b, v in zip(W.flatten().tolist(), B.flatten().tolist(), surface.flatten().tolist())]
    return {"results": paths, "surface": rows}


from ..derived.cliff import derive  # noqa: E402,F401  (tables made from the rows; outside the source digest)
