"""One training loop for the lyrics model: book defaults, real clipping, per-step telemetry, divergence kept."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .cells import check
from .clipping import clip
from .lm import CharLM, build_lm, detach, exp_or_inf, generate, perplexity
from .tasks.lyrics import LyricsData, batches_per_epoch, consecutive, random_chunks
from .timing import sync

OPTIMIZERS = ("sgd", "adam")
SAMPLINGS = ("consecutive", "random")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class LyricsConfig:
    """Defaults are the book's scratch run."""

    cell: str = "gru"
    impl: str = "scratch"
    variant: str | None = None  # GRU only: reset_after (default) or reset_before
    hidden_size: int = 256
    epochs: int = 160
    num_steps: int = 35
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 1e2  # the book's scratch rate: with clip 1e-2, each SGD step has length 1
    clip: str = "norm"
    clip_threshold: float = 1e-2
    sampling: str = "consecutive"
    init: str = "normal"  # the seed's N(0, 0.01)
    setting: str = "book"  # book: first 10,000 characters; full: the whole training split
    val_fraction: float = 0.1
    oov: str = "drop"
    eval_every: int = 10
    prefixes: tuple[str, ...] = ("分开", "不分开")
    pred_len: int = 50
    sample_temperature: float = 1.0  # samples are drawn greedily (as the book) and at this temperature
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        check(self.cell, self.impl, self.variant)
        for name, value, allowed in [
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("sampling", self.sampling, SAMPLINGS),
            ("dtype", self.dtype, tuple(DTYPES)),
        ]:
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}. Known: {', '.join(allowed)}.")
        for name in ("hidden_size", "epochs", "num_steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row every eval_every epochs
    samples: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # one row per optimiser step
    meta: dict = field(default_factory=dict)
    model: CharLM | None = None


def make_optimizer(cfg: LyricsConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.Adam(params, lr=cfg.lr)


def train_step(model: CharLM, opt: torch.optim.Optimizer, params: list, x: torch.Tensor, y: torch.Tensor, state, cfg: LyricsConfig):
    """Forward, mean cross-entropy, backward, clip. Returns (loss, ClipResult, state); the caller steps
    the optimiser unless the loss or the norm is not finite (a divergence to record)."""
    logits, state = model(x, state)  # (T, B, V)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item(), clip(params, cfg.clip, cfg.clip_threshold), state


def _samples(model: CharLM, data: LyricsData, cfg: LyricsConfig, epoch: int) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # samples reproducible per epoch
    rows = []
    for prefix in cfg.prefixes:
        for temperature in (0.0, cfg.sample_temperature):
            text = generate(model, data.vocab, prefix, cfg.pred_len, temperature, gen)
            rows.append({"epoch": epoch, "prefix": prefix, "temperature": temperature, "text": text})
    return rows


def train_lyrics(
    cfg: LyricsConfig, data: LyricsData, progress: bool = True, on_row: Callable[[dict], None] | None = None
) -> TrainResult:
    """Train and evaluate; a non-finite loss or gradient ends training and is recorded, not raised."""
    cfg.validate()
    for prefix in cfg.prefixes:  # fail before any work on a prefix the model cannot read
        data.vocab.encode(prefix, "prefix")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = build_lm(
        cfg.cell, cfg.impl, len(data.vocab), cfg.hidden_size, variant=cfg.variant, init=cfg.init,
        seed=cfg.seed, dtype=DTYPES[cfg.dtype], device=device,
    )
    params = list(model.parameters())
    opt = make_optimizer(cfg, params)
    train_ids = data.train_ids.to(device)
    n_batches = batches_per_epoch(len(train_ids), cfg.batch_size, cfg.num_steps, cfg.sampling)
    if n_batches < 1:
        raise ValueError(f"training text of {len(train_ids)} characters is too short for batch_size x num_steps.")
    result = TrainResult(model=model)
    window: list[dict] = []  # steps since the last history row
    seconds: list[float] = []
    diverged = False
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.cell}/{cfg.impl}", unit="epoch", disable=not progress)
    for epoch in bar:
        state = None
        loss_sum, n = 0.0, 0
        batches = consecutive(train_ids, cfg.batch_size, cfg.num_steps) if cfg.sampling == "consecutive" else random_chunks(train_ids, cfg.batch_size, cfg.num_steps, gen)
        sync(device)
        start = time.perf_counter()
        for step, (x, y) in enumerate(batches):
            # consecutive: carry the state, cut the graph; random: every batch starts from zeros
            state = detach(state) if (state is not None and cfg.sampling == "consecutive") else None
            loss_value, report, state = train_step(model, opt, params, x, y, state, cfg)
            row = {"epoch": epoch, "step": step, "loss": loss_value, "grad_norm": report.norm_before,
                   "grad_norm_clipped": report.norm_after, "clipped": report.clipped}
            result.steps.append(row)
            window.append(row)
            if not (math.isfinite(loss_value) and math.isfinite(report.norm_before)):
                diverged = True
                break
            opt.step()
            loss_sum += loss_value
            n += 1
        sync(device)
        seconds.append(time.perf_counter() - start)
        train_ppl = exp_or_inf(loss_sum / n) if n and not diverged else float("inf")
        bar.set_postfix(ppl=f"{train_ppl:.3g}")
        if diverged or epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            val_ppl = float("nan") if diverged else perplexity(model, data.val_ids.to(device), cfg.batch_size, cfg.num_steps)
            finite = [w["grad_norm"] for w in window if math.isfinite(w["grad_norm"])]
            hist = {
                "epoch": epoch, "train_ppl": train_ppl, "val_ppl": val_ppl,
                "seconds": statistics.mean(seconds),
                "grad_norm": statistics.median(finite) if finite else float("nan"),
                "grad_norm_clipped": statistics.median(w["grad_norm_clipped"] for w in window),
                "clip_rate": sum(w["clipped"] for w in window) / len(window),
                "diverged": diverged,
            }
            result.history.append(hist)
            if on_row:
                on_row(hist)
            if not diverged:
                result.samples.extend(_samples(model, data, cfg, epoch))
            window, seconds = [], []
        if diverged:
            break
    result.meta = {
        "config": dataclasses.asdict(cfg), "data": data.stats, "backend": model.cell.last_backend,
        "batches_per_epoch": n_batches, "parameters": sum(p.numel() for p in params), "diverged": diverged,
    }
    return result
