"""What a training run is made of: task, model, optimiser, clipping, schedule. Defaults follow the
literature on the synthetic long-range tasks; the lyrics study sets the book's values in its file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..cells import check, check_device, check_fits, check_init_scale
from ..names import DTYPES, INITS, OPTIMIZERS, lookup
from ..tasks import Task, build, param_fields
from .clipping import parse_clip


LR_SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainConfig:
    task: str = "adding"
    cell: str = "lstm"
    impl: str = "scratch"
    variant: str | None = None  # GRU only: reset_after (default) or reset_before
    hidden_size: int = 128  # Arjovsky et al. 2016's LSTM on adding
    init: str = "uniform"  # torch.nn's default, the set-up of the published LSTM results
    init_scale: float | None = None  # spectral norm of each recurrent matrix; None keeps the init's own
    forget_bias: float = 0.0  # LSTM only; Jozefowicz et al. 2015 recommend 1
    dropout: float = 0.0  # on the cell's outputs while training (not the recurrence); 0 keeps the book's set-up
    embedding: int = 0  # token tasks: a learned embedding of this width before the cell; 0: the cell's own projection of one-hot ids (the book's)
    tie: bool = False  # the output layer's weights are the embedding's (needs embedding = hidden_size)
    dropout_embedding: float = 0.0  # locked (variational) dropout on the embedded inputs, one mask per sequence
    dropout_chars: float = 0.0  # a character's whole embedding dropped, per batch (embedding dropout)
    dropout_output: float = 0.0  # locked dropout on the cell's outputs, one mask per sequence
    weight_drop: float = 0.0  # DropConnect on the recurrent weights (scratch cells)
    weight_decay: float = 0.0  # the optimiser's (decoupled for adamw, L2 for the others)
    label_smoothing: float = 0.0  # class targets: the training objective's target puts this share on the uniform distribution (Szegedy et al. 2016); held-out losses stay plain
    lr_schedule: str = "constant"  # constant, cosine (to 0 over the steps), or plateau (halved after 2 evaluations without a better held-out loss)
    optimizer: str = "rmsprop"  # Arjovsky et al. 2016: RMSProp, lr 1e-3, decay 0.9
    lr: float = 1e-3
    clip: str = "norm:1"  # global-norm clipping at 1
    seq_len: int = 100  # the lag T (characters per batch for lyrics: the book's num_steps)
    batch_size: int = 50
    steps: int = 2000  # optimiser steps; synthetic tasks draw fresh data at every one
    eval_every: int = 100  # steps between evaluations on the fixed held-out set
    solve_fraction: float = 0.1  # solved (tasks judged by their loss, adding): held-out loss below this fraction of the data's memoryless loss
    solve_error: float = 0.01  # solved (tasks judged by their answers: copy, temporal order, recall): under this share of held-out answers wrong
    stop_when_solved: bool = False  # stop once the validation set meets the task's rule with stop_margin to spare (the test set judges the kept model)
    stop_margin: float = 1.0  # the share of the rule's threshold validation must reach to stop a run: 1 stops at the rule itself; 0.5 at half its line
    patience: int = 0  # early stopping: evaluations in a row without a new best held-out loss before the run ends; 0: never
    keep_best: bool = False  # end with the parameters of the best held-out evaluation: they are tested, analysed and sampled
    probe_steps: tuple[int, ...] = ()  # steps at which ||dL/dh_t|| is measured on held-out data (0: at initialisation)
    probe_size: int = 100  # held-out sequences the gradient-flow probe uses
    context_lengths: tuple[int, ...] = ()  # after training: the loss with the context cut to the last k inputs (empty: skip)
    context_positions: int = 1000  # scored targets of each text the context analysis uses (a fixed draw)
    eval_modes: tuple[str, ...] = ()  # after training, the kept model's held-out texts read with long context (gradlab.evaluation): cache, dynamic, mix; empty: none
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def task_params(self) -> dict[str, Any]:
        """The task parameters this config sets (None: the task's default)."""
        return {name: getattr(self, name) for name in param_fields() if hasattr(self, name)}

    def make_task(self) -> Task:
        return build(self.task, self.task_params())

    def validate(self) -> Task:
        """Every name and number checked before any work; returns the task it describes."""
        check(self.cell, self.impl, self.variant, self.forget_bias)
        lookup(INITS, self.init, "init")
        lookup(DTYPES, self.dtype, "dtype")
        lookup(OPTIMIZERS, self.optimizer, "optimizer")
        parse_clip(self.clip)
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (evaluations without a new best held-out loss; 0: no early stopping), got {self.patience}.")
        for name in ("hidden_size", "seq_len", "batch_size", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("dropout", "dropout_embedding", "dropout_chars", "dropout_output", "weight_drop"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1) (a share zeroed while training), got {getattr(self, name)}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1) (the share of the target put on the uniform distribution), got {self.label_smoothing}.")
        if self.embedding < 0 or self.weight_decay < 0:
            raise ValueError(f"embedding (a width; 0: none) and weight_decay must be >= 0, got {self.embedding} and {self.weight_decay}.")
        if self.tie and self.embedding != self.hidden_size:
            raise ValueError(f"tie shares the embedding with the output layer, so embedding must equal hidden_size ({self.hidden_size}), got {self.embedding}.")
        if (self.dropout_embedding or self.dropout_chars) and not self.embedding:
            raise ValueError("dropout_embedding and dropout_chars act on a learned embedding: set embedding (its width) too.")
        if self.weight_drop and self.impl != "scratch":
            raise ValueError(f"weight_drop masks the recurrent weights of the scratch cells; impl {self.impl!r} runs torch.nn's own kernel.")
        lookup({s: s for s in LR_SCHEDULES}, self.lr_schedule, "lr_schedule")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        check_init_scale(self.init_scale)
        check_device(self.device)
        check_fits(self.cell, self.hidden_size, 0, self.seq_len, self.batch_size, self.dtype, self.device)
        if not 0 < self.solve_fraction <= 1:
            raise ValueError(f"solve_fraction must be in (0, 1], got {self.solve_fraction}.")
        if not 0 < self.stop_margin <= 1:
            raise ValueError(f"stop_margin must be in (0, 1] (the share of the rule's threshold validation must reach to stop a solved run), got {self.stop_margin}.")
        if not 0 < self.solve_error < 1:
            raise ValueError(f"solve_error must be in (0, 1) (the share of held-out answers wrong under which a run is solved), got {self.solve_error}.")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.probe_steps) or self.probe_size < 1:
            raise ValueError(f"probe_steps must be steps >= 0 (0: at initialisation) and probe_size >= 1, got {self.probe_steps}, {self.probe_size}.")
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in self.context_lengths) or self.context_positions < 1:
            raise ValueError(f"context_lengths must be >= 1 and context_positions >= 1, got {self.context_lengths}, {self.context_positions}.")
        from ..evaluation import MODES

        unknown_modes = [m for m in self.eval_modes if m not in MODES]
        if unknown_modes or len(set(self.eval_modes)) != len(self.eval_modes):
            raise ValueError(f"eval_modes takes distinct modes among {', '.join(MODES)} (empty: none), got {list(self.eval_modes)}.")
        beyond = [s for s in self.probe_steps if s > self.steps]
        if beyond:
            raise ValueError(f"probe_steps {beyond} lie beyond the run's {self.steps} steps: probe at steps 0 .. {self.steps}.")
        task = self.make_task()
        task.check(self.seq_len)
        if getattr(task, "test_size", 0) and self.seed == task.test_stream():
            raise ValueError(f"seed {self.seed} is the test set's stream (test_seed {task.test_seed}): the model would train on its test set; "
                             "choose another seed or test_seed.")
        if self.label_smoothing and task.spec.loss != "cross_entropy":
            raise ValueError(f"label_smoothing smooths class targets; task {self.task!r} is scored by {task.spec.loss}.")
        if self.embedding and task.spec.input != "tokens":
            raise ValueError(f"embedding embeds token ids; task {self.task!r} reads vectors.")
        if self.eval_modes and not hasattr(task, "long_context"):
            raise ValueError(f"eval_modes read a held-out text with long context (a language model's); task {self.task!r} has none.")
        return task


def with_task_params(base: type, name: str = "Config") -> type:
    """`base` plus every task's parameters as fields defaulting to None (the task's own default), so
    a study can set any of them with --set; a task parameter set for a task that does not take it is
    an error (tasks.build). A new task's parameters appear here without editing this file."""
    own = {f.name for f in dataclasses.fields(base)}
    extra = []
    for pname, hint in param_fields().items():
        if pname not in own:
            extra.append((pname, hint | None, field(default=None)))
    return dataclasses.make_dataclass(name, extra, bases=(base,))
