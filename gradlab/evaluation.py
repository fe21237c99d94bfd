"""Using long context on held-out text: evaluation modes of a trained character model, and where each gains.

Every mode reads a held-out text as one stream from its start (as the counting models do) and scores each target
before anything that saw it: the plain network; the network with a neural cache (Grave et al. 2017); the network
adapted by dynamic evaluation (Krause et al. 2018), and both together; the network mixed with the counting models
(the static Kneser-Ney n-gram and the same n-gram with a cache of the held-out text, gradlab.baselines.cache). Each
mode's settings are chosen on the validation text only and the test text is scored once with them. The trained
model is never changed (dynamic evaluation adapts a copy).

- Neural cache: p(w) = (1 - lambda) p_model(w) + lambda p_cache(w), p_cache(w) proportional to the sum over the
  scored targets x_{i+1} = w of the last `window` characters of exp(theta h_t . h_i), h the cell's output (what the
  output layer reads) at the step that predicted x_{i+1}. A target joins the cache only once it has been scored; a
  target with an empty cache (the first) is the model's alone. theta, window, lambda: a grid on validation.
- Dynamic evaluation: the text in segments of DYNAMIC_SEGMENT characters; each segment's targets are scored by the
  current weights, then one step on the segment's mean loss, with decay toward the trained weights theta_0: SGD,
  theta <- theta - lr g + decay (theta_0 - theta), or Krause et al.'s RMS rule, the step divided per weight by its
  RMS gradient over the training text and the decay scaled by it; the segment's gradient clipped at DYNAMIC_CLIP
  (ours: a rate near the edge of stability diverged on test unclipped); the state is carried from segment to segment.
  Rule, lr and decay: a grid on validation (lr 0, the plain network, among them). With the cache as well
  (dynamic_cache), the cache reads the adapted model's states, its settings chosen anew.
- Mix: w_net p_net + w_ngram p_ngram + w_cache p_ngram_cache, the weights by EM on validation.

Where each gains (by_distance): every scored test target by the distance back to the last earlier occurrence, in
the text read so far, of the CONTEXT_CHARS characters before it (the 5-gram's context): what a cache can copy.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .baselines.cache import mixture_weights
from .cells import detach

MODES = ("cache", "dynamic", "mix")  # the evaluation modes a run may ask for (TrainConfig.eval_modes); cache and dynamic together add dynamic_cache
NETWORK_MODES = ("cache", "dynamic", "dynamic_cache")  # the network alone (mix is not): the best of these and plain on validation is eval_best_mode
CACHE_THETAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # the neural cache's inverse temperatures tried on validation
CACHE_WINDOWS = (100, 300, 1000, 3000)  # characters it looks back
CACHE_LAMBDAS = tuple(i / 100 for i in range(100))  # its share of the mixture: 0, 0.01 .. 0.99
DYNAMIC_GRIDS = {"sgd": ((1.0, 2.0), (0.01,)),  # dynamic evaluation's rule: (rates, decays toward the trained weights) tried on validation
                 "rms": ((3e-4, 6e-4, 9e-4), (0.003, 0.01, 0.03))}  # (a counting-recipe GRU, clipped at 1: sgd 2.0 / 0.01 (64) and rms 6e-4 / 0.01 (55) best of wider grids)
DYNAMIC_CLIP = 1.0  # each segment's gradient clipped to this global norm: unclipped, the rate best on validation (rms 3e-4) diverged on test
RMS_STREAMS = 100  # the RMS rule's prior: the training text read as this many streams (Krause et al.'s batch of 100)
RMS_EPSILON = 2e-5  # ... and its stabiliser (theirs)
DYNAMIC_SEGMENT = 20  # characters per segment: scored, then one step
CONTEXT_CHARS = 4  # by_distance: the context whose last earlier occurrence is looked for (the 5-gram's)
DISTANCE_BANDS = ((1, 11), (11, 101), (101, 1001), (1001, 0))  # [lo, hi) characters back; 0: no top; 'never' besides
CHUNK = 1000  # characters per forward pass of a stream read
ROWS = 256  # targets per block of the neural cache's similarity matrix


@dataclass
class Read:
    """One held-out text read as one stream: its scored targets (positions p >= 1 whose id is not the unknown one,
    in order), their ids, the model's -ln p of each, and the cell's output at the step that predicted each."""

    positions: torch.Tensor  # (N,) long
    targets: torch.Tensor  # (N,) long
    losses: torch.Tensor  # (N,) float64
    hidden: torch.Tensor  # (N, H) float64, on the model's device


def scored_positions(ids: torch.Tensor, unknown: int | None) -> torch.Tensor:
    """(N,) the positions p >= 1 of a text whose id is a character the model can name: its targets, in order."""
    positions = torch.arange(1, len(ids))
    return positions[ids[1:] != unknown] if unknown is not None else positions


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def read(model: torch.nn.Module, ids: torch.Tensor, unknown: int | None, chunk: int = CHUNK) -> Read:
    """The model reading `ids` from its start, state carried (gradlab.context.stream_losses' way, the same sums), in
    eval mode: each scored target's loss and the cell's output that predicted it."""
    positions = scored_positions(ids, unknown)
    wanted = torch.zeros(len(ids), dtype=torch.bool)
    wanted[positions - 1] = True  # the step that reads ids[p - 1] predicts ids[p]
    device, was = _device(model), model.training
    model.eval()
    try:
        losses, hidden, state = [], [], None
        for i in range(0, len(ids) - 1, chunk):
            x = ids[i : min(i + chunk, len(ids) - 1)]
            out, state = model.cell(model.cell_inputs(x[:, None].to(device)), state)  # (c, 1, H)
            sel = wanted[i : i + len(x)]
            if bool(sel.any()):
                h = out[sel.to(out.device)]  # (n, 1, H)
                logits = model.readout(h)[:, 0]
                losses.append(F.cross_entropy(logits.double(), ids[i + 1 : i + 1 + len(x)][sel].to(device), reduction="none").cpu())
                hidden.append(h[:, 0].double())
    finally:
        model.train(was)
    H = model.cell.hidden_size
    return Read(positions, ids[positions], torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64),
                torch.cat(hidden) if hidden else torch.zeros(0, H, dtype=torch.float64, device=device))


# ---- neural cache (Grave et al. 2017)

def neural_cache_probs(hidden: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor, thetas=CACHE_THETAS,
                       windows=CACHE_WINDOWS, rows: int = ROWS) -> torch.Tensor:
    """(len(thetas), len(windows), N) float64: p_cache of each scored target, the cache holding the earlier scored
    targets among the last `window` characters, each weighted by exp(theta h_t . h_i); NaN where the cache is empty.
    hidden (N, H): the output that predicted each target; targets, positions (N,)."""
    n = len(targets)
    out = torch.full((len(thetas), len(windows), n), math.nan, dtype=torch.float64)
    if not n:
        return out
    device = hidden.device
    pos, tgt = positions.to(device), targets.to(device)
    thetas_t = torch.tensor(thetas, dtype=torch.float64, device=device)
    widest = max(windows)
    for a in range(0, n, rows):
        b = min(a + rows, n)
        lo = int(torch.searchsorted(positions, positions[a] - widest))  # the first cache entry any of these rows can see
        sims = hidden[a:b] @ hidden[lo:b].T  # (r, c)
        back = pos[a:b, None] - pos[None, lo:b]  # characters from each entry's target back to this row's
        same = tgt[a:b, None] == tgt[None, lo:b]
        for k, window in enumerate(windows):
            inside = (back >= 1) & (back <= window)  # earlier targets (scored already), within the window
            logits = torch.where(inside, thetas_t[:, None, None] * sims, -math.inf)  # (thetas, r, c)
            top = logits.amax(-1, keepdim=True)
            weights = torch.exp(logits - torch.where(torch.isfinite(top), top, 0.0))
            total = weights.sum(-1)
            p = (weights * same).sum(-1) / total
            out[:, k, a:b] = torch.where(total > 0, p, math.nan).cpu()
    return out


def cache_mixture_losses(net_losses: torch.Tensor, p_cache: torch.Tensor, lam: float) -> torch.Tensor:
    """(N,) -ln((1 - lam) p_model + lam p_cache); a target with an empty cache (NaN) is the model's alone."""
    p_net = torch.exp(-net_losses)
    mixed = (1 - lam) * p_net + lam * torch.nan_to_num(p_cache, nan=0.0)
    return -torch.log(torch.where(torch.isnan(p_cache), p_net, mixed))


def choose_cache(val: Read, thetas=CACHE_THETAS, windows=CACHE_WINDOWS, lambdas=CACHE_LAMBDAS) -> dict:
    """theta, window and lambda with the lowest mean validation loss (a grid), and that loss."""
    probs = neural_cache_probs(val.hidden, val.targets, val.positions, thetas, windows)
    best = {"loss": math.inf}
    for i, theta in enumerate(thetas):
        for k, window in enumerate(windows):
            for lam in lambdas:
                loss = float(cache_mixture_losses(val.losses, probs[i, k], lam).mean())
                if loss < best["loss"]:
                    best = {"loss": loss, "theta": theta, "window": window, "lambda": lam}
    return best


def cache_losses(text: Read, theta: float, window: int, lam: float) -> torch.Tensor:
    """(N,) each target's loss under the neural cache at these settings."""
    return cache_mixture_losses(text.losses, neural_cache_probs(text.hidden, text.targets, text.positions, (theta,), (window,))[0, 0], lam)


# ---- dynamic evaluation (Krause et al. 2018)

def gradient_rms(model: torch.nn.Module, ids: torch.Tensor, segment: int = DYNAMIC_SEGMENT, streams: int = RMS_STREAMS) -> list[torch.Tensor]:
    """Per parameter, sqrt(mean g^2) over the gradients of the mean loss of each segment of `ids` (the training text)
    read as `streams` parallel streams, state carried (Krause et al.'s global prior for the RMS rule): how large a
    gradient each weight usually gets. On a copy of the model, in eval mode."""
    adapted = copy.deepcopy(model)
    adapted.eval()
    params = [p for p in adapted.parameters() if p.requires_grad]
    length = (len(ids) - 1) // streams
    if length < 1:
        raise ValueError(f"{len(ids)} characters are too few for {streams} streams.")
    device = _device(adapted)
    x_all = ids[: streams * length].view(streams, length).T.to(device)  # (L, B)
    y_all = ids[1 : streams * length + 1].view(streams, length).T.to(device)
    squares = [torch.zeros_like(p) for p in params]
    state, count = None, 0
    for i in range(0, length, segment):
        out, state = adapted.cell(adapted.cell_inputs(x_all[i : i + segment]), state)
        loss = F.cross_entropy(adapted.readout(out).reshape(-1, adapted.b_q.shape[0]), y_all[i : i + segment].reshape(-1))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for sq, g in zip(squares, grads):
            if g is not None:
                sq.add_(g.detach() ** 2)
        count += 1
        state = detach(state)
    return [(sq / count).sqrt() for sq in squares]


def dynamic_losses(model: torch.nn.Module, ids: torch.Tensor, unknown: int | None, lr: float, decay: float = 0.0,
                   segment: int = DYNAMIC_SEGMENT, rms: list[torch.Tensor] | None = None, clip: float | None = DYNAMIC_CLIP) -> torch.Tensor:
    """(N,) the loss of each scored target of `ids` (in order), read as one stream in segments of `segment`
    characters: a segment's targets are scored by the weights adapted on the segments before it, then one step on
    its mean loss's gradient g, clipped to global norm `clip` (None: not clipped). Without `rms` (SGD):
    theta <- theta - lr g + decay (theta_0 - theta). With `rms` (gradient_rms
    of the training text, Krause et al.'s RMS rule with a global prior): theta <- theta - lr g / (rms + eps) +
    min(decay r, 1) (theta_0 - theta), r = rms / (the mean over parameter tensors of their mean rms): weights that
    training moved much decay faster. A copy of the model adapts, in eval mode (no dropout); the model itself is
    untouched."""
    return dynamic_read(model, ids, unknown, lr, decay, segment, rms, clip).losses


def dynamic_read(model: torch.nn.Module, ids: torch.Tensor, unknown: int | None, lr: float, decay: float = 0.0,
                 segment: int = DYNAMIC_SEGMENT, rms: list[torch.Tensor] | None = None, clip: float | None = DYNAMIC_CLIP) -> Read:
    """dynamic_losses' reading, with the cell's output that predicted each target (by the weights that scored it):
    what a neural cache over the adapted model reads."""
    if segment < 1 or lr < 0 or not 0 <= decay <= 1:
        raise ValueError(f"segment must be >= 1, lr >= 0 and decay in [0, 1], got {segment}, {lr}, {decay}.")
    adapted = copy.deepcopy(model)
    adapted.eval()
    params = [p for p in adapted.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    if rms is not None:
        scale = sum(float(r.mean()) for r in rms) / len(rms)
        rates = [torch.clamp(decay * r / scale, max=1.0) for r in rms]  # each weight's decay toward theta_0, at most all the way
        steps = [lr / (r + RMS_EPSILON) for r in rms]
    device = _device(adapted)
    out, kept, state = [], [], None
    for i in range(0, len(ids) - 1, segment):
        x = ids[i : min(i + segment, len(ids) - 1)]
        y = ids[i + 1 : i + 1 + len(x)]
        sel = y != unknown if unknown is not None else torch.ones(len(y), dtype=torch.bool)
        hidden, state = adapted.cell(adapted.cell_inputs(x[:, None].to(device)), state)  # (c, 1, H)
        if bool(sel.any()):
            h = hidden[sel.to(device)]  # (n, 1, H)
            losses = F.cross_entropy(adapted.readout(h)[:, 0].double(), y[sel].to(device), reduction="none")
            out.append(losses.detach().cpu())  # scored before the step that sees them
            kept.append(h[:, 0].detach().double())
            if lr or decay:
                grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
                with torch.no_grad():
                    if clip:
                        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
                        if norm > clip:
                            grads = [None if g is None else g * (clip / norm).to(g.dtype) for g in grads]
                    for k, (p, g, p0) in enumerate(zip(params, grads, start)):
                        if decay:  # toward theta_0 from the weights that scored the segment
                            p.add_((decay if rms is None else rates[k]) * (p0 - p))
                        if g is not None:
                            p.sub_((lr if rms is None else steps[k]) * g)
        state = detach(state)
    positions = scored_positions(ids, unknown)
    return Read(positions, ids[positions], torch.cat(out) if out else torch.zeros(0, dtype=torch.float64),
                torch.cat(kept) if kept else torch.zeros(0, model.cell.hidden_size, dtype=torch.float64, device=device))


def choose_dynamic(model: torch.nn.Module, ids: torch.Tensor, unknown: int | None, train_ids: torch.Tensor | None = None,
                   segment: int = DYNAMIC_SEGMENT, grids: dict | None = None) -> dict:
    """The rule, lr and decay with the lowest mean validation loss (a grid per rule, DYNAMIC_GRIDS; lr 0, the plain
    network, is tried once; the RMS rule only given the training text for its prior), that loss, the prior, and the
    validation text's reading at those settings."""
    grids = DYNAMIC_GRIDS if grids is None else grids
    plain = dynamic_read(model, ids, unknown, 0.0, 0.0, segment)
    best = {"loss": float(plain.losses.mean()), "rule": "sgd", "lr": 0.0, "decay": 0.0, "rms": None, "read": plain}
    for rule, (lrs, decays) in grids.items():
        if rule == "rms" and train_ids is None:
            continue
        rms = gradient_rms(model, train_ids, segment) if rule == "rms" else None
        for lr in lrs:
            for decay in decays:
                r = dynamic_read(model, ids, unknown, lr, decay, segment, rms)
                loss = float(r.losses.mean())
                if math.isfinite(loss) and loss < best["loss"]:  # a rate that diverges is never chosen
                    best = {"loss": loss, "rule": rule, "lr": lr, "decay": decay, "rms": rms, "read": r}
    return best


# ---- the network mixed with counting

def mix_parts(net_losses: torch.Tensor, counting: dict) -> np.ndarray:
    """(N, 3): the network's, the static n-gram's and the cached n-gram's probability of each target."""
    return np.column_stack([np.exp(-net_losses.numpy()), counting["ngram"], counting["ngram_cache"]])


# ---- where each gains

def last_occurrence_distance(ids: torch.Tensor, positions: torch.Tensor, context: int = CONTEXT_CHARS) -> np.ndarray:
    """(N,) for each target position p: p - q for the last q < p whose `context` characters before it equal p's
    (q >= context; the text read so far); 0 where there is none (or p has fewer than `context` characters before it)."""
    seq = ids.tolist()
    last: dict[tuple, int] = {}
    distance = {}
    for p in range(context, len(seq)):
        key = tuple(seq[p - context : p])
        distance[p] = p - last[key] if key in last else 0
        last[key] = p
    return np.array([distance.get(int(p), 0) for p in positions], dtype=np.int64)


def band_of(distance: int) -> str:
    if not distance:
        return "never"
    for lo, hi in DISTANCE_BANDS:
        if distance >= lo and (not hi or distance < hi):
            return f"{lo}+" if not hi else f"{lo}-{hi - 1}"
    raise AssertionError(distance)


def by_distance(ids: torch.Tensor, positions: torch.Tensor, losses: dict[str, np.ndarray], split: str,
                context: int = CONTEXT_CHARS) -> list[dict]:
    """Per band of distance back to the last earlier occurrence of the target's context: the targets, their share,
    and each model's mean loss there (losses: name -> (N,) per-target losses, e.g. net_loss, ngram_cache_loss)."""
    distance = last_occurrence_distance(ids, positions, context)
    rows = []
    for band, lo in [("never", 0)] + [(band_of(lo), lo) for lo, _ in DISTANCE_BANDS]:
        inside = np.array([band_of(int(d)) == band for d in distance], dtype=bool)
        n = int(inside.sum())
        rows.append({"split": split, "band": band, "distance_from": lo, "context_chars": context, "targets": n,
                     "share": n / len(distance) if len(distance) else math.nan,
                     **{name: float(np.asarray(v)[inside].mean()) if n else math.nan for name, v in losses.items()}})
    return rows


# ---- every mode on a task's held-out texts

def evaluate_modes(model: torch.nn.Module, texts: dict[str, torch.Tensor | None], counting: dict, unknown: int | None,
                   modes: tuple[str, ...], train_ids: torch.Tensor | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """The asked modes on a trained model, chosen on texts['val'] and scored on texts['test'] (where there is one):
    the runs row's columns (each text's plain one-stream loss {split}_stream_loss, {split}_{mode}_loss, the
    settings chosen, the seconds each mode took, the best of plain, cache and dynamic on validation) and the
    by_distance table of the last text (test, or validation without one). counting: per text the counting
    models' per-target probabilities (tasks.text.ngram_losses' keep); train_ids: the training text, for the dynamic RMS rule's prior."""
    unknown_modes = [m for m in modes if m not in MODES]
    if unknown_modes:
        raise ValueError(f"eval_modes {unknown_modes} unknown: the modes are {', '.join(MODES)}.")
    texts = {k: v for k, v in texts.items() if v is not None and len(v) > 1}
    if "val" not in texts:
        return {}, {}
    row: dict = {}
    per: dict[str, dict[str, np.ndarray]] = {split: {} for split in texts}
    start = time.perf_counter()
    reads = {split: read(model, ids, unknown) for split, ids in texts.items()}
    row["stream_seconds"] = time.perf_counter() - start
    for split, r in reads.items():
        row[f"{split}_stream_loss"] = float(r.losses.mean())
        per[split]["net_loss"] = r.losses.numpy()
    if "cache" in modes:
        start = time.perf_counter()
        chosen = choose_cache(reads["val"])
        row |= {"cache_theta": chosen["theta"], "cache_window": chosen["window"], "cache_lambda": chosen["lambda"]}
        for split, r in reads.items():
            per[split]["cache_loss"] = cache_losses(r, chosen["theta"], chosen["window"], chosen["lambda"]).numpy()
            row[f"{split}_cache_loss"] = float(per[split]["cache_loss"].mean())
        row["cache_seconds"] = time.perf_counter() - start
    if "dynamic" in modes:
        start = time.perf_counter()
        chosen = choose_dynamic(model, texts["val"], unknown, train_ids)
        row |= {"dynamic_rule": chosen["rule"], "dynamic_lr": chosen["lr"], "dynamic_decay": chosen["decay"], "dynamic_segment": DYNAMIC_SEGMENT,
                "dynamic_clip": DYNAMIC_CLIP}
        adapted = {split: chosen["read"] if split == "val" else dynamic_read(model, ids, unknown, chosen["lr"], chosen["decay"], DYNAMIC_SEGMENT, chosen["rms"])
                   for split, ids in texts.items()}
        for split, r in adapted.items():
            per[split]["dynamic_loss"] = r.losses.numpy()
            row[f"{split}_dynamic_loss"] = float(r.losses.mean())
        row["dynamic_seconds"] = time.perf_counter() - start
        if "cache" in modes:  # both: the neural cache over the adapted model's states, its settings chosen anew
            start = time.perf_counter()
            both = choose_cache(adapted["val"])
            row |= {"dynamic_cache_theta": both["theta"], "dynamic_cache_window": both["window"], "dynamic_cache_lambda": both["lambda"]}
            for split, r in adapted.items():
                per[split]["dynamic_cache_loss"] = cache_losses(r, both["theta"], both["window"], both["lambda"]).numpy()
                row[f"{split}_dynamic_cache_loss"] = float(per[split]["dynamic_cache_loss"].mean())
            row["dynamic_cache_seconds"] = time.perf_counter() - start
    for split in texts:
        if split in counting:
            per[split]["ngram_loss"] = -np.log(counting[split]["ngram"])
            per[split]["ngram_cache_loss"] = -np.log(counting[split]["ngram_cache"])
    if "mix" in modes and "val" in counting:
        start = time.perf_counter()
        weights = mixture_weights(mix_parts(reads["val"].losses, counting["val"]))
        row |= {"mix_net": float(weights[0]), "mix_ngram": float(weights[1]), "mix_ngram_cache": float(weights[2])}
        for split, r in reads.items():
            if split in counting:
                per[split]["mix_loss"] = -np.log(mix_parts(r.losses, counting[split]) @ weights)
                row[f"{split}_mix_loss"] = float(per[split]["mix_loss"].mean())
        row["mix_seconds"] = time.perf_counter() - start
    candidates = {"plain": row["val_stream_loss"]} | {m: row[f"val_{m}_loss"] for m in NETWORK_MODES if f"val_{m}_loss" in row}
    best = min(candidates, key=candidates.get)
    row["eval_best_mode"] = best
    for split in texts:
        row[f"{split}_best_loss"] = row[f"{split}_stream_loss" if best == "plain" else f"{split}_{best}_loss"]
    last = "test" if "test" in texts else "val"
    table = by_distance(texts[last], reads[last].positions, per[last], "test" if last == "test" else "validation")
    return row, {"by_distance": table}
