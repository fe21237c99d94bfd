"""Many trainings of one shape as one batched pass. Each member is a whole training.loop.Run (its own data
stream, optimiser state, clipping, divergence rule, evaluations and early stop); only the forward pass and
the written-out BPTT are batched over a leading model dimension, and a member that has ended leaves the batch."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..cells.bptt import per_model, sequence_function, sequence_outputs
from ..memory import keep_freed_memory
from ..tasks import task_class
from ..tasks.base import loss_of
from ..timing import sync
from .config import TrainConfig
from .loop import Run, TrainResult, clip_and_step
from .model import SeqModel, readout

SHAPE_FIELDS = ("task", "cell", "impl", "variant", "seq_len", "hidden_size", "batch_size", "optimizer", "dtype", "device")


def solo_reason(cfg: TrainConfig) -> str | None:
    """Why this training cannot join an ensemble (it then runs solo), or None when it can."""
    if cfg.impl != "scratch":
        return f"impl {cfg.impl!r}: only the scratch cells batch over models (a fused kernel takes one model)"
    if sequence_function(cfg.cell, cfg.variant) is None:
        named = f"{cfg.cell!r}" + (f" ({cfg.variant})" if cfg.variant else "")
        return f"cell {named} runs step by step, with no written-out BPTT to batch"
    if cfg.dropout or cfg.dropout_embedding or cfg.dropout_chars or cfg.dropout_output or cfg.weight_drop:
        return "dropout draws from the global random stream, which the members would share"
    if cfg.embedding or cfg.weight_decay or cfg.label_smoothing or cfg.lr_schedule != "constant":
        return "an embedding, weight decay, label smoothing and learning-rate schedules are trained solo"
    if carries_state(cfg):
        return "consecutive text batches carry each model's state from batch to batch"
    return None


def carries_state(cfg: TrainConfig) -> bool:
    """Whether the task's batches carry the state from one to the next (lyrics' consecutive sampling), read from
    the config and the task's defaults without building the task (which would load a corpus)."""
    fields = {f.name: f for f in dataclasses.fields(task_class(cfg.task))}
    if "sampling" not in fields:
        return False
    sampling = cfg.task_params().get("sampling")
    return (fields["sampling"].default if sampling is None else sampling) == "consecutive"


def shape_key(cfg: TrainConfig) -> tuple:
    """What the members of one ensemble share: the model's and the batch's shape, the optimiser kind and the task."""
    return tuple(getattr(cfg, f) for f in SHAPE_FIELDS) + tuple(sorted((k, repr(v)) for k, v in cfg.task_params().items()))


def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors)  # (E, ...): autograd hands each member's slice of the gradient back to its own tensor


class AddBias(torch.autograd.Function):
    """rows (T, E, B, G) + each model's bias (E, G), whose gradient sums each model's rows in its solo run's
    order (bptt.per_model): a broadcast add's backward would sum them in another, off by a rounding."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return rows + bias[:, None, :]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, per_model(grad).sum(1)


def project(models: list[SeqModel], x: torch.Tensor) -> torch.Tensor:
    """Every member's input projection x W_x + b in one batched matmul (a row lookup for token ids):
    x (E, T, B, I) floats or (E, T, B) ids -> (T, E, B, G*H)."""
    cells = [m.cell for m in models]
    gates = cells[0].gates
    w_x = stacked([torch.cat([getattr(c, f"W_x{g}") for g in gates], dim=1) for c in cells])  # (E, I, G*H)
    b = stacked([torch.cat([getattr(c, f"b_{g}") for g in gates]) for c in cells])  # (E, G*H)
    E, V = w_x.shape[:2]
    if x.dtype == torch.long:  # each member's rows: offset its ids into the stacked table
        unknown = x == V  # one past the vocabulary: the all-zero one-hot input, as ScratchCell.project
        offsets = torch.arange(E, device=x.device).view(E, 1, 1) * V
        rows = F.embedding(x.masked_fill(unknown, 0) + offsets, w_x.reshape(E * V, -1))  # (E, T, B, G*H)
        if bool(unknown.any()):
            rows = rows.masked_fill(unknown[..., None], 0)
        return AddBias.apply(rows.transpose(0, 1), b)
    T, B = x.shape[1:3]
    flat = torch.baddbmm(b[:, None, :], x.to(w_x.dtype).reshape(E, T * B, V), w_x)  # (E, T*B, G*H); a float64 model takes float32 vectors
    return flat.view(E, T, B, -1).transpose(0, 1)


def ensemble_outputs(models: list[SeqModel], x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The members' outputs at the scored steps: x (E, T, B, ...) -> (E, S, B, O), every matmul batched over E."""
    cells = [m.cell for m in models]
    H, B = cells[0].hidden_size, x.shape[2]
    inputs = project(models, x)  # (T, E, B, G*H)
    weights = [stacked(list(parts)) for parts in zip(*(c.recurrent() for c in cells))]  # (E, H, G*H), and the GRU's (E, 3H)
    h0 = inputs.new_zeros(len(models), B, H)  # (E, B, H): every run starts from a zero state
    out = sequence_outputs(cells[0].cell, inputs, h0, weights)  # (T, E, B, H)
    if mask is not None:
        out = out[mask]  # (S, E, B, H): only the scored steps reach the output layers
    S = out.shape[0]
    w_q = stacked([m.W_hq for m in models])  # (E, H, O)
    b_q = stacked([m.b_q for m in models])  # (E, O)
    logits = readout(b_q, out.transpose(0, 1).reshape(len(models), S * B, H), w_q)  # (E, S*B, O)
    return logits.view(len(models), S, B, -1)


