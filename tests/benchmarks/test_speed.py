"""Speed goals as ratios measured in one run (these machines are noisy); the benchmark fixture records times.

Run alone: python -m pytest tests/benchmarks --benchmark-only
"""

from __future__ import annotations

import torch

from gradlab.cells import create
from gradlab.probes import hidden_grad_norms, last_step_loss
from gradlab.baselines.speed import book_config, book_shaped_text, compare_epoch_speed
from gradlab.tasks.lyrics import Lyrics
from gradlab.timing import interleaved_medians

T, B, H, I = 1000, 32, 128, 32  # the shape for the probe's cost


def _setup(impl: str):
    cell = create("gru", impl, I, H, init="orthogonal", seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=gen)
    g = torch.randn(B, H, generator=gen)
    return cell, x, g


def _plain(cell, x, g) -> None:
    cell.zero_grad(set_to_none=True)
    _, state = cell(x)
    last_step_loss(state, g).backward()


def test_hidden_probe_costs_at_most_1_3x_a_plain_step(benchmark):
    cell, x, g = _setup("scratch")
    t = interleaved_medians({"plain": lambda: _plain(cell, x, g), "probe": lambda: hidden_grad_norms(cell, x, g)}, repeats=7)
    plain, probe = t["plain"], t["probe"]
    ratio = probe / plain
    benchmark.extra_info |= {"plain_s": plain, "probe_s": probe, "probe_over_plain": ratio}
    benchmark.pedantic(hidden_grad_norms, args=(cell, x, g), rounds=3, iterations=1)
    assert ratio <= 1.3, f"hidden probe {probe:.3f}s is {ratio:.2f}x a plain forward+backward ({plain:.3f}s)"


def test_hidden_probe_cost_through_the_fused_kernel(benchmark):
    """Step by step through the fused kernel (one call per step): recorded, not gated."""
    cell, x, g = _setup("cudnn")
    t = interleaved_medians({"plain": lambda: _plain(cell, x, g), "probe": lambda: hidden_grad_norms(cell, x, g)}, repeats=3)
    plain, probe = t["plain"], t["probe"]
    benchmark.extra_info |= {"plain_s": plain, "probe_s": probe, "probe_over_plain": probe / plain}
    benchmark.pedantic(hidden_grad_norms, args=(cell, x, g), rounds=2, iterations=1)


def test_scratch_lyrics_epoch_beats_the_book_style(benchmark):
    """The book's settings on synthetic ids (no corpus needed): a regression floor of 1.5x; the goal is 2x."""
    task = Lyrics.from_text(book_shaped_text())  # the book's vocabulary size and batches per epoch
    assert len(task.vocab) == 1027 and task.steps_per_epoch(32, 35) == 8
    result = benchmark.pedantic(compare_epoch_speed, args=(book_config(), task, 2), rounds=1, iterations=1)
    benchmark.extra_info |= {k: v for k, v in result.items() if isinstance(v, (int, float))}
    assert result["speedup"] >= 1.5, result
