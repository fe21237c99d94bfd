"""Seconds per lyrics epoch: gradlab's scratch model against the book's style of code, back to back."""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from ..cells import detach, family
from ..tasks.lyrics import Lyrics
from ..tasks.text import consecutive
from ..timing import lm_epoch_flops, matmul_peak, median_seconds, sync
from ..training import TrainConfig, build_model
from ..training.clipping import NormClip, parse_clip
from ..training.loop import train_step
from ..training.optimizers import make_optimizer
from .book import init_state, params_from, train_step as book_train_step


def compare_epoch_speed(cfg: TrainConfig, task: Lyrics, epochs: int = 3) -> dict:
    """Alternate one epoch of each (after one warm-up epoch each) and take medians, so drifts in the
    machine's speed hit both alike. Consecutive sampling and norm clipping, as the book trains.
    Returns seconds, ratio, FLOPs per epoch and peak fractions."""
    device = torch.device(cfg.device)
    clipper = parse_clip(cfg.clip)
    clipper.measure_cosine = False  # the training step alone, as the book's code has no telemetry either
    if not isinstance(clipper, NormClip) or task.sampling != "consecutive":
        raise ValueError("the book's trainer clips by norm and samples consecutively: use clip 'norm:THETA', sampling 'consecutive'.")
    n_batches = task.steps_per_epoch(cfg.batch_size, cfg.seq_len)
    model = build_model(task.spec, cfg.cell, "scratch", cfg.hidden_size, seed=cfg.seed, init=cfg.init, device=device)
    params = list(model.parameters())
    opt = make_optimizer(cfg.optimizer, params, cfg.lr)
    stream = task.stream(torch.Generator(), cfg.batch_size, cfg.seq_len, device)
    book = params_from(model)
    ids = task.data.train_ids.to(device)

    def gradlab_epoch() -> None:  # one epoch exactly as the training loop runs it
        state = None
        for batch in itertools.islice(stream, n_batches):
            state = detach(state) if (batch.carry and state is not None) else None
            _, _, state, _, _ = train_step(model, task.spec, batch, state, opt, clipper, params)

    def book_epoch() -> None:
        state = init_state(cfg.cell, cfg.batch_size, cfg.hidden_size, device)
        for x, y in consecutive(ids, cfg.batch_size, cfg.seq_len):
            _, state = book_train_step(cfg.cell, book, x, y, state, cfg.lr, clipper.theta)

    times: dict[str, list[float]] = {"gradlab": [], "book": []}
    runs = {"gradlab": gradlab_epoch, "book": book_epoch}
    for k in range(epochs + 1):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if k:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    peak = matmul_peak(device)
    out = {"cell": cfg.cell, "device": str(device), "epochs_timed": epochs, "batches_per_epoch": n_batches, "matmul_peak_flops": peak,
           "train_chars": len(ids)}
    for name, ts in times.items():
        seconds = statistics.median(ts)
        flops = lm_epoch_flops(name, cfg.cell, n_batches, cfg.seq_len, cfg.batch_size, len(task.vocab), cfg.hidden_size)
        out |= {f"{name}_seconds_per_epoch": seconds, f"{name}_flops_per_epoch": flops, f"{name}_peak_fraction": flops / seconds / peak}
    out["speedup"] = out["book_seconds_per_epoch"] / out["gradlab_seconds_per_epoch"]
    return out


def epoch_matmul_seconds(cfg: TrainConfig, task: Lyrics, repeats: int = 5) -> float:
    """Median seconds of one epoch's matmuls run alone, at the epoch's own shapes and counts (those of
    lm_epoch_flops('gradlab', ...)): what the epoch would take if everything else cost nothing."""
    device = torch.device(cfg.device)
    g, H, B, T, V = family(cfg.cell).gate_count, cfg.hidden_size, cfg.batch_size, cfg.seq_len, len(task.vocab)
    gen = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731
    h, w_h, a, w_t = r(B, H), r(H, g * H), r(B, g * H), r(g * H, H)
    hs, w_q, grad_q, ga = r(T * B, H), r(H, V), r(T * B, V), r(T * B, g * H)
    batches = task.steps_per_epoch(cfg.batch_size, cfg.seq_len)

    def epoch() -> None:
        for _ in range(batches):
            for _ in range(T):
                h @ w_h  # forward, recurrent
            hs @ w_q  # forward, output layer
            grad_q @ w_q.T  # d hidden, output layer
            hs.T @ grad_q  # d W_hq
            for _ in range(T - 1):
                a @ w_t  # d h_{t-1}
            hs.T @ ga  # d W_h, all steps at once

    return median_seconds(epoch, device, repeats=repeats, warmup=1)


def book_config(**overrides) -> TrainConfig:
    """The lyrics study's 'book' point: the book's settings live in studies/lyrics.toml alone."""
    from ..measures import train as train_measure
    from ..study import expand, load_study, resolve

    resolved = resolve(load_study("lyrics"), train_measure.Config, "book", [f"{k}={v}" for k, v in overrides.items()])
    (cfg,), _ = expand(resolved, train_measure.Config)
    return cfg


def book_shaped_text(vocab_size: int = 1027, seed: int = 0) -> str:
    """Random lines whose first 10,000 training characters use `vocab_size` distinct characters (the
    space that joins the lines among them), as the book's text does: for timing its epoch without the corpus."""
    gen = torch.Generator().manual_seed(seed)
    n = vocab_size - 1  # the space is the last one
    codes = torch.cat([torch.arange(n), torch.randint(0, n, (12_000 - n,), generator=gen)])
    chars = [chr(0x4E00 + int(c)) for c in codes]
    return "\n".join("".join(chars[i : i + 30]) for i in range(0, len(chars), 30))
