"""Speed goals as ratios measured in one run (these machines are noisy); the benchmark fixture records
times and extra_info the ratios. Gates and the measurements they came from: tests/benchmarks/gates.toml.

Run alone: python -m pytest tests/benchmarks --benchmark-only
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from gradlab.baselines.speed import book_config, book_shaped_text, compare_epoch_speed
from gradlab.cells import create
from gradlab.probes import hidden_grad_norms, last_step_loss
from gradlab.tasks.lyrics import Lyrics
from gradlab.timing import interleaved_medians

from busy import BUSY, OthersMeter  # tests/benchmarks/busy.py (pytest puts this folder on the path)

METER: OthersMeter | None = None  # set for each test by conftest.others_meter: since the test began
GATES = tomllib.loads((Path(__file__).parent / "gates.toml").read_text())
T, B, H, I = 1000, 32, 128, 32  # the probe's shape: long enough for the per-step costs to dominate


def gate(name: str, ratio: float) -> None:
    """Assert the gate, unless other processes are keeping the machine busy now (then skip, saying so)."""
    g = GATES[name]
    share = METER.share() if METER is not None else None
    if share is not None and share > BUSY:
        pytest.skip(f"{name} = {ratio:.3f} not gated: other processes used {share:.0%} of the CPUs while it ran "
                    f"(above {BUSY:.0%}); rerun on a quiet machine")
    ok = ratio >= g["threshold"] if g.get("minimum") else ratio <= g["threshold"]
    assert ok, f"{name} = {ratio:.3f}, gate {'>=' if g.get('minimum') else '<='} {g['threshold']} (recorded runs: {g['runs']}; goal {g['goal']})"


def _setup(impl: str):
    cell = create("gru", impl, I, H, init="orthogonal", seed=0)
    gen = torch.Generator().manual_seed(0)
    return cell, torch.randn(T, B, I, generator=gen), torch.randn(B, H, generator=gen)


def _stepwise_backward(cell, x, g) -> None:
    """The probe's own path without its taps: step by step, one backward to the input."""
    xr = x.detach().requires_grad_()
    inputs, ctx = cell.prepare(xr)
    state = cell.init_state(x.shape[1])
    for inp in inputs:
        state = cell.step(inp, state, ctx)
    torch.autograd.grad(last_step_loss(state, g), xr)


def _training_step(cell, x, g) -> None:
    cell.zero_grad(set_to_none=True)
    _, state = cell(x)
    last_step_loss(state, g).backward()


@pytest.mark.parametrize("impl", ["scratch", "cudnn"])
def test_hidden_probe_costs_little_over_its_own_backward(benchmark, impl):
    """Gated: probe / step-by-step backward (like with like). Recorded: probe / one training step of the
    same cell (forward + backward with weight gradients; the fused impl runs its whole-sequence kernel),
    what probing costs against training."""
    cell, x, g = _setup(impl)
    t = interleaved_medians({"probe": lambda: hidden_grad_norms(cell, x, g), "stepwise": lambda: _stepwise_backward(cell, x, g),
                             "training": lambda: _training_step(cell, x, g)}, repeats=5)
    ratio = t["probe"] / t["stepwise"]
    benchmark.extra_info |= {f"{k}_s": v for k, v in t.items()} | {
        "probe_over_stepwise_backward": ratio, "probe_over_training_step": t["probe"] / t["training"], "backend": cell.last_backend}
    benchmark.pedantic(hidden_grad_norms, args=(cell, x, g), rounds=2, iterations=1)
    gate("probe_over_stepwise_backward", ratio)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scratch_layer_against_the_fused_kernel_at_the_lyrics_shape(benchmark, cell):
    """One layer's forward+backward at the lyrics shape (T 35, B 32, I = H = 256), both impls interleaved."""
    from gradlab.measures.throughput import Config, run

    rows = {r["impl"]: r for r in run(Config(cell=cell, seq_len=35, batch_size=32, hidden_size=256, repeats=7, warmup=2))["results"]}
    ratio = rows["scratch"]["ms_median"] / rows["cudnn"]["ms_median"]
    benchmark.extra_info |= {"scratch_over_fused": ratio, "backend": rows["cudnn"]["backend"],
                             **{f"{impl}_tokens_per_s": r["tokens_per_s"] for impl, r in rows.items()},
                             **{f"{impl}_peak_fraction": r["peak_fraction"] for impl, r in rows.items()}}
    x = torch.randn(35, 32, 256, generator=torch.Generator().manual_seed(0))
    layer = create(cell, "scratch", 256, 256, init="xavier")
    benchmark.pedantic(lambda: layer(x)[0].sum().backward(), rounds=5, iterations=1)
    gate(f"scratch_over_fused_{cell}", ratio)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scratch_train_step_against_the_fused_kernel_at_the_adding_shape(benchmark, cell):
    """One optimiser step as the trainer takes it (training.loop.train_step: RMSProp, norm clipping and its
    telemetry, the update's norm) at the long-range studies' own shape (T 100, B 50, I 2, H 128), both impls
    interleaved."""
    from gradlab.measures.throughput import Config, _train_step_call, run
    from gradlab.tasks import build

    cfg = Config(workload="train_step", cell=cell, seq_len=100, batch_size=50, hidden_size=128, repeats=7, warmup=2)
    rows = {r["impl"]: r for r in run(cfg)["results"]}
    ratio = rows["scratch"]["ms_median"] / rows["cudnn"]["ms_median"]
    benchmark.extra_info |= {"scratch_over_fused": ratio, "backend": rows["cudnn"]["backend"],
                             **{f"{impl}_ms": r["ms_median"] for impl, r in rows.items()}}
    call, _ = _train_step_call(cfg, "scratch", build("adding", {}).sample(torch.Generator().manual_seed(0), 50, 100))
    benchmark.pedantic(call, rounds=5, iterations=1)
    gate(f"train_step_over_fused_{cell}", ratio)


def test_scratch_lyrics_epoch_beats_the_book_style(benchmark):
    """The book's settings on a text of the book's shape (no corpus needed)."""
    task = Lyrics.from_text(book_shaped_text())  # the book's vocabulary size and batches per epoch
    assert len(task.vocab) == 1027 and task.steps_per_epoch(32, 35) == 8
    result = benchmark.pedantic(compare_epoch_speed, args=(book_config(), task, 2), rounds=1, iterations=1)
    benchmark.extra_info |= {k: v for k, v in result.items() if isinstance(v, (int, float))}
    gate("book_epoch_over_gradlab_epoch", result["speedup"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_ensemble_of_8_outruns_8_solo_runs_at_the_adding_shape(benchmark, cell):
    """Model-steps per second of 8 runs as one batched ensemble over the same 8 runs stepped one at a time
    (T 100, B 50, H 128; RMSProp, norm clipping and its telemetry), interleaved in one process."""
    from gradlab.training.ensemble_speed import ensemble_speed

    row = benchmark.pedantic(ensemble_speed, args=(cell, 8), kwargs={"rounds": 3}, rounds=1, iterations=1)
    benchmark.extra_info |= {k: v for k, v in row.items() if isinstance(v, (int, float))}
    gate(f"ensemble_of_8_speedup_{cell}", row["speedup"])