def check_members(cfgs: list[TrainConfig]) -> None:
    """One ensemble, or a ValueError that names the setting that parts its members."""
    for cfg in cfgs:
        reason = solo_reason(cfg)
        if reason:
            raise ValueError(f"this training cannot join an ensemble: {reason}; run it solo (training.train).")
    first = shape_key(cfgs[0])
    for cfg in cfgs[1:]:
        key = shape_key(cfg)
        if key != first:
            differ = [f for f, a, b in zip(SHAPE_FIELDS, first, key) if a != b] or ["a task parameter"]
            raise ValueError(f"an ensemble's members share {', '.join(SHAPE_FIELDS)} and the task's parameters; "
                             f"these differ in {', '.join(differ)}.")


def ensemble_step(active: list[Run], spec, batches: list) -> tuple[list[float], list[tuple]]:
    """One optimiser step of every run in `active` on its own batch, as one batched forward and backward:
    (each run's loss, each run's (ClipResult, finite, update norm))."""
    if any(b.carry for b in batches):
        raise ValueError("a batch carries its model's state from the last one: such a task trains solo, not in an ensemble")
    mask = batches[0].mask
    if any(b.mask is not mask and not torch.equal(b.mask, mask) for b in batches[1:]):
        raise ValueError("the members' batches score different steps: an ensemble needs one mask per step for all")
    logits = ensemble_outputs([run.model for run in active], torch.stack([b.x for b in batches]), mask)  # (E, S, B, O)
    losses = torch.stack([loss_of(spec, logits[e], b.targets()) for e, b in enumerate(batches)])  # (E,)
    for run in active:
        run.opt.zero_grad(set_to_none=True)
    losses.sum().backward()  # each member's parameters get its own loss's gradient: the members share no weight
    values = losses.tolist()
    return values, [clip_and_step(v, run.opt, run.clipper, run.params, measure_update=True) for v, run in zip(values, active)]


def train_ensemble(cfgs: list[TrainConfig], progress: bool = False) -> list[TrainResult]:
    """Train every config as a member of one ensemble; results in the configs' order, each what its solo run
    (training.train) gives: on CPU bit for bit its solo run at one thread, at any thread count of the ensemble (a
    solo run on several threads rounds its matrix products' sums another way, and drifts from it as training
    goes on: docs/ensembles.md). A member that diverges, solves or stops leaves the batch."""
    check_members(cfgs)
    if cfgs[0].device == "cpu":
        keep_freed_memory()  # its big per-step tensors reused, not faulted in anew at every step
    runs = [Run(cfg) for cfg in cfgs]
    spec = runs[0].task.spec
    bar = tqdm(total=sum(cfg.steps for cfg in cfgs), desc=f"ensemble of {len(cfgs)}: {cfgs[0].task}/{cfgs[0].cell} T={cfgs[0].seq_len}",
               unit="model-step", disable=not progress, leave=False)
    active = list(runs)
    while active:
        batches = [run.next_batch() for run in active]  # each member's own stream: the batches its solo run draws
        start = time.perf_counter()
        values, stepped = ensemble_step(active, spec, batches)
        sync(active[0].device)
        seconds = (time.perf_counter() - start) / len(active)  # each member's share of the batched step
        for run, value, (report, finite, update) in zip(active, values, stepped):
            run.record(value, report, finite, update, seconds)
        bar.update(len(active))
        active = [run for run in active if run.running]
    bar.close()
    return [run.finish(ensemble_size=len(cfgs)) for run in runs]
