"""The one training loop, for every task: forward, the task's loss on the scored steps, backward, clip,
step; per-step telemetry, evaluation on the fixed held-out set, divergence recorded, early stop once solved.

Divergence ends a run and is recorded with its step and reason, never raised. The rule: a run diverges at
the first step whose loss or gradient is not finite, or, from step 50 on, at the first step where the
median loss of the last 50 steps is above 3 times the loss of guessing (Task.guess_loss: ln K for K
classes, the MSE of predicting 0 for adding). The median lets clipped training recover from spikes."""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..cells import detach
from ..context import PROBES, profile
from ..probes import task_loss_grad_norms
from ..tasks import Batch, Task
from ..tasks.base import loss_of
from ..timing import sync
from .clipping import global_norm, parse_clip
from .config import TrainConfig
from .model import SeqModel, build_model, evaluating
from .optimizers import make_optimizer


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    steps: list[dict] = field(default_factory=list)  # one row per optimiser step
    tables: dict[str, list[dict]] = field(default_factory=dict)  # the task's own (generated text, ...)
    run: dict = field(default_factory=dict)  # one row about the whole run
    model: SeqModel | None = None


@torch.no_grad()
def evaluate(model: SeqModel, task: Task, held_out: list) -> dict[str, float]:
    """val_loss and val_metric on the held-out batches (state carried where a batch says so), in eval mode."""
    with evaluating(model):
        return _evaluate(model, task, held_out)


def _evaluate(model: SeqModel, task: Task, held_out: list) -> dict[str, float]:
    sums: dict[str, float] = {}
    state = None
    for batch in held_out:
        outputs, state = model(batch.x, state if batch.carry else None, batch.mask)
        for key, value in task.score(outputs, batch).items():
            sums[key] = sums.get(key, 0) + value
    return task.finish(sums)


DIVERGE_WINDOW = 50  # the median of this many steps: spikes of up to 24 steps in 50 move it nowhere (clipped runs recover from them)
DIVERGE_GUESSES = 3.0  # ... above 3 x the loss of guessing: no model that learns is that far worse than knowing nothing for 50 steps


def divergence(recent_losses: deque[float], guess: float) -> str | None:
    """Why the run has diverged, given the losses of its last DIVERGE_WINDOW steps (all finite), or None."""
    if len(recent_losses) < DIVERGE_WINDOW:
        return None
    median = statistics.median(recent_losses)
    if median > DIVERGE_GUESSES * guess:
        return f"median loss of the last {DIVERGE_WINDOW} steps {median:.4g} above {DIVERGE_GUESSES:g} x the loss of guessing ({guess:.4g})"
    return None


def train_step(model: SeqModel, spec, batch, state, opt: torch.optim.Optimizer, clipper, params: list,
               measure_update: bool = False) -> tuple:
    """Forward, the task's loss on the scored steps, backward, clip, and the optimiser's step unless the
    loss or the gradient is not finite. Returns (loss, ClipResult, state, finite, update norm ||delta theta||
    (NaN unless measured: it copies the parameters))."""
    outputs, state = model(batch.x, state, batch.mask)  # (S, B, O)
    loss = loss_of(spec, outputs, batch.targets())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    loss_value = loss.item()
    report = clipper([p.grad for p in params if p.grad is not None])
    finite = math.isfinite(loss_value) and math.isfinite(report.norm_before)
    update = float("nan")
    if finite:
        weights = [p.detach() for p in params]
        before = torch._foreach_mul(weights, 1.0) if measure_update else None  # a copy in one fused call
        opt.step()
        if before is not None:
            update = global_norm(torch._foreach_sub(weights, before))
    return loss_value, report, state, finite, update


