"""What a task is: how its batches are drawn, what a model needs to fit it (input, output, loss), its
metric and its memoryless baseline. Synthetic tasks only say how to sample one batch."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch.nn import functional as F

LOSSES = ("cross_entropy", "mse")
METRICS = ("accuracy", "mse", "perplexity")
IGNORE = -100  # a class target that is never scored (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Spec:
    """What a model needs to fit a task."""

    input: str  # "tokens": x holds ids below input_size; "vectors": x holds input_size floats per step
    input_size: int
    output_size: int
    loss: str  # "cross_entropy" (y holds class ids) or "mse" (y holds output_size floats per step)
    metric: str  # "accuracy", "mse" or "perplexity"


@dataclass
class Batch:
    x: torch.Tensor  # (T, B) int64 token ids, or (T, B, I) floats
    y: torch.Tensor  # (T, B) int64 class ids, or (T, B, O) floats; only the scored steps are read
    mask: torch.Tensor | None = None  # (T,) bool: the steps the loss scores; None scores every step
    carry: bool = False  # start from the previous batch's final state (consecutive text streams)

    def targets(self) -> torch.Tensor:
        """y at the scored steps: (S, B) or (S, B, O)."""
        return self.y if self.mask is None else self.y[self.mask]

    def to(self, device: str | torch.device) -> "Batch":
        mask = None if self.mask is None else self.mask.to(device)
        return Batch(self.x.to(device), self.y.to(device), mask, self.carry)


def loss_of(spec: Spec, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The task's loss over the scored steps: outputs (S, B, O), targets (S, B) ids or (S, B, O)."""
    if spec.loss == "cross_entropy":
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction=reduction, ignore_index=IGNORE)
    return F.mse_loss(outputs, targets.to(outputs.dtype), reduction=reduction)


@dataclass(frozen=True)
class Success:
    """When a run counts as having solved its task, and whose rule that is. kind "error_rate": the share of
    answers wrong is under `threshold` (None: the run's solve_error); "loss_ratio": the loss is under the run's
    solve_fraction times the memoryless loss of the same data; "sequence_error": the share of sequences whose
    answer lies `tolerance` or more from its target is under `threshold`; "none": a task that is never solved
    (a language model). `whose`: the paper whose rule this is for this very task, or "gradlab" where gradlab
    draws the line itself (`source` then says why, and what the literature does instead). `name`: a rule kept
    beside the verdict (Task.also) gives its columns this prefix (hs: hs_error_rate, hs_solved)."""

    kind: str
    source: str
    threshold: float | None = None
    whose: str = "gradlab"
    tolerance: float | None = None
    name: str = ""

    @property
    def own(self) -> bool:
        """gradlab's own line, not the rule of the task's source."""
        return self.whose == "gradlab"

    def line(self, solve_fraction: float, solve_error: float, on: str = "held-out") -> str:
        """The rule in numbers, on the set named `on` (test, validation, held-out)."""
        if self.kind == "error_rate":
            return f"under {100 * (self.threshold or solve_error):g}% of the {on} answers wrong"
        if self.kind == "loss_ratio":
            return f"{on} loss under {solve_fraction:g} x the memoryless loss of the {on} data"
        if self.kind == "sequence_error":
            return (f"under {100 * (self.threshold or solve_error):g}% of the {on} sequences answered {self.tolerance:g} or more "
                    "from their target")
        return "never: no rule applies to this task"

    def describe(self, solve_fraction: float, solve_error: float, on: str = "held-out") -> str:
        """The rule in numbers and whose it is: '<line> (Pascanu et al. 2013's rule: ...)' or '<line> (gradlab's own line: why)'."""
        if self.kind == "none":
            return self.line(solve_fraction, solve_error, on)
        whose = "gradlab's own line" if self.own else f"{self.whose}'s rule"
        return f"{self.line(solve_fraction, solve_error, on)} ({whose}: {self.source})"


TEST_STREAM = "gradlab test set"  # what the test set's seed is derived from: a stream apart from every training and validation one


def fresh_test_stream(test_seed: int) -> int:
    """The seed of the test set's generator: 32 bits of sha256('gradlab test set <test_seed>'). torch's CPU generator
    reads only the low 32 bits of a seed (manual_seed(2**32 + 1) draws what manual_seed(1) draws), so the test
    stream is a 32-bit seed of its own, and a training seed or eval_seed equal to it is refused (TrainConfig.validate):
    no training or validation stream is the test stream. (Distinct streams are distinct draws; a task with few
    possible sequences, temporal order or recall at T 10, may still draw the same sequence twice by chance.)"""
    return int.from_bytes(hashlib.sha256(f"{TEST_STREAM} {test_seed}".encode()).digest()[:4], "little")


from ..names import LEFT_BASELINE  # noqa: E402  (a number the report reads too, without torch)


