"""How far back a trained model looks, after Khandelwal et al. 2018: each scored target's loss with the
context cut to the last k inputs, or with everything before them shuffled or replaced, against the model's
loss with its full context on the same targets. Any task, any model (tasks say which targets to score)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from .tasks.base import Batch, Spec

PROBES = ("truncate", "shuffle", "replace")  # the last k inputs kept; before them: nothing, a permutation, another item's
TOLERANCE = 0.01  # effective context: every longer context within 1% of the full-context loss (Khandelwal et al.'s scale)
FLOOR = 1e-3  # ... or within this much, for a loss near 0 (a solved copy): 1% of nothing is no tolerance
CHUNK = 250  # items per forward pass: bounds the (L, chunk, H) outputs


@dataclass
class Items:
    """Scored targets that share a window length: the L inputs up to and including the step that predicts
    each target, the targets, and each target's loss with the model's full context."""

    windows: torch.Tensor  # (L, N) ids or (L, N, I)
    targets: torch.Tensor  # (N,) ids or (N, O)
    full_loss: torch.Tensor | None = None  # (N,); None: the whole window is the full context


def item_losses(model: torch.nn.Module, spec: Spec, windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) each target's loss from the last output, the model reading `windows` from a zero state."""
    out = []
    last_step = torch.zeros(windows.shape[0], dtype=torch.bool, device=windows.device)
    last_step[-1] = True  # only the last step reaches the output layer (a vocabulary-wide readout per step is most of the cost)
    with torch.no_grad():
        for i in range(0, windows.shape[1], CHUNK):
            logits, _ = model(windows[:, i : i + CHUNK], None, last_step)  # (1, n, O)
            last, y = logits[-1], targets[i : i + CHUNK]  # (n, O)
            if spec.loss == "cross_entropy":
                out.append(F.cross_entropy(last.double(), y, reduction="none"))
            else:
                out.append((last.double() - y.double()).pow(2).mean(-1))
    return torch.cat(out)


def _shuffled(windows: torch.Tensor, keep: int, gen: torch.Generator) -> torch.Tensor:
    """The window with its first L - keep inputs permuted, a permutation per item; the last `keep` untouched."""
    L, N = windows.shape[:2]
    head = L - keep
    if head < 2:
        return windows
    order = torch.argsort(torch.rand(head, N, generator=gen), dim=0)  # (head, N): a permutation of each column
    if windows.dim() == 3:
        order = order[..., None].expand(-1, -1, windows.shape[-1])
    return torch.cat([windows[:head].gather(0, order.to(windows.device)), windows[head:]])


def _replaced(windows: torch.Tensor, keep: int) -> torch.Tensor:
    """The window with its first L - keep inputs taken from the next item's window (the last wraps round)."""
    head = windows.shape[0] - keep
    if head < 1 or windows.shape[1] < 2:
        return windows
    return torch.cat([windows[:head].roll(-1, dims=1), windows[head:]])


def profile(model: torch.nn.Module, spec: Spec, groups: list[Items], lengths: list[int], seed: int = 0,
            probes: tuple[str, ...] = PROBES) -> list[dict]:
    """Per probe and k: the mean loss over every item with its context cut (or scrambled) before the last k
    inputs, the mean full-context loss of the same items, and their count. A k at or past an item's
    window is its whole window (for a synthetic sequence, its full context)."""
    gen = torch.Generator().manual_seed(seed)  # the same scrambles for every model
    full = [g.full_loss if g.full_loss is not None else item_losses(model, spec, g.windows, g.targets) for g in groups]
    n = sum(len(f) for f in full)
    loss_full = float(sum(f.sum() for f in full) / n)
    rows = []
    for k in sorted(set(lengths)):
        for probe in probes:
            total = 0.0
            for g, f in zip(groups, full):
                keep = min(k, g.windows.shape[0])
                if probe == "truncate":
                    w = g.windows[-keep:]
                elif probe == "shuffle":
                    w = _shuffled(g.windows, keep, gen)
                else:
                    w = _replaced(g.windows, keep)
                total += float(item_losses(model, spec, w, g.targets).sum()) if keep < g.windows.shape[0] or g.full_loss is not None else float(f.sum())
            rows.append({"probe": probe, "k": k, "loss": total / n, "loss_full": loss_full, "items": n})
    return rows


def within(loss: float, full: float, tolerance: float = TOLERANCE, floor: float = FLOOR) -> bool:
    """Whether a loss is within the tolerance of the full-context loss, on either side."""
    return abs(loss - full) <= max(tolerance * abs(full), floor)


def effective_context(ks: list[int], losses: list[float], full: float, tolerance: float = TOLERANCE, floor: float = FLOOR) -> float:
    """The smallest k from which every longer k tried stays within the tolerance of the full-context loss
    (two-sided: a context that helps more than the full one is as far from it as one that helps less);
    NaN when even the longest k tried is not within it."""
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    found = math.nan
    for i in reversed(order):
        if not within(losses[i], full, tolerance, floor):
            break
        found = ks[i]
    return float(found)


def stream_losses(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """(N,) the loss of the target at each of `positions` (ids[p], predicted from ids[:p]) of one long text,
    the model reading the text from its start (state carried from chunk to chunk: the full context)."""
    if len(positions) > 1 and not bool((positions[1:] > positions[:-1]).all()):
        raise ValueError("stream_losses takes distinct positions in increasing order (the losses come in text order).")
    wanted = torch.zeros(len(ids), dtype=torch.bool)
    wanted[positions - 1] = True  # the step that reads ids[p - 1] predicts ids[p]
    losses, state = [], None
    with torch.no_grad():
        for i in range(0, int(positions.max()), chunk):
            x = ids[i : min(i + chunk, int(positions.max()))]
            hidden, state = model.cell(x[:, None].to(next(model.parameters()).device), state)  # (c, 1, H)
            sel = wanted[i : i + len(x)]
            if bool(sel.any()):
                logits = model.readout(hidden[sel.to(hidden.device)])[:, 0]  # (n, V): the output layer only where scored
                targets = ids[i + 1 : i + 1 + len(x)][sel].to(logits.device)
                losses.append(F.cross_entropy(logits.double(), targets, reduction="none"))
    return torch.cat(losses)


def sequence_items(batch: Batch, steps: list[int], count: int) -> list[Items]:
    """Items of a synthetic task's held-out batch: for each scored step s, the first `count` sequences'
    inputs up to s (their whole past: the full context) and the targets at s."""
    n = min(count, batch.x.shape[1])
    return [Items(batch.x[: s + 1, :n], batch.y[s, :n]) for s in steps]