def train(cfg: TrainConfig, task: Task | None = None, progress: bool = False) -> TrainResult:
    """Train a fresh model on the task; a non-finite loss or gradient ends the run and is recorded, not raised."""
    checked = cfg.validate()
    task = task or checked
    if hasattr(task, "ready"):  # checks that need the task's data (a prefix outside the vocabulary, ...)
        task.ready(cfg.batch_size, cfg.seq_len)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # the training data's own stream
    device = torch.device(cfg.device)
    model = build_model(
        task.spec, cfg.cell, cfg.impl, cfg.hidden_size, seed=cfg.seed, dtype=getattr(torch, cfg.dtype), device=device,
        variant=cfg.variant, init=cfg.init, init_scale=cfg.init_scale, forget_bias=cfg.forget_bias, dropout=cfg.dropout,
    )
    params = list(model.parameters())
    opt = make_optimizer(cfg.optimizer, params, cfg.lr)
    clipper = parse_clip(cfg.clip)
    per_epoch = task.steps_per_epoch(cfg.batch_size, cfg.seq_len)
    baseline = task.baseline(cfg.seq_len)
    held_out = task.held_out(cfg.batch_size, cfg.seq_len, device)
    stream = task.stream(gen, cfg.batch_size, cfg.seq_len, device)
    result = TrainResult(model=model)
    probe_at = set(cfg.probe_steps)
    if 0 in probe_at:
        result.tables.setdefault("flow", []).extend(flow_rows(model, task, held_out, cfg.probe_size, 0))
    window: list[dict] = []  # step rows since the last evaluation
    diverged_step = solved_step = diverged_reason = stopped_step = None
    best = {"val_loss": math.inf, "step": None, "params": None, "since": 0}  # the best held-out evaluation so far
    recent_losses: deque[float] = deque(maxlen=DIVERGE_WINDOW)
    guess = task.guess_loss(cfg.seq_len)
    state = None
    bar = tqdm(total=cfg.steps, desc=f"{cfg.task}/{cfg.cell}/{cfg.impl} T={cfg.seq_len}", unit="step", disable=not progress, leave=False)
    for step in range(1, cfg.steps + 1):
        batch = next(stream)
        state = detach(state) if (batch.carry and state is not None) else None  # truncated BPTT between batches
        start = time.perf_counter()
        loss_value, report, state, finite, update = train_step(model, task.spec, batch, state, opt, clipper, params, measure_update=True)
        sync(device)
        row = {"step": step, "loss": loss_value, "grad_norm_pre": report.norm_before, "grad_norm_post": report.norm_after,
               "clipped": report.clipped, "clip_threshold": report.threshold, "clip_cosine": report.cosine, "update_norm": update,
               "seconds": time.perf_counter() - start}
        recent_losses.append(loss_value)
        diverged_reason = "non-finite loss or gradient" if not finite else divergence(recent_losses, guess)
        finite = finite and diverged_reason is None
        if per_epoch:
            row["epoch"] = (step - 1) // per_epoch + 1
        result.steps.append(row)
        window.append(row)
        bar.update(1)
        if not finite:
            diverged_step = step
        elif step in probe_at:
            result.tables.setdefault("flow", []).extend(flow_rows(model, task, held_out, cfg.probe_size, step))
        if finite and step % cfg.eval_every and step != cfg.steps:
            continue
        hist = _history_row(model, task, held_out, window, per_epoch, baseline, diverged=not finite)
        if hist["val_loss"] < cfg.solve_fraction * baseline and solved_step is None:
            solved_step = step
        if hist["val_loss"] < best["val_loss"]:  # NaN (diverged) is never a best
            best |= {"val_loss": hist["val_loss"], "step": step, "since": 0,
                     "params": {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.keep_best else None}
        else:
            best["since"] += 1
        result.history.append(hist)
        with evaluating(model):
            observed = task.observe(model, hist, cfg.seed)
        for name, rows in observed.items():
            result.tables.setdefault(name, []).extend(rows)
        bar.set_postfix(val_loss=f"{hist['val_loss']:.4g}")
        window = []
        if finite and cfg.patience and best["since"] >= cfg.patience:
            stopped_step = step
            break
        if not finite or (solved_step is not None and cfg.stop_when_solved):
            break
    bar.close()
    if cfg.keep_best and best["params"] is not None:
        model.load_state_dict(best["params"])  # the selected model: what is tested and analysed
    usable = diverged_step is None or (cfg.keep_best and best["params"] is not None)  # a diverged run keeps no model ... unless its best
    tested = {}
    test_set = task.test_set(cfg.batch_size, cfg.seq_len, device) if hasattr(task, "test_set") else None
    if usable and test_set:
        tested = {f"test_{k[4:]}": v for k, v in evaluate(model, task, test_set).items()}  # val_loss -> test_loss
    if usable and cfg.context_lengths:  # how far back the trained model looks
        with evaluating(model):
            for name, rows in context_tables(model, task, held_out, cfg).items():
                result.tables.setdefault(name, []).extend(rows)
    result.run = {
        "backend": model.cell.last_backend, "parameters": sum(p.numel() for p in params), "baseline": baseline,
        "steps_done": len(result.steps), "steps_per_epoch": per_epoch, "diverged": diverged_step is not None,
        "diverged_step": diverged_step, "diverged_reason": diverged_reason, "solved_step": solved_step,
        "best_step": best["step"], "best_val_loss": best["val_loss"] if best["step"] is not None else math.nan,
        "kept": "best" if cfg.keep_best and best["params"] is not None else "last", "stopped_early_step": stopped_step, **tested,
        "train_seconds": sum(r["seconds"] for r in result.steps), **task.stats(),
    }
    return result


def context_tables(model: SeqModel, task: Task, held_out: list, cfg: TrainConfig) -> dict[str, list[dict]]:
    """'context': per text, probe and k, the loss with the context cut (or scrambled) before the last k inputs
    against the full-context loss (gradlab.context); and the task's own analysis (lyrics: input gradients)."""
    lengths = list(cfg.context_lengths)
    rows = [{"split": split, **r} for split, items in task.context_items(model, held_out, cfg.context_positions, max(lengths)).items()
            for r in profile(model, task.spec, items, lengths, probes=PROBES if split != "training" else ("truncate",))]  # scrambles: unseen text
    tables = {"context": rows} if rows else {}
    if hasattr(task, "analyse"):
        tables |= task.analyse(model, tuple(lengths), cfg.context_positions)
    return tables


def flow_rows(model: SeqModel, task: Task, held_out: list, size: int, step: int) -> list[dict]:
    """The gradient flow now: ||dL/dh_t|| for the task's own loss on the first `size` held-out sequences."""
    batch = held_out[0]
    n = min(size, batch.x.shape[1])
    batch = Batch(batch.x[:, :n], batch.y[:, :n], batch.mask)
    with evaluating(model):
        norms = task_loss_grad_norms(model, batch, task.spec)
    T = batch.x.shape[0]
    return [{"step": step, "wrt": wrt, "t": t, "distance": T - 1 - t, "state_grad_norm": v}
            for wrt, values in norms.items() for t, v in enumerate(values.cpu().tolist())]


def _history_row(model: SeqModel, task: Task, held_out: list, window: list[dict], per_epoch: int | None,
                 baseline: float, diverged: bool) -> dict:
    """One evaluation: held-out scores, and the training window's loss, norms and clipping rate."""
    step = window[-1]["step"]
    recent = window[-per_epoch:] if per_epoch else window  # lyrics: the epoch just finished, as the book prints
    train_loss = float("inf") if diverged else sum(r["loss"] for r in recent) / len(recent)
    scores = {"val_loss": float("nan"), "val_metric": float("nan")} if diverged else evaluate(model, task, held_out)
    finite = [r["grad_norm_pre"] for r in window if math.isfinite(r["grad_norm_pre"])]
    row = {"step": step}
    if per_epoch:
        row["epoch"] = step / per_epoch  # epochs completed
    row |= {
        "train_loss": train_loss, **scores, "baseline": baseline,
        "grad_norm": statistics.median(finite) if finite else float("nan"),  # median over the window, before clipping
        "grad_norm_post": statistics.median(r["grad_norm_post"] for r in window),
        "clip_rate": sum(r["clipped"] for r in window) / len(window),
        "seconds": sum(r["seconds"] for r in window), "diverged": diverged,
    }
    return row | task.row_extras(row)
