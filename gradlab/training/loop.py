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
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..cells import detach
from ..context import PROBES, profile
from ..probes import task_loss_grad_norms
from ..tasks import Batch, Task
from ..tasks.base import IGNORE, LEFT_BASELINE, loss_of
from ..timing import sync
from .clipping import global_norm, parse_clip
from .config import TrainConfig
from .model import Regularisation, SeqModel, build_model, evaluating
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
               measure_update: bool = False, label_smoothing: float = 0.0) -> tuple:
    """Forward, the task's loss on the scored steps, backward, clip, and the optimiser's step unless the
    loss or the gradient is not finite. Returns (loss, ClipResult, state, finite, update norm ||delta theta||
    (NaN unless measured: it copies the parameters)). With label_smoothing the gradient is the smoothed
    objective's and the loss returned is still the plain one (a training perplexity stays a perplexity)."""
    outputs, state = model(batch.x, state, batch.mask)  # (S, B, O)
    if label_smoothing:
        loss, objective = smoothed_loss(outputs, batch.targets(), label_smoothing)
    else:
        loss = objective = loss_of(spec, outputs, batch.targets())
    opt.zero_grad(set_to_none=True)
    objective.backward()
    loss_value = loss.item()
    report, finite, update = clip_and_step(loss_value, opt, clipper, params, measure_update)
    return loss_value, report, state, finite, update


