"""Seconds per lyrics epoch: gradlab's scratch model against the book's style of code, back to back."""

from __future__ import annotations

import statistics
import time

import torch

from .bookstyle import init_state, params_from, train_step as book_train_step
from .lm import build_lm, detach
from .tasks.lyrics import LyricsData, batches_per_epoch, consecutive
from .timing import lm_epoch_flops, matmul_peak, sync
from .train import LyricsConfig, make_optimizer, train_step


def _gradlab_epoch(model, opt, params, ids, cfg: LyricsConfig) -> None:
    """One epoch exactly as the trainer runs it (consecutive sampling)."""
    state = None
    for x, y in consecutive(ids, cfg.batch_size, cfg.num_steps):
        _, _, state = train_step(model, opt, params, x, y, None if state is None else detach(state), cfg)
        opt.step()


def _book_epoch(cell: str, params, ids, cfg: LyricsConfig) -> None:
    state = init_state(cell, cfg.batch_size, cfg.hidden_size, ids.device)
    for x, y in consecutive(ids, cfg.batch_size, cfg.num_steps):
        _, state = book_train_step(cell, params, x, y, state, cfg.lr, cfg.clip_threshold)


def compare_epoch_speed(cfg: LyricsConfig, data: LyricsData, epochs: int = 3) -> dict:
    """Alternate one epoch of each (after one warm-up epoch each) and take medians, so drifts in the
    machine's speed hit both alike. Returns seconds, ratio, FLOPs per epoch and peak fractions."""
    device = torch.device(cfg.device)
    ids = data.train_ids.to(device)
    model = build_lm(cfg.cell, "scratch", len(data.vocab), cfg.hidden_size, seed=cfg.seed, device=device)
    params = list(model.parameters())
    opt = make_optimizer(cfg, params)
    book = params_from(model)
    times: dict[str, list[float]] = {"gradlab": [], "book": []}
    runs = {"gradlab": lambda: _gradlab_epoch(model, opt, params, ids, cfg), "book": lambda: _book_epoch(cfg.cell, book, ids, cfg)}
    for k in range(epochs + 1):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if k:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    peak = matmul_peak(device)
    n_batches = batches_per_epoch(len(ids), cfg.batch_size, cfg.num_steps, "consecutive")
    out = {"cell": cfg.cell, "device": str(device), "epochs_timed": epochs, "batches_per_epoch": n_batches, "matmul_peak_flops": peak}
    for name, ts in times.items():
        seconds = statistics.median(ts)
        flops = lm_epoch_flops(name, cfg.cell, n_batches, cfg.num_steps, cfg.batch_size, len(data.vocab), cfg.hidden_size)
        out |= {f"{name}_seconds_per_epoch": seconds, f"{name}_flops_per_epoch": flops, f"{name}_peak_fraction": flops / seconds / peak}
    out["speedup"] = out["book_seconds_per_epoch"] / out["gradlab_seconds_per_epoch"]
    return out