def exp_or_inf(x: float) -> float:
    """exp that says inf instead of raising: a huge loss is a result to record."""
    return math.exp(x) if x < 709.0 else float("inf")


@dataclass
class Items:
    """Scored targets that share a window length, for the context analysis (gradlab.context): the L inputs up to
    and including the step that predicts each target, and the targets. Items of a long text name it and the
    targets' positions in it: their full context is all of the text before them (the model reads it from its
    start); otherwise the whole window is the full context (a synthetic sequence's whole past)."""

    windows: torch.Tensor  # (L, N) ids or (L, N, I)
    targets: torch.Tensor  # (N,) ids or (N, O)
    text: torch.Tensor | None = None  # (len,) ids of the text the targets lie in
    positions: torch.Tensor | None = None  # (N,) the targets' positions in `text`, increasing


def sequence_items(batch: Batch, steps: list[int], count: int) -> list[Items]:
    """Items of a synthetic task's held-out batch: for each scored step s, the first `count` sequences'
    inputs up to s (their whole past: the full context) and the targets at s."""
    n = min(count, batch.x.shape[1])
    return [Items(batch.x[: s + 1, :n], batch.y[s, :n]) for s in steps]


class Task:
    """The interface the training loop uses. Parameters are dataclass fields with defaults."""

    name: ClassVar[str]
    min_length: ClassVar[int] = 1
    success: ClassVar[Success] = Success("loss_ratio", "gradlab's default rule for a task that names none")
    also: ClassVar[tuple[Success, ...]] = ()  # rules kept beside the verdict, each in columns of its own (adding: Hochreiter and Schmidhuber's)
    lag: ClassVar[str] = "T: steps per sequence"  # what seq_len means for how far back the task reaches
    keeps_weights: ClassVar[bool] = False  # a run keeps its trained model (the point's 'weights' table), to be analysed again later

    @property
    def spec(self) -> Spec:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, length: int) -> None:
        """Raise ValueError for parameters or a length the task cannot use (cheap: no data is read)."""
        if length < self.min_length:
            raise ValueError(f"task {self.name!r} needs seq_len >= {self.min_length}, got {length}.")

    def baseline(self, length: int) -> float:
        """Held-out loss of the best predictor that ignores the past (it may know the step index)."""
        raise NotImplementedError

    def data_baseline(self, held_out: list, length: int) -> tuple[float, float]:
        """The memoryless loss of the held-out data itself (the best predictor that ignores the past, scored
        on exactly the targets the model is scored on) and its relative standard error over those targets.
        A task whose memoryless loss does not depend on the draw (a uniform guess over classes) gives its
        baseline and 0."""
        return self.baseline(length), 0.0

    def guess_loss(self, length: int) -> float:
        """The loss of a predictor that knows nothing: uniform over the classes (cross-entropy: ln of their
        number, whatever the data); an MSE task gives its own (predicting 0). The divergence rule's unit."""
        if self.spec.loss == "cross_entropy":
            return math.log(self.spec.output_size)
        raise NotImplementedError(f"{type(self).__name__} must say its guess_loss (the MSE of predicting 0)")

    def stream(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device) -> Iterator[Batch]:
        """Training batches, without end."""
        raise NotImplementedError

    def held_out(self, batch_size: int, length: int, device: str | torch.device) -> list[Batch]:
        """The fixed held-out set, the same for every run of the same task and length."""
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int, length: int) -> int | None:
        """Steps in one pass over a finite training set; None for fresh data every step."""
        return None

    def score(self, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Sums over one held-out batch: the loss and its count (targets, or elements for MSE), and
        for accuracy the correct answers and their count."""
        targets = batch.targets()
        sums = {"loss": loss_of(self.spec, outputs, targets, reduction="sum").item()}
        sums["count"] = int((targets != IGNORE).sum()) if self.spec.loss == "cross_entropy" else targets.numel()
        if self.spec.metric == "accuracy":
            sums |= {"correct": float((outputs.argmax(-1) == targets).sum()), "answers": sums["count"]}
        return sums

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        """val_loss (the mean over what the loss scores) and val_metric, from summed scores."""
        val_loss = sums["loss"] / sums["count"]
        if self.spec.metric == "perplexity":
            return {"val_loss": val_loss, "val_metric": exp_or_inf(val_loss)}
        if self.spec.metric == "accuracy":
            return {"val_loss": val_loss, "val_metric": sums["correct"] / sums["answers"]}
        return {"val_loss": val_loss, "val_metric": val_loss}

    def row_extras(self, row: dict) -> dict:
        """Task-specific columns of a history row (perplexities for a language model)."""
        return {}

    def observe(self, model: torch.nn.Module, row: dict, seed: int) -> dict[str, list[dict]]:
        """Extra tables recorded at each evaluation (generated text for a language model)."""
        return {}

    def stats(self) -> dict[str, Any]:
        """What the run's table records about the task's data."""
        return {}

    def context_items(self, model: torch.nn.Module, held_out: list, count: int, longest: int) -> dict[str, list]:
        """Per text, the scored targets the context analysis (gradlab.context) cuts the context of."""
        return {}


@dataclass
class SyntheticTask(Task):
    """A task drawn fresh every step by `sample`. Validation (the held-out set): `eval_size` sequences from
    `eval_seed`, read at every evaluation: it chooses the kept checkpoint, stops a solved run and chooses a
    learning rate. Test: `test_size` fresh sequences from a stream of their own (fresh_test_stream), read once, at
    the end, by the kept model: the verdict (Pascanu et al. 2013 judged temporal order on 10,000 fresh sequences)."""

    eval_size: int = 1000  # held-out sequences: the loss is a mean over 1000 draws
    eval_seed: int = 1  # its own stream: every run, whatever its seed, is scored on the same sequences
    test_size: int = 10_000  # fresh test sequences, read once by the kept model: the verdict (Pascanu et al. 2013's count); 0: no test set
    test_seed: int = 0  # the test set's stream is seeded with fresh_test_stream(test_seed), never a training or validation seed

    EVAL_CHUNK: ClassVar[int] = 250  # held-out sequences per forward pass (bounds the (T, B, H) outputs)
    TEST_CHUNK_STEPS: ClassVar[int] = 50_000  # test sequences per forward pass x their length: the (T, B, 4H) gates of a chunk stay near 50 MB at H 64

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        raise NotImplementedError

    def check(self, length: int) -> None:
        super().check(length)
        if self.eval_size < 1:
            raise ValueError(f"eval_size must be >= 1, got {self.eval_size}.")
        if not 0 <= self.eval_seed <= 2**32 - 1:
            raise ValueError(f"eval_seed must be in 0 .. 2**32 - 1 (as every seed), got {self.eval_seed}.")
        if self.test_size < 0 or not 0 <= self.test_seed <= 2**32 - 1:
            raise ValueError(f"test_size must be >= 0 (0: no test set) and test_seed in 0 .. 2**32 - 1, got {self.test_size} and {self.test_seed}.")
        if self.test_size and self.eval_seed == self.test_stream():
            raise ValueError(f"eval_seed {self.eval_seed} is the test set's stream (test_seed {self.test_seed}): the validation set would be the test set; "
                             "choose another eval_seed or test_seed.")

    def stream(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device) -> Iterator[Batch]:
        while True:
            yield self.sample(gen, batch_size, length, device)

    def context_steps(self, length: int, batch: Batch) -> list[int]:
        """The steps whose targets the context analysis scores: those the loss scores (copy: its answers)."""
        return list(range(batch.x.shape[0])) if batch.mask is None else batch.mask.nonzero().flatten().tolist()

    def context_items(self, model: torch.nn.Module, held_out: list, count: int, longest: int) -> dict[str, list]:
        """The first held-out sequences, each scored step with its whole past as the full context."""
        batch = Batch(torch.cat([b.x for b in held_out], 1), torch.cat([b.y for b in held_out], 1), held_out[0].mask)  # (T, N)
        return {"held out": sequence_items(batch, self.context_steps(batch.x.shape[0], batch), count)}

    def held_out(self, batch_size: int, length: int, device: str | torch.device) -> list[Batch]:
        gen = torch.Generator().manual_seed(self.eval_seed)
        sizes = [min(self.EVAL_CHUNK, self.eval_size - k) for k in range(0, self.eval_size, self.EVAL_CHUNK)]
        return [self.sample(gen, n, length, device) for n in sizes]

    def test_stream(self) -> int:
        """The seed of the test set's generator (fresh_test_stream)."""
        return fresh_test_stream(self.test_seed)

    def test_batches(self, length: int, device: str | torch.device) -> Iterator[Batch]:
        """The fresh test set, drawn chunk by chunk from its own stream (never held whole: 10,000 copy sequences of
        T 640 would be 53 MB of ids), the same for every run of the same task, length and test_seed."""
        gen = torch.Generator().manual_seed(self.test_stream())
        chunk = max(1, min(2000, self.TEST_CHUNK_STEPS // length))
        for k in range(0, self.test_size, chunk):
            yield self.sample(gen, min(chunk, self.test_size - k), length, device)


def last_step(length: int) -> torch.Tensor:
    """(T,) mask scoring the last step only."""
    mask = torch.zeros(length, dtype=torch.bool)
    mask[-1] = True
    return mask


def answer_at_end(answer: torch.Tensor, length: int) -> torch.Tensor:
    """(T, B) targets that hold `answer` (B,) at the last step (what the other steps hold is never read)."""
    y = torch.zeros(length, answer.shape[0], dtype=answer.dtype)
    y[-1] = answer
    return y