def smoothed_loss(outputs: torch.Tensor, targets: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain cross-entropy, the smoothed objective: cross-entropy against (1 - smoothing) x the target + smoothing x
    the uniform distribution over the classes) over the scored targets (IGNORE ones left out), from one log-softmax."""
    logp = F.log_softmax(outputs.reshape(-1, outputs.shape[-1]), -1)
    targets = targets.reshape(-1)
    scored = targets != IGNORE
    plain = F.nll_loss(logp, targets, ignore_index=IGNORE)
    uniform = -(logp.mean(1) * scored).sum() / scored.sum()
    return plain, (1 - smoothing) * plain + smoothing * uniform


def clip_and_step(loss_value: float, opt: torch.optim.Optimizer, clipper, params: list, measure_update: bool) -> tuple:
    """After the backward: clip the gradients of `params`, and step unless the loss or the gradient is not
    finite. Returns (ClipResult, finite, update norm or NaN)."""
    report = clipper([p.grad for p in params if p.grad is not None])
    finite = math.isfinite(loss_value) and math.isfinite(report.norm_before)
    update = float("nan")
    if finite:
        weights = [p.detach() for p in params]
        before = torch._foreach_mul(weights, 1.0) if measure_update else None  # a copy in one fused call
        opt.step()
        if before is not None:
            update = global_norm(torch._foreach_sub(weights, before))
    return report, finite, update


def model_of(cfg: TrainConfig, task: Task, device: torch.device | str) -> SeqModel:
    """The model a config trains, freshly initialised from its seed (a run's start, or the frame its kept weights load into)."""
    return build_model(
        task.spec, cfg.cell, cfg.impl, cfg.hidden_size, seed=cfg.seed, dtype=getattr(torch, cfg.dtype), device=device,
        variant=cfg.variant, init=cfg.init, init_scale=cfg.init_scale, forget_bias=cfg.forget_bias, dropout=cfg.dropout,
        embedding=cfg.embedding, tie=cfg.tie, regularisation=Regularisation(cfg.dropout_embedding, cfg.dropout_chars, cfg.dropout_output, cfg.weight_drop),
    )


class Run:
    """One training's model, optimiser, clipping, data stream and bookkeeping (telemetry, evaluations,
    divergence, solving, early stop, the best model): what the solo loop and an ensemble both drive."""

    def __init__(self, cfg: TrainConfig, task: Task | None = None, progress: bool = False):
        checked = cfg.validate()
        task = task or checked
        if hasattr(task, "ready"):  # checks that need the task's data (a prefix outside the vocabulary, ...)
            task.ready(cfg.batch_size, cfg.seq_len)
        torch.manual_seed(cfg.seed)
        self.cfg, self.task = cfg, task
        self.device = torch.device(cfg.device)
        self.model = model_of(cfg, task, self.device)
        self.params = list(self.model.parameters())
        self.opt = make_optimizer(cfg.optimizer, self.params, cfg.lr, cfg.weight_decay)
        self.schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.steps) if cfg.lr_schedule == "cosine" else
                         torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=0.5, patience=2) if cfg.lr_schedule == "plateau" else None)
        self.clipper = parse_clip(cfg.clip)
        self.per_epoch = task.steps_per_epoch(cfg.batch_size, cfg.seq_len)
        self.held_out = task.held_out(cfg.batch_size, cfg.seq_len, self.device)
        self.baseline_theory = task.baseline(cfg.seq_len)
        self.baseline, self.baseline_rel_se = task.data_baseline(self.held_out, cfg.seq_len)  # the memoryless loss of the very data scored
        self.stream = task.stream(torch.Generator().manual_seed(cfg.seed), cfg.batch_size, cfg.seq_len, self.device)  # the data's own stream
        self.result = TrainResult(model=self.model)
        self.probe_at = set(cfg.probe_steps)
        if 0 in self.probe_at:
            self.result.tables.setdefault("flow", []).extend(flow_rows(self.model, task, self.held_out, cfg.probe_size, 0))
        self.window: list[dict] = []  # step rows since the last evaluation
        self.diverged_step = self.solved_step = self.left_step = self.diverged_reason = self.stopped_step = self.stopped_solved_step = None
        self.best = {"val_loss": math.inf, "step": None, "params": None, "since": 0}  # the best held-out evaluation so far
        self.recent_losses: deque[float] = deque(maxlen=DIVERGE_WINDOW)
        self.guess = task.guess_loss(cfg.seq_len)
        self.state = None
        self.step = 0
        self.running = True
        self.bar = tqdm(total=cfg.steps, desc=f"{cfg.task}/{cfg.cell}/{cfg.impl} T={cfg.seq_len}", unit="step", disable=not progress, leave=False)

    def next_batch(self) -> Batch:
        """The next batch of this run's own stream (and the state carried into it: truncated BPTT between batches)."""
        batch = next(self.stream)
        self.state = detach(self.state) if (batch.carry and self.state is not None) else None
        return batch

    def record(self, loss_value: float, report, finite: bool, update: float, seconds: float) -> bool:
        """One optimiser step taken: its row, the divergence rule, probes, an evaluation when due. False once the run ends."""
        cfg, task, model = self.cfg, self.task, self.model
        self.step += 1
        step = self.step
        row = {"step": step, "loss": loss_value, "grad_norm_pre": report.norm_before, "grad_norm_post": report.norm_after,
               "clipped": report.clipped, "clip_threshold": report.threshold, "clip_cosine": report.cosine, "update_norm": update,
               "seconds": seconds}
        self.recent_losses.append(loss_value)
        self.diverged_reason = "non-finite loss or gradient" if not finite else divergence(self.recent_losses, self.guess)
        finite = finite and self.diverged_reason is None
        if self.per_epoch:
            row["epoch"] = (step - 1) // self.per_epoch + 1
        if self.schedule is not None and cfg.lr_schedule == "cosine":
            self.schedule.step()
        self.result.steps.append(row)
        self.window.append(row)
        self.bar.update(1)
        if not finite:
            self.diverged_step = step
        elif step in self.probe_at:
            self.result.tables.setdefault("flow", []).extend(flow_rows(model, task, self.held_out, cfg.probe_size, step))
        if finite and step % cfg.eval_every and step != cfg.steps:
            return True
        hist = _history_row(model, task, self.held_out, self.window, self.per_epoch, self.baseline, diverged=not finite)
        hist |= judge(task, cfg, hist)
        if self.schedule is not None and cfg.lr_schedule == "plateau" and finite:
            self.schedule.step(hist["val_loss"])
        hist["lr_now"] = self.opt.param_groups[0]["lr"]  # under a schedule, the rate in force (the setting lr is the start)
        if hist["solved"] and self.solved_step is None:
            self.solved_step = step
        if finite and cfg.stop_when_solved and self.stopped_solved_step is None and judge(task, cfg, hist, cfg.stop_margin)["solved"]:
            self.stopped_solved_step = step  # validation meets the rule with stop_margin to spare: the run has shown what it can do
        if hist["left_baseline"] and self.left_step is None:
            self.left_step = step
        best = self.best
        if hist["val_loss"] < best["val_loss"]:  # NaN (diverged) is never a best
            best |= {"val_loss": hist["val_loss"], "step": step, "since": 0,
                     "params": {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.keep_best else None}
        else:
            best["since"] += 1
        self.result.history.append(hist)
        with evaluating(model):
            observed = task.observe(model, hist, cfg.seed)
        for name, rows in observed.items():
            self.result.tables.setdefault(name, []).extend(rows)
        self.bar.set_postfix(val_loss=f"{hist['val_loss']:.4g}")
        self.window = []
        if finite and cfg.patience and best["since"] >= cfg.patience:
            self.stopped_step = step
            self.running = False
        elif not finite or self.stopped_solved_step is not None or step == cfg.steps:
            self.running = False
        return self.running

    def finish(self, **run_extras) -> TrainResult:
        """Test, analyse and summarise the run once it has ended: the model kept, its test scores, the 'runs' row."""
        cfg, task, model, best, result = self.cfg, self.task, self.model, self.best, self.result
        self.bar.close()
        if cfg.keep_best and best["params"] is not None:
            model.load_state_dict(best["params"])  # the selected model: what is tested and analysed
        usable = self.diverged_step is None or (cfg.keep_best and best["params"] is not None)  # a diverged run keeps no model ... unless its best
        kept_best = cfg.keep_best and best["params"] is not None
        kept_step = best["step"] if kept_best else (result.history[-1]["step"] if result.history else None)
        kept_row = next((h for h in result.history if h["step"] == kept_step), None)
        tested = {"kept_step": kept_step, "val_solved": bool(usable and kept_row is not None and kept_row["solved"])}  # selection's verdict
        if hasattr(task, "test_batches"):  # a synthetic task: its validation set's size, as run (a config may leave eval_size to the task)
            tested["val_sequences"] = sum(b.x.shape[1] for b in self.held_out)
        judged_on = "test" if hasattr(task, "test_batches") and getattr(task, "test_size", 0) else "validation"
        if usable and judged_on == "test":  # the verdict: the fresh test set, read once
            tested |= verdict_on_test_set(model, task, cfg, self.device)
        elif usable and hasattr(task, "test_set") and (test_set := task.test_set(cfg.batch_size, cfg.seq_len, self.device)):
            tested |= {f"test_{k[4:]}": v for k, v in evaluate(model, task, test_set).items()}  # val_loss -> test_loss
        if usable and cfg.eval_modes:  # the held-out texts read with long context: neural cache, dynamic evaluation, mixed with counting
            extras, tables = task.long_context(model, tuple(cfg.eval_modes))
            tested |= extras
            for name, rows in tables.items():
                result.tables.setdefault(name, []).extend(rows)
        if usable and cfg.context_lengths:  # how far back the trained model looks
            with evaluating(model):
                for name, rows in context_tables(model, task, self.held_out, cfg).items():
                    result.tables.setdefault(name, []).extend(rows)
        result.run = {
            "backend": model.cell.last_backend, "parameters": sum(p.numel() for p in self.params), "baseline": self.baseline,
            "baseline_theory": self.baseline_theory, "baseline_rel_se": self.baseline_rel_se,
            "success_rule": task.success.describe(cfg.solve_fraction, cfg.solve_error, on=judged_on),
            **({"rules_beside": "; ".join(f"{r.name}: {r.describe(cfg.solve_fraction, cfg.solve_error, on=judged_on)}" for r in task.also)} if task.also else {}),
            "verdict_from": judged_on if task.success.kind != "none" else None, "lag_meaning": task.lag,
            "steps_done": len(result.steps), "steps_per_epoch": self.per_epoch, "diverged": self.diverged_step is not None,
            "diverged_step": self.diverged_step, "diverged_reason": self.diverged_reason, "solved_step": self.solved_step, "left_step": self.left_step,
            "best_step": best["step"], "best_val_loss": best["val_loss"] if best["step"] is not None else math.nan,
            "kept": "best" if kept_best else "last", "stopped_early_step": self.stopped_step, "stopped_solved_step": self.stopped_solved_step,
            **tested,
            "train_seconds": sum(r["seconds"] for r in result.steps), **task.stats(), **run_extras,
        }
        return result


def train(cfg: TrainConfig, task: Task | None = None, progress: bool = False) -> TrainResult:
    """Train a fresh model on the task; a non-finite loss or gradient ends the run and is recorded, not raised."""
    run = Run(cfg, task, progress)
    while run.running:
        batch = run.next_batch()
        start = time.perf_counter()
        loss_value, report, run.state, finite, update = train_step(run.model, run.task.spec, batch, run.state, run.opt, run.clipper,
                                                                   run.params, measure_update=True, label_smoothing=run.cfg.label_smoothing)
        sync(run.device)
        run.record(loss_value, report, finite, update, time.perf_counter() - start)
    return run.finish()


def context_tables(model: SeqModel, task: Task, held_out: list, cfg: TrainConfig) -> dict[str, list[dict]]:
    """'context': per text, probe and k, the loss with the context cut (or scrambled) before the last k inputs
    against the full-context loss (gradlab.context); and the task's own analysis (lyrics: input gradients)."""
    lengths = list(cfg.context_lengths)
    rows = [{"split": split, **r} for split, items in task.context_items(model, held_out, cfg.context_positions, max(lengths)).items()
            for r in profile(model, task.spec, items, lengths, probes=PROBES if split != "training" else ("truncate", "replace"))]  # order: unseen text
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


def judge(task: Task, cfg: TrainConfig, hist: dict, margin: float = 1.0) -> dict:
    """An evaluation (val_loss, val_metric and the memoryless loss of the same data, baseline) against the task's
    success rule (tasks.base.Success), each rule the task keeps beside it (Task.also: <name>_solved) and the weaker
    'left the baseline': loss_ratio (the loss over the memoryless loss of the same data), error_rate (the share of
    answers wrong, where the metric is an accuracy), solved, left_baseline. `margin` scales every rule's threshold
    (0.5: met with half the line to spare: the stopping test of stop_margin)."""
    ratio = hist["val_loss"] / hist["baseline"] if hist["baseline"] else float("nan")
    error = 1.0 - hist["val_metric"] if task.spec.metric == "accuracy" else None  # None: no answers to be wrong (NaN in the tables)

    def meets(rule) -> bool:
        if rule.kind == "error_rate" and error is not None:
            return error < margin * (rule.threshold if rule.threshold is not None else cfg.solve_error)
        if rule.kind == "loss_ratio":
            return ratio < margin * cfg.solve_fraction
        if rule.kind == "sequence_error":
            return hist.get(f"val_{rule.name}_error_rate", float("nan")) < margin * (rule.threshold if rule.threshold is not None else cfg.solve_error)
        return False

    return ({"loss_ratio": ratio, "error_rate": error, "solved": meets(task.success), "left_baseline": bool(ratio < LEFT_BASELINE)}
            | {f"{rule.name}_solved": meets(rule) for rule in task.also})


@torch.no_grad()
def verdict_on_test_set(model: SeqModel, task: Task, cfg: TrainConfig, device: torch.device) -> dict:
    """The kept model on the task's fresh test set (SyntheticTask.test_batches: its own stream, drawn chunk by chunk,
    never seen in training or by the validation that chose the model), read once and judged by the task's rules against
    the memoryless loss of the test set itself: test_loss, test_metric, test_baseline (and its relative standard error),
    test_loss_ratio, test_error_rate, test_solved, test_left_baseline (and adding's test_hs_error_rate, test_hs_solved), test_seconds."""
    start = time.perf_counter()
    sums: dict[str, float] = {}
    targets = []  # only for a task whose memoryless loss depends on the draw (adding: one number per sequence)
    reads_targets = type(task).data_baseline is not Task.data_baseline
    count = 0
    with evaluating(model):
        for batch in task.test_batches(cfg.seq_len, device):
            count += batch.x.shape[1]
            outputs, _ = model(batch.x, None, batch.mask)
            for key, value in task.score(outputs, batch).items():
                sums[key] = sums.get(key, 0) + value
            if reads_targets:
                targets.append(Batch(batch.x[:0], batch.targets()))  # the scored targets alone (data_baseline reads targets())
    scores = task.finish(sums)  # val_loss, val_metric, ...: the same sums the validation set gives
    baseline, rel_se = task.data_baseline(targets, cfg.seq_len)
    verdict = judge(task, cfg, scores | {"baseline": baseline})
    return ({f"test_{k[4:]}": v for k, v in scores.items()} | {"test_baseline": baseline, "test_baseline_rel_se": rel_se}
            | {f"test_{k}": v for k, v in verdict.items()} | {"test_sequences": count, "test_seconds": time.perf_counter() - start})


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
