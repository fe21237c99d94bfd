"""How far back a trained model looks, after Khandelwal et al. 2018, with its noise and its warm-up kept apart
from the context it uses.

For every scored target (a task says which: tasks.base.Items) and every k, the model's loss with only the last
k inputs, against a reference on the same targets:
- cut: a zero state before the last k inputs, against the full context (Khandelwal et al.'s measure). It
  mixes two things: what the inputs before k say (content), and what starting from a zero state costs
  whatever the inputs (warm-up: a content-independent offset at every k).
- replaced: the inputs before the last k taken from unrelated text, against the real window of the same
  length (so both have warmed up over as many inputs): content alone. For positions of one text the
  replacement is DONOR_RULE's (never a neighbouring position's window: that is the same text a few
  characters on); for independent sequences, another sequence's.
- shuffled: the inputs before the last k permuted, against the real window: their order alone.
warm-up at k is cut minus replaced (both against the window): what a zero state costs over a state warmed up
on unrelated inputs.

Each gap is relative (mean loss difference over the mean reference loss) and comes with a 95% interval
(gap_interval) for the gap over every position the targets were drawn from, on the paired per-target
differences. A k is 'enough' unless its interval lies wholly above the tolerance (evidence that cutting
there costs more than 1%); the context used is the smallest k from which every longer k is enough, and its
upper bound the smallest k from which every longer k's interval lies wholly within the tolerance (where the
two differ, the noise decides, not the model). The measure reads tasks; tasks never import it.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import numpy as np
import torch
from torch.nn import functional as F

from .names import DONOR_RULE  # the rule in words (torch-free, so the page can say it)
from .tasks.base import Items, Spec

PROBES = ("truncate", "shuffle", "replace")  # the last k inputs kept; before them: nothing, a permutation, another item's
REFERENCE = {"truncate": "full", "shuffle": "window", "replace": "window"}  # what each probe's loss is compared with
TOLERANCE = 0.01  # a cut that costs at most 1% of the reference loss is enough (Khandelwal et al.'s scale)
FLOOR = 1e-3  # ... or at most this much, for a loss near 0 (a solved copy): 1% of nothing is no tolerance
CHUNK = 250  # items per forward pass: bounds the (L, chunk, H) outputs
BLOCK = 1  # targets per block of the interval: 1, for targets drawn at random (a text's positions, independent sequences)
LEVEL = 0.95  # the intervals' coverage


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
    return torch.cat(out).cpu()


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
    """The window with its first L - keep inputs taken from the next item's window (the last wraps round): for
    items that are independent sequences (a synthetic task's), whose neighbours are unrelated by construction.
    Never for positions of one text (their neighbours' windows are the same text a few characters on: donors)."""
    head = windows.shape[0] - keep
    if head < 1 or windows.shape[1] < 2:
        return windows
    return torch.cat([windows[:head].roll(-1, dims=1), windows[head:]])


def donors(length: int, positions: torch.Tensor, window: int) -> torch.Tensor:
    """(N,) each target position's donor in a text of `length` characters: the position half the text on,
    counted over the positions with a whole `window` before them and wrapping round from the last to the first:
    far from the item, in another stretch of the text (another block, another song), whatever the draw of
    positions, and the same for every k and every model. Its first window - k characters replace the item's
    (DONOR_RULE; `separation` measures the distance, profile checks it)."""
    span = length - window  # positions window .. length - 1 have a whole window before them
    if span < 1:
        return positions.clone()
    return window + (positions - window + span // 2) % span


def separation(positions: torch.Tensor, donor: torch.Tensor, window: int, keep: int) -> torch.Tensor:
    """(N,) characters strictly between each donated head (the donor's window less its last `keep`:
    text[q - window : q - keep]) and the item's own window and target (text[p - window : p + 1]); negative
    where they overlap."""
    before = positions - window - (donor - keep)  # head ends before the item's window starts
    after = (donor - window) - positions - 1  # head starts after the target
    return torch.where(donor < positions, before, after)


def _donated(windows: torch.Tensor, donor_windows: torch.Tensor, keep: int) -> torch.Tensor:
    """The window with its first L - keep inputs taken from its donor's window (keep 0: the whole window)."""
    head = windows.shape[0] - keep
    return torch.cat([donor_windows[:head], windows[head:]]) if head > 0 else windows


def _t_quantile(p: float, df: float) -> float:
    """Student's t quantile: the Cornish-Fisher series in 1/df around the normal quantile (Abramowitz and
    Stegun 26.7.5; within 0.004 of the exact value from df 3 on, 1e-3 from 4)."""
    z = NormalDist().inv_cdf(p)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def intervals(diff: np.ndarray, ref: np.ndarray, level: float = LEVEL, population: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gap_interval for many samples at once: diff and ref (D, n), a row per sample of n targets; (gap, lo, hi),
    each (D,)."""
    diff, ref = np.atleast_2d(np.asarray(diff, float)), np.atleast_2d(np.asarray(ref, float))
    n = diff.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = diff.sum(1) / ref.sum(1)
        if n < 2:
            return gap, gap.copy(), gap.copy()
        e = diff - gap[:, None] * ref  # the ratio's linearisation: its mean is the gap's error times the mean reference
        f = min(n / population, 1.0) if population else 0.0  # the share of the population drawn (no replacement)
        sd = e.std(1, ddof=1)
        se = np.sqrt(1 - f) * sd / math.sqrt(n) / ref.mean(1)
        centred = e - e.mean(1, keepdims=True)
        skew = np.nan_to_num((centred**3).mean(1) / centred.std(1) ** 3)  # the targets' skewness ...
        g = skew * (1 - 2 * f) / math.sqrt(n * (1 - f)) if f < 1 else np.zeros_like(skew)  # ... and their mean's
        a, b = g / 3, g / 6  # Hall's (1992) transformation of the studentised mean
        excess = np.nan_to_num((centred**4).mean(1) / centred.std(1) ** 4 - 3).clip(min=0)  # heavy tails: sd less sure ...
        df = np.maximum(2 / (2 / (n - 1) + excess / n), min(3, n - 1))  # ... its square a chi-square of these degrees of freedom (n - 1 for normal targets)
        t = np.array([_t_quantile(1 - (1 - level) / 2, v) for v in df])

        def inverse(x: float) -> np.ndarray:
            out = (np.cbrt(1 + 3 * a * (x - b)) - 1) / a
            return np.where(np.abs(a) < 1e-12, x - b, out)

        lo, hi = gap - se * inverse(t), gap - se * inverse(-t)
    lo, hi = np.where(se > 0, lo, gap), np.where(se > 0, hi, gap)
    return gap, lo, hi


def gap_interval(losses: np.ndarray, reference: np.ndarray, block: int = BLOCK, level: float = LEVEL,
                 population: int | None = None) -> tuple[float, float, float]:
    """The relative gap sum(losses - reference) / sum(reference) over paired per-target losses, and its
    `level` interval, for targets drawn at random without replacement from `population` (None: from no end,
    as independent sequences; every target drawn: the gap itself, exactly): the interval is for the gap over
    every target of the population, not over other texts. The gap is a ratio of means:
    linearised (its error is the mean of d - gap * r over the mean r), with the finite population's
    correction, Student's t quantile, and Hall's (1992) correction for the skewness of the targets (a few
    targets carry most of a cut's cost: a symmetric interval misses on the high side) and, for heavy tails, a t
    quantile with fewer degrees of freedom (2 / (2 / (n - 1) + excess kurtosis / n): a sample's spread is less
    sure). Measured on the held-out lyrics (caches of 12 and 200 characters, 34 cuts, 2,000 draws each of the
    positions a run draws): 95.5%, 95.3%, 95.0%, 95.1% at 100, 200, 500, 1000 positions for differences of
    skewness up to 3; more skewed differences need more positions (skewness 9.5: 78% at 100, 89% at 200, 96%
    at 500). block > 1: the same on sums over blocks of `block` neighbouring targets (targets that are not a
    random draw, e.g. every position of a stretch)."""
    diff, ref = np.asarray(losses, float) - np.asarray(reference, float), np.asarray(reference, float)
    total = ref.sum()
    if len(diff) < 2 or not total:
        gap = float(diff.sum() / total) if total else math.nan
        return gap, gap, gap
    if block > 1:
        edges = np.arange(0, len(diff), block)
        diff, ref = np.add.reduceat(diff, edges), np.add.reduceat(ref, edges)
        population = -(-population // block) if population else None
    gap, lo, hi = intervals(diff[None], ref[None], level, population)
    return float(gap[0]), float(lo[0]), float(hi[0])


def _population(spec: Spec, groups: list[Items]) -> int | None:
    """How many targets the items were drawn from: for items of texts, every position with a whole window
    before it and a target the model can be scored on (the draw Lyrics._positions makes); None (no end) for
    independent sequences."""
    if any(g.text is None for g in groups):
        return None
    total = 0
    for g in groups:
        targets = g.text[g.windows.shape[0]:]
        total += int((targets < spec.output_size).sum()) if spec.loss == "cross_entropy" else len(targets)
    return total


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
            hidden, state = model.cell(model.cell_inputs(x[:, None].to(next(model.parameters()).device)), state)  # (c, 1, H)
            sel = wanted[i : i + len(x)]
            if bool(sel.any()):
                logits = model.readout(hidden[sel.to(hidden.device)])[:, 0]  # (n, V): the output layer only where scored
                targets = ids[i + 1 : i + 1 + len(x)][sel].to(logits.device)
                losses.append(F.cross_entropy(logits.double(), targets, reduction="none"))
    return torch.cat(losses).cpu()


def _references(model: torch.nn.Module, spec: Spec, g: Items) -> dict[str, torch.Tensor]:
    """Each item's loss with its full context and with its real window (the same when the window is the whole past)."""
    window = item_losses(model, spec, g.windows, g.targets)
    full = stream_losses(model, g.text, g.positions) if g.text is not None else window
    return {"full": full, "window": window}


def _donor_windows(g: Items, lengths: list[int]) -> torch.Tensor | None:
    """(L, N) each item's donor window (DONOR_RULE) for items of one text; None where the text is too short for
    every k replaced (< L) to keep its head L + k characters from the item (a text under about 7 L)."""
    L = g.windows.shape[0]
    q = donors(len(g.text), g.positions, L)
    for k in lengths:
        if k < L and bool((separation(g.positions, q, L, k) < L + k).any()):
            return None
    return g.text[q[None, :] - torch.arange(L, 0, -1)[:, None]].to(g.windows.device)


def profile(model: torch.nn.Module, spec: Spec, groups: list[Items], lengths: list[int], seed: int = 0,
            probes: tuple[str, ...] = PROBES) -> list[dict]:
    """Per probe and k: the mean loss over every item with its context cut (or scrambled) before the last k
    inputs, the mean loss of its reference (REFERENCE: the full context, or the real window) on the same
    items, the relative gap with its interval, and their count; 'loss_full' is the full-context loss. A k at
    or past an item's window is its whole window (for a synthetic sequence, its full context). k = 0 (shuffle
    and replace only: nothing is left to cut to) scrambles or replaces the whole window.

    replace: for items of a text (Items.text), DONOR_RULE; the probe is left out, with a warning, where a text
    is too short for it. For independent sequences, the next item's (they are unrelated by construction)."""
    if any(k < 0 for k in lengths):
        raise ValueError(f"context lengths must be >= 0, got {sorted(lengths)}.")
    gen = torch.Generator().manual_seed(seed)  # the same scrambles for every model
    refs = [_references(model, spec, g) for g in groups]
    ref_of = {name: torch.cat([r[name] for r in refs]).numpy() for name in ("full", "window")}
    donor = [_donor_windows(g, lengths) if g.text is not None else None for g in groups]
    if "replace" in probes and any(g.text is not None and d is None for g, d in zip(groups, donor)):
        warnings.warn(f"the replace probe is left out: a text of {min(len(g.text) for g in groups if g.text is not None)} characters is "
                      f"too short for its rule ({DONOR_RULE}) with windows of {max(g.windows.shape[0] for g in groups)}", stacklevel=2)
        probes = tuple(p for p in probes if p != "replace")
    population = _population(spec, groups)
    rows = []
    for k in sorted(set(lengths)):
        for probe in probes:
            if k == 0 and probe == "truncate":
                continue  # no inputs at all: no prediction to cut to
            losses = []
            for g, r, d in zip(groups, refs, donor):
                keep = min(k, g.windows.shape[0])
                if keep >= g.windows.shape[0]:
                    losses.append(r["window"])  # the whole window kept: nothing to cut or scramble
                    continue
                if probe == "truncate":
                    w = g.windows[-keep:]
                elif probe == "shuffle":
                    w = _shuffled(g.windows, keep, gen)
                elif d is not None:
                    w = _donated(g.windows, d, keep)
                else:
                    w = _replaced(g.windows, keep)
                losses.append(item_losses(model, spec, w, g.targets))
            loss = torch.cat(losses).numpy()
            reference = ref_of[REFERENCE[probe]]
            gap, lo, hi = gap_interval(loss, reference, population=population)
            rows.append({"probe": probe, "k": k, "loss": float(loss.mean()), "reference": REFERENCE[probe], "loss_ref": float(reference.mean()),
                         "gap": gap, "gap_lo": lo, "gap_hi": hi, "loss_full": float(ref_of["full"].mean()),
                         "loss_window": float(ref_of["window"].mean()), "items": len(loss)})
    return rows


def _floor(reference: float, tolerance: float, floor: float) -> float:
    """The tolerance as a relative gap: 1%, or FLOOR in absolute terms for a reference loss near 0."""
    return max(tolerance, floor / abs(reference)) if reference else math.inf


def used_context(ks: list[int], gap_lo: list[float], gap_hi: list[float], reference: float,
                 tolerance: float = TOLERANCE, floor: float = FLOOR) -> tuple[float, float]:
    """(context used, its upper bound) from each k's interval of the relative gap: the smallest k from which
    no longer k tried shows evidence of costing more than the tolerance (its interval wholly above it), and
    the smallest k from which every longer k's interval lies within it. inf: even the longest k tried is
    not enough (or not surely within). A k that does better than the reference costs nothing."""
    bound = _floor(reference, tolerance, floor)
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    used = upper = math.inf
    for i in reversed(order):
        if gap_lo[i] > bound:
            break
        used = ks[i]
    for i in reversed(order):
        if gap_hi[i] > bound:
            break
        upper = ks[i]
    return float(used), float(max(upper, used))


def within(loss: float, full: float, tolerance: float = TOLERANCE, floor: float = FLOOR) -> bool:
    """Whether a loss is within the tolerance of the full-context loss, on either side (the rule of tables
    written before the context measure had intervals)."""
    return abs(loss - full) <= max(tolerance * abs(full), floor)


def effective_context(ks: list[int], losses: list[float], full: float, tolerance: float = TOLERANCE, floor: float = FLOOR) -> float:
    """Khandelwal et al.'s point rule, for tables without intervals: the smallest k from which every longer k
    tried stays within the tolerance of the full-context loss (two-sided); NaN when even the longest k is not."""
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    found = math.nan
    for i in reversed(order):
        if not within(losses[i], full, tolerance, floor):
            break
        found = ks[i]
    return float(found)
